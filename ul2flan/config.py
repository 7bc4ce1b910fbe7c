"""Configuration: gin files and bindings in, and a run's saved configuration (`run.json`) out.

Gin follows t5x: `--gin_file=A.gin` (repeatable, searched in the working directory and the
repository) and `--gin.NAME=VALUE` bindings, applied in order. Parsing here assumes the
configurables are registered already (`ul2flan.commands.configurables` imports them all).

Every training run writes `MODEL_DIR/run.json`: the decoder architecture, the feature converter
(hence whether the model is a prefix LM), the task lengths and the vocabulary. Inference, export
and evaluation read that file instead of re-parsing gin.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import tokenize
from typing import Any, Callable, Mapping, Sequence

import gin

from ul2flan import gin_checks
from ul2flan import paths
from ul2flan import row_layout
from ul2flan import vocabularies
from ul2flan.model.config import DecoderConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_INFO_FILE = "run.json"
OPERATIVE_CONFIG_FILE = "config.operative.gin"  # what a trained model was trained with


# ------------------------------------------------------------------------------------------------
# Gin.

def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.NAME=VALUE` bindings from the other arguments."""
  bindings, rest = [], []
  it = iter(argv)
  for arg in it:
    if arg.startswith("--gin."):
      body = arg[len("--gin."):]
      if "=" not in body:
        try:
          body = f"{body}={next(it)}"
        except StopIteration:
          raise ValueError(f"{arg} needs a value (--gin.NAME=VALUE)") from None
      name, value = body.split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return bindings, rest


def _read_url(path: str):
  return paths.resolve(path).open()


def _is_readable_url(path: str) -> bool:
  return paths.is_url(path) and paths.resolve(path).exists()


# A gin file may live in a bucket (an imported model dir's model.gin under a gs:// MODEL_DIR).
gin.config.register_file_reader(_read_url, _is_readable_url)


def resolve_gin_file(path: str) -> str:
  """A gin file as given (local, or a URL such as gs://...), or relative to the repository (where
  gin_configs/ lives)."""
  if paths.is_url(path):
    if _is_readable_url(path):
      return path
    raise ValueError(f"gin file {path!r} not found")
  for candidate in (path, os.path.join(REPO_ROOT, path)):
    if os.path.exists(candidate):
      return candidate
  raise ValueError(f"gin file {path!r} not found (looked in {os.getcwd()} and {REPO_ROOT})")


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
              command: str | None = None, optional_macros: Sequence[str] = ()) -> None:
  """Clears gin, then parses the files and bindings, in order, and checks that each is read.

  A parse error names the file or binding and the closest real name; `gin_checks.check_bindings`
  refuses macros and bindings nothing will read (`command`: "train" or "pipeline" also refuses
  configurables that command never calls). `optional_macros` may go unread: the pipeline binds
  its `stage_macros` in every stage, and each stage reads only its own.
  """
  gin.add_config_file_search_path(REPO_ROOT)
  gin.add_config_file_search_path(os.getcwd())
  resolved = [resolve_gin_file(p) for p in gin_files]
  with gin.unlock_config():
    gin.clear_config()
  referenced, rebound = set(optional_macros), set()
  for path in resolved:
    _parse(gin.parse_config_file, path, f"file {path}")
    referenced |= gin_checks.referenced_macros()
  for binding in bindings:
    _parse(gin.parse_config, binding, f"binding `{binding}`")
    referenced |= gin_checks.referenced_macros()
    rebound.add(gin_checks.bound_macro(binding))
  gin_checks.check_bindings(command, referenced, rebound - {None} - set(optional_macros))


def _parse(parse: Callable[[str], Any], text: str, where: str) -> None:
  try:
    parse(text)
  except (ValueError, KeyError, SyntaxError, NameError, TypeError, tokenize.TokenError) as e:
    msg = str(e).splitlines()[0] if str(e) else repr(e)
    if isinstance(e, tokenize.TokenError):
      msg = f"unbalanced brackets or quotes ({e.args[0]})"
    raise ValueError(f"bad gin {where}: {gin_checks.explain_parse_error(msg)}\n  (check the "
                     f"spelling of --gin.NAME=VALUE bindings and gin files; `ul2flan train "
                     f"--help` lists the macros and configurables)") from None


def describe_configurables(prefix: str = "ul2flan.", only: Sequence[str] | None = None,
                           exclude: Sequence[str] = ()) -> str:
  """One line per registered gin configurable of ul2flan (those in `only`, none in `exclude`):
  `Name(param=default, ...)`, listing the parameters gin may bind (not those a caller passes)."""
  lines = []
  registry = gin.config._REGISTRY  # pylint: disable=protected-access  (gin has no public listing)
  for selector in sorted(registry._selector_map):  # pylint: disable=protected-access
    configurable = registry[selector]
    if (not selector.startswith(prefix) or configurable.name in exclude
        or (only is not None and configurable.name not in only)):
      continue
    params = []
    for p in inspect.signature(configurable.wrapped).parameters.values():
      if (p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self"
          or p.name in (configurable.denylist or ())
          or (configurable.allowlist and p.name not in configurable.allowlist)):
        continue
      if p.default is inspect.Parameter.empty or p.default is gin.REQUIRED:
        params.append(f"{p.name}=REQUIRED")
      else:
        params.append(f"{p.name}={p.default!r}")
    lines.append(f"  {configurable.name}({', '.join(params)})")
  return "\n".join(lines)


