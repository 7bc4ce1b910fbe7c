"""A gin configuration must say what it means: every binding is read, every name is real.

Gin refuses an unknown configurable or parameter by itself; `explain_parse_error` adds the closest
real name. What gin lets through silently, and `check_bindings` refuses:

- a macro bound but referenced nowhere: `--gin.TRAIN_STEP=4` next to `%TRAIN_STEPS` is a new
  macro, and the run trains to the default step count;
- a macro referenced but bound nowhere (`%MODEL_DIR`): a TypeError deep inside a call, later;
  or, for `train`, one a gin file leaves `%gin.REQUIRED` (ul2r.gin's INITIAL_CHECKPOINT_PATH);
- a scoped binding whose scope no reference enters (`trian/DatasetConfig.batch_size`);
- a configurable the running command never calls: `run_pipeline.*` given to `ul2flan train`, or
  `DecoderConfig.*` at the pipeline's top level, where each stage parses its own gin files.

Gin keeps the parsed configuration in module globals (`gin.config._CONFIG`, `_REGISTRY`); it has
no public listing of bindings or references, so this module reads those.
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Iterable

import gin

# pylint: disable=protected-access
_CONFIG = gin.config._CONFIG
_REGISTRY = gin.config._REGISTRY
# pylint: enable=protected-access

MACRO_SELECTOR = "gin.macro"

# Configurables read only by `ul2flan pipeline` (train never calls them).
PIPELINE_ONLY = ("run_pipeline", "evaluation_settings", "hf_import_settings", "hf_export_settings")
COMMANDS = ("train", "pipeline")

# Names from before the package was grouped by stage: an old gin file that uses one is told the
# new name (short names such as `DecoderConfig.d_model` never changed).
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
    # train()'s scalar settings became one object per concern (ul2flan.training.settings).
    **{f"train.{name}": f"TrainConfig.{name}" for name in (
        "total_steps", "log_period", "seed", "z_loss", "num_microbatches",
        "peak_flops_per_device", "on_nonfinite", "max_consecutive_skips", "profile_start_step",
        "profile_num_steps", "progress")},
    "train.eval_dataset_cfg": "EvalConfig.dataset_cfg",
    "train.eval_period": "EvalConfig.period",
    "train.eval_steps": "EvalConfig.steps",
    # How raw rows become prompts: one Rendering object (ul2flan.flan.sources), not flat settings.
    **{f"{fn}.{name}": f"Rendering.{name} ({fn}.rendering = @Rendering())"
       for fn in ("raw_instruction_mixture", "register_tfds_task", "register_hf_disk_task")
       for name in ("family", "formats", "seed")},
    **{f"{fn}.few_shot": f"Rendering.few_shot ({fn}.rendering = @Rendering())"
       for fn in ("register_tfds_task", "register_hf_disk_task")},
    "raw_instruction_mixture.few_shot_budget": ("FewShotConfig.budget_tokens (Rendering.few_shot "
                                                "= @FewShotConfig())"),
    "raw_instruction_mixture.max_shots": "FewShotConfig.max_shots (Rendering.few_shot = "
                                         "@FewShotConfig())",
    "raw_instruction_mixture.fallback": "FewShotConfig.fallback (Rendering.few_shot = "
                                        "@FewShotConfig())",
}

STAGE_HINT = ("the pipeline's top level reads only run_pipeline.*, evaluation_settings.* and "
              "hf_import_settings.* / hf_export_settings.*; each "
              "stage parses its own gin files, so put stage settings in "
              "run_pipeline.model_bindings (every stage) or run_pipeline.<stage>_bindings, e.g. "
              "--gin.run_pipeline.base_bindings=\"['TRAIN_STEPS = 100']\"")


def closest(name: str, candidates: Iterable[str]) -> str:
  """"; did you mean X?" for the nearest candidate (or a moved name's new one), else ""."""
  for old, new in MOVED.items():
    if name == old or name.lstrip("%") == old.lstrip("%") or name.startswith(old + "."):
      return f"; {old} is now {new}"
  match = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
  return f"; did you mean {match[0]}?" if match else ""


def configurable_names() -> list[str]:
  """Every registered configurable's short name and full selector."""
  names = []
  for selector in _REGISTRY._selector_map:  # pylint: disable=protected-access
    names += [selector, _REGISTRY[selector].name]
  return names


def parameter_names(configurable: str) -> list[str]:
  try:
    wrapped = _REGISTRY.get_match(configurable).wrapped
  except (KeyError, ValueError):
    return []
  return [p for p in inspect.signature(wrapped).parameters if p != "self"]


def explain_parse_error(message: str) -> str:
  """Gin's parse error, plus what to fix: the closest real name, or how to quote a value."""
  if m := re.search(r"No configurable matching (?:reference )?'@?([\w./]+?)(?:\(\))?'", message):
    name = m.group(1).rsplit("/", 1)[-1]
    return message.rstrip(".") + closest(name, configurable_names())
  if m := re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message):
    moved = MOVED.get(f"{m.group(1).rsplit('.', 1)[-1]}.{m.group(2)}")
    if moved:
      return f"{message.rstrip('.')}; {m.group(1).rsplit('.', 1)[-1]}.{m.group(2)} is now {moved}"
    return message.rstrip(".") + closest(m.group(2), parameter_names(m.group(1)))
  if "malformed node or string" in message:
    return ("a value is neither a Python literal nor a gin reference (@name() or %MACRO); a "
            "string needs quotes inside the binding, e.g. --gin.NAME=\"'text'\"")
  for old, new in MOVED.items():
    if old in message or old.lstrip("%") in message.split("'"):
      return f"{message.rstrip('.')}; {old} is now {new}"
  return message


