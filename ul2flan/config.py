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
from typing import Any, Mapping, Sequence

import gin

from ul2flan import paths
from ul2flan import vocabularies
from ul2flan.model.config import DecoderConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_INFO_FILE = "run.json"

# Module paths of configurables before the package was grouped by stage: an old gin file that
# names one gets told the new name (short names such as `DecoderConfig.d_model` never changed).
MOVED = {
    "ul2flan.denoisers.demo_task_lengths": "ul2flan.demo.corpus.demo_task_lengths",
    "ul2flan.denoisers": "ul2flan.ul2.denoisers",
    "ul2flan.corpus_sources.register_ul2": "ul2flan.ul2.tasks.register_ul2",
    "ul2flan.corpus_sources": "ul2flan.ul2.sources",
    "ul2flan.vocab": "ul2flan.vocabularies",
    "ul2flan.model.DecoderConfig": "ul2flan.model.config.DecoderConfig",
    "ul2flan.trainer": "ul2flan.training.trainer",
    "ul2flan.data": "ul2flan.training.data",
    "ul2flan.optim": "ul2flan.training.optim",
    "%MODEL_DIR": "--model_dir (MODEL_DIR is no longer a gin macro)",
}


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
          raise SystemExit(f"error: {arg} needs a value (--gin.NAME=VALUE)") from None
      name, value = body.split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return bindings, rest


def resolve_gin_file(path: str) -> str:
  """A gin file as given, or relative to the repository (where gin_configs/ lives)."""
  for candidate in (path, os.path.join(REPO_ROOT, path)):
    if os.path.exists(candidate):
      return candidate
  raise ValueError(f"gin file {path!r} not found (looked in {os.getcwd()} and {REPO_ROOT})")


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> None:
  """Clears gin, then parses the files and bindings; gin's errors become ones that say what to fix."""
  gin.add_config_file_search_path(REPO_ROOT)
  gin.add_config_file_search_path(os.getcwd())
  resolved = [resolve_gin_file(p) for p in gin_files]
  with gin.unlock_config():
    gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(resolved, list(bindings), finalize_config=False)
  except (ValueError, KeyError, SyntaxError, NameError) as e:
    msg = str(e).splitlines()[0] if str(e) else repr(e)
    moved = next((f"; {old} is now {new}" for old, new in MOVED.items()
                  if old in msg or old.lstrip("%") in msg.split("'")), "")
    raise ValueError(f"bad gin configuration: {msg}{moved}\n  (check the spelling of --gin.NAME=VALUE "
                     f"bindings and gin files; `ul2flan train --help` lists the "
                     f"configurables)") from None


def describe_configurables(prefix: str = "ul2flan.") -> str:
  """One line per registered gin configurable of ul2flan: `Name(param, param=default, ...)`."""
  lines = []
  registry = gin.config._REGISTRY  # pylint: disable=protected-access  (gin has no public listing)
  for selector in sorted(registry._selector_map):  # pylint: disable=protected-access
    if not selector.startswith(prefix):
      continue
    configurable = registry[selector]
    params = []
    for p in inspect.signature(configurable.wrapped).parameters.values():
      if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
        continue
      if p.default is inspect.Parameter.empty or p.default is gin.REQUIRED:
        params.append(f"{p.name}=REQUIRED" if p.default is gin.REQUIRED else p.name)
      else:
        params.append(f"{p.name}={p.default!r}")
    lines.append(f"  {configurable.name}({', '.join(params)})")
  return "\n".join(lines)


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

  @property
  def decoder_config(self) -> DecoderConfig:
    known = {f.name for f in dataclasses.fields(DecoderConfig)}
    unknown = sorted(set(self.model) - known)
    if unknown:
      raise ValueError(f"run.json names model settings this version does not know: {unknown}")
    return DecoderConfig(**self.model)

  @property
  def prefix_lm(self) -> bool:
    """Trained with a bidirectional prefix: decode the same way."""
    return self.feature_converter == "prefix_lm"

  @property
  def prompt_ends_with_eos(self) -> bool:
    """Trained as `inputs EOS targets` (both prefix-LM converters, bidirectional or causal): the
    answer follows that EOS, so a prompt must end with it. A causal LM's prompt must not."""
    return self.feature_converter in ("prefix_lm", "prefix_lm_causal")

  @property
  def prompt_budget(self) -> int | None:
    """The prompt length trained on: the inputs length (prefix-LM layouts) or the targets one."""
    lengths = self.task_feature_lengths
    key = "inputs" if "inputs" in lengths else "targets"
    return int(lengths[key]) if key in lengths else None

  def build_vocabulary(self):
    return vocabularies.VocabularySpec(**self.vocabulary).build()

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True) + "\n"


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