def describe_macros(gin_file: str = "gin_configs/runs/base.gin") -> str:
  """The macros a run file binds, with their values there (`NAME = VALUE` lines)."""
  with open(resolve_gin_file(gin_file)) as f:
    lines = [m.group(0) for m in map(_MACRO_LINE.match, f) if m]
  return "\n".join(f"  {line}" for line in lines)


_MACRO_LINE = re.compile(r"[A-Z][A-Z0-9_]* = [^#\n]*[^#\s]")


def query(name: str, default: Any = None) -> Any:
  """A bound gin parameter or macro value, following macro references; `default` when unbound."""
  try:
    value = gin.query_parameter(name)
  except (ValueError, KeyError):
    return default
  if isinstance(value, gin.config.ConfigurableReference):
    if value.configurable.name != "macro":
      return default
    return query("%" + value.scoped_selector.rsplit("/", 1)[0], default)
  return value


# ------------------------------------------------------------------------------------------------
# A run's saved configuration.

@dataclasses.dataclass(frozen=True)
class RunInfo:
  """What inference and export need to know about a trained model, without gin."""
  model: Mapping[str, Any]  # DecoderConfig fields
  feature_converter: str  # "lm", "prefix_lm" or "prefix_lm_causal"
  task_feature_lengths: Mapping[str, int]
  vocabulary: Mapping[str, Any]  # vocabularies.VocabularySpec fields
  # Prefix layouts: the rows were `inputs EOS targets` (False: `inputs targets`). Absent from the
  # run.json of earlier versions, whose rows all had the EOS.
  inputs_eos: bool = True

  @property
  def decoder_config(self) -> DecoderConfig:
    known = {f.name for f in dataclasses.fields(DecoderConfig)}
    unknown = sorted(set(self.model) - known)
    if unknown:
      raise ValueError(f"run.json names model settings this version does not know: {unknown}")
    return DecoderConfig(**self.model)

  def layout_for(self, vocabulary) -> row_layout.RowLayout:
    """How this model's rows and prompts are laid out (the feature converter it was trained with,
    its vocabulary's start convention, whether its inputs ended with EOS); `vocabulary` is
    `build_vocabulary()`'s, built once by the caller."""
    return row_layout.RowLayout.of(self.feature_converter, vocabulary, self.inputs_eos)

  @property
  def prompt_budget(self) -> int | None:
    """The prompt length trained on: the inputs length (prefix-LM layouts) or the targets one."""
    lengths = self.task_feature_lengths
    key = "inputs" if "inputs" in lengths else "targets"
    return int(lengths[key]) if key in lengths else None

  def build_vocabulary(self):
    return vocabularies.VocabularySpec.from_record(self.vocabulary).build()

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True) + "\n"


# Macros `run_info_from_gin` reads: a model given by gin files may bind them with nothing else
# referring to them (pass as `parse_gin(..., optional_macros=RUN_INFO_MACROS)`).
RUN_INFO_MACROS = ("FEATURE_CONVERTER", "TASK_FEATURE_LENGTHS")


def run_info_from_gin() -> RunInfo:
  """The RunInfo the current gin configuration describes (for models given by gin files)."""
  converter = (query("train/DatasetConfig.feature_converter") or query("%FEATURE_CONVERTER")
               or query("DatasetConfig.feature_converter") or "lm")
  lengths = (query("train/DatasetConfig.task_feature_lengths")
             or query("%TASK_FEATURE_LENGTHS") or {})
  return RunInfo(model=dataclasses.asdict(DecoderConfig()), feature_converter=converter,
                 task_feature_lengths=dict(lengths),
                 vocabulary=dataclasses.asdict(vocabularies.configured_spec()))


def write_run_info(model_dir: str, info: RunInfo) -> None:
  path = paths.resolve(model_dir) / RUN_INFO_FILE
  path.write_text(info.to_json())


def trained_bindings(model_dir: str) -> str | None:
  """The operative gin config the trainer saved with a model (`OPERATIVE_CONFIG_FILE`), or None
  for a model ul2flan did not train (an import)."""
  path = paths.resolve(model_dir) / OPERATIVE_CONFIG_FILE
  return path.read_text() if path.exists() else None


def bound_value(config_text: str, name: str) -> str | None:
  """The value text `config_text` (gin) binds `name` ("ChatFormat.enabled") to, None if unbound;
  a scope or module prefix on the binding is allowed."""
  match = re.search(rf"^(?:\S*/)?(?:[\w.]+\.)?{re.escape(name)}\s*=\s*(.*?)\s*$", config_text,
                    re.M)
  return match.group(1) if match else None


def read_run_info(model_dir: str) -> RunInfo:
  path = paths.resolve(model_dir) / RUN_INFO_FILE
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found: {model_dir} was not written by `ul2flan train` (or by an older "
        f"version). Point at a ul2flan model dir, or pass the model's gin files.")
  try:
    raw = json.loads(path.read_text())
    return RunInfo(**raw)
  except (json.JSONDecodeError, TypeError) as e:
    raise ValueError(f"{path} is not a valid run description ({e}); re-run training or restore "
                     f"the file") from None