def _short(selector: str) -> str:
  return selector if selector == MACRO_SELECTOR else _REGISTRY[selector].name


def _binding_name(scope: str, selector: str, param: str) -> str:
  return f"{scope + '/' if scope else ''}{_short(selector)}.{param}"


def _references() -> list:
  return list(gin.config.iterate_references(_CONFIG))


def _macro_references() -> dict[str, list[str]]:
  """{macro name: the bindings that reference it}."""
  referenced: dict[str, list[str]] = {}
  for (scope, selector), params in _CONFIG.items():
    for param, value in params.items():
      for ref in gin.config.iterate_references(value):
        if ref.config_key[1] == MACRO_SELECTOR:
          where = scope if selector == MACRO_SELECTOR else _binding_name(scope, selector, param)
          referenced.setdefault(ref.config_key[0], []).append(where)
  return referenced


def referenced_macros() -> set[str]:
  return set(_macro_references())


def bound_macro(binding: str) -> str | None:
  """The macro a `NAME = VALUE` binding sets (None for `Configurable.param = VALUE`)."""
  m = re.match(r"\s*([A-Za-z_]\w*)\s*=", binding)
  return m.group(1) if m else None


def _macro_problems(command: str | None, ever_referenced: set[str], rebound: set[str]) -> list[str]:
  bound = {scope for scope, selector in _CONFIG if selector == MACRO_SELECTOR}
  referenced = _macro_references()
  problems = []
  for name in sorted(set(referenced) - bound):
    problems.append(f"macro %{name} (used by {', '.join(referenced[name])}) is bound nowhere"
                    f"{closest('%' + name, bound)}")
  if command == "train":  # what train reads must have a value; other commands may not read it
    for name in sorted(set(referenced) & bound):
      if str(_CONFIG[(name, MACRO_SELECTOR)].get("value")) == "%gin.REQUIRED":
        problems.append(f"macro {name} has no value (a gin file leaves it %gin.REQUIRED for you to"
                        f" set): pass --gin.{name}=VALUE")
  hint = f" ({STAGE_HINT})" if command == "pipeline" else ""
  for name in sorted(bound - set(referenced)):
    if name not in ever_referenced | set(referenced):
      problems.append(f"macro {name} is bound but nothing reads it (no %{name} anywhere)"
                      f"{closest(name, set(referenced) | (bound - {name}))}{hint}")
    elif name in rebound:
      problems.append(f"macro {name} is bound but nothing reads it any more: every parameter "
                      f"that used %{name} was bound directly; bind one or the other")
  return problems


def _scope_problems(refs: list) -> list[str]:
  known = {part for ref in refs if ref.configurable.selector not in (MACRO_SELECTOR, "gin.constant")
           for part in ref.scoped_selector.split("/")[:-1]}
  problems = []
  for (scope, selector), params in _CONFIG.items():
    unknown = [part for part in scope.split("/") if part and part not in known]
    if selector != MACRO_SELECTOR and unknown and params:
      names = ", ".join(_binding_name(scope, selector, p) for p in params)
      problems.append(f"{names}: scope {unknown[0]!r} is entered by no reference (@"
                      f"{unknown[0]}/...), so nothing reads it{closest(unknown[0], known)}")
  return problems


def _command_problems(command: str | None) -> list[str]:
  if command is None:
    return []
  problems = []
  for (scope, selector), params in _CONFIG.items():
    if selector == MACRO_SELECTOR or not params:
      continue
    name = _short(selector)
    names = ", ".join(_binding_name(scope, selector, p) for p in params)
    if command == "train" and name in PIPELINE_ONLY:
      problems.append(f"{names}: read only by `ul2flan pipeline`, not by `ul2flan {command}`")
    elif command == "pipeline" and name not in PIPELINE_ONLY:
      problems.append(f"{names}: not read here ({STAGE_HINT})")
  return problems


def check_bindings(command: str | None = None, ever_referenced: Iterable[str] = (),
                   rebound: Iterable[str] = ()) -> None:
  """Raises ValueError listing every binding nothing will read and every macro bound nowhere.

  A macro that a gin file binds is allowed to go unread when a later binding set the parameters
  that used it directly (`--gin.TrainConfig.total_steps=5` leaves base.gin's TRAIN_STEPS unread); one
  that nothing ever referenced (`ever_referenced`: the macros referenced at any point while
  parsing), or that a binding set (`rebound`) after that happened, is refused. `command`
  ("train" or "pipeline") also refuses configurables that command never calls.
  """
  if command is not None and command not in COMMANDS:
    raise ValueError(f"unknown command {command!r} for the binding check; one of {COMMANDS}")
  refs = _references()
  problems = (_macro_problems(command, set(ever_referenced), set(rebound)) + _scope_problems(refs)
              + _command_problems(command))
  if problems:
    raise ValueError("bad gin configuration (see `ul2flan train --help`):\n  "
                     + "\n  ".join(problems))
