"""Orbax checkpoints: train state + data position, saved together, atomically, with checksums.

Layout: MODEL_DIR/checkpoints/<step>/{params, optimizer, data, data_iterators, checksums.json}.
`params` is its own item so a params-only restore (how the UL2R and Flan stages start) reads
nothing else. `data` is the data position (batches consumed); `data_iterators` holds each
process's input-pipeline state (`process_files`), so a resume continues the data in O(1). Orbax
commits a step atomically (a rename on local disks, a commit file on GCS), so a crash mid-save
leaves no step that `latest_step()` returns. Just before the commit, `checksums.json` records the
size and sha256 of every file of the step; a restore verifies them first, so flipped bytes, a
truncated or a deleted file are reported by path instead of restoring garbage (`integrity.py`).
The model dir may be local or a URL (`gs://...`): see `ul2flan.paths`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

from etils import epath
import gin
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from ul2flan import integrity
from ul2flan.checks import check_choice, check_int
from ul2flan import paths
from ul2flan import process_files

logger = logging.getLogger(__name__)

PARAMS, OPTIMIZER, DATA, DATA_ITERATORS = "params", "optimizer", "data", "data_iterators"
DAMAGED_SUFFIX = ".damaged"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  save_period: int = 1000
  keep: int | None = 3
  async_save: bool = True
  # Where to start when the model dir has no checkpoint: a step dir (".../checkpoints/1000") or a
  # model dir / checkpoints dir (its latest step is used).
  initial_checkpoint_path: str | None = None
  initial_checkpoint_mode: str = "params"  # "params": fresh optimizer at step 0; "full": resume.
  # A damaged latest step stops the run (and says what is wrong); with this set, the run moves it
  # aside to <step>.damaged (never deleted) and resumes from the newest intact step.
  fallback_to_intact: bool = False
  checksums: bool = True  # write checksums.json with each step (and verify it on restore)

  def __post_init__(self):
    check_int(self.save_period, "CheckpointConfig.save_period")
    check_int(self.keep, "CheckpointConfig.keep (None keeps every step)", allow_none=True)
    check_choice(self.initial_checkpoint_mode, ("params", "full"),
                 "CheckpointConfig.initial_checkpoint_mode (INITIAL_CHECKPOINT_MODE)")
    path = self.initial_checkpoint_path
    if path is not None and (not isinstance(path, str) or not path.strip()):
      raise ValueError(f"CheckpointConfig.initial_checkpoint_path (INITIAL_CHECKPOINT_PATH) must "
                       f"be a quoted path such as \"'gs://bucket/run'\" or None, got {path!r}")


class CheckpointShapeError(ValueError):
  pass


class CheckpointDamagedError(ValueError):
  """A step whose files are missing, truncated or corrupt (or that orbax cannot read)."""


def checkpoint_dir(model_dir: paths.PathLike) -> epath.Path:
  return paths.resolve(model_dir) / "checkpoints"


def open_manager(directory: paths.PathLike, options: ocp.CheckpointManagerOptions | None = None):
  """A manager that knows how every item is stored, so a fresh process can read metadata."""
  handlers = {PARAMS: ocp.StandardCheckpointHandler(), OPTIMIZER: ocp.StandardCheckpointHandler(),
              DATA: ocp.JsonCheckpointHandler(),
              DATA_ITERATORS: process_files.ProcessFilesHandler()}
  return ocp.CheckpointManager(paths.resolve(directory), options=options, item_handlers=handlers)


def make_manager(model_dir: paths.PathLike, cfg: CheckpointConfig) -> ocp.CheckpointManager:
  directory = checkpoint_dir(model_dir)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=cfg.keep, save_interval_steps=1, enable_async_checkpointing=cfg.async_save,
      create=True, cleanup_tmp_directories=True,
      temporary_path_class=integrity.checksummed_path_class(directory) if cfg.checksums else None)
  return open_manager(directory, options)


def save(manager: ocp.CheckpointManager, step: int, params, opt_state, data_state: dict,
         force: bool = False, data_files: dict[str, bytes] | None = None) -> bool:
  """Saves a step; `data_files`: this process's input-pipeline state, by unique file name."""
  items = {
      PARAMS: ocp.args.StandardSave(params),
      OPTIMIZER: ocp.args.StandardSave({"opt_state": opt_state}),
      DATA: ocp.args.JsonSave(data_state),
  }
  if data_files is not None:
    items[DATA_ITERATORS] = process_files.ProcessFilesSave(data_files)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def _committed_steps(directory: epath.Path) -> list[int]:
  if not directory.is_dir():
    return []
  return sorted(int(d.name) for d in directory.iterdir()
                if d.name.isdigit() and (d / PARAMS).is_dir())


def resolve_step_dir(path: paths.PathLike) -> tuple[str, int]:
  """Accepts a step dir, a checkpoints dir or a model dir; returns (checkpoints dir, step)."""
  path = paths.resolve(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  if path.name.isdigit() and (path / PARAMS).is_dir():
    return str(path.parent), int(path.name)
  for candidate in (path, path / "checkpoints"):
    steps = _committed_steps(candidate)
    if steps:
      return str(candidate), steps[-1]
  if (path / "config.json").exists() and any(
      f.name.endswith((".safetensors", ".safetensors.index.json")) for f in path.iterdir()):
    raise FileNotFoundError(
        f"{path} is a Hugging Face model dir, not a ul2flan checkpoint: convert it with "
        f"`ul2flan import-hf {path} OUT_DIR` and use OUT_DIR (and OUT_DIR/model.gin), or give it "
        f"to the pipeline as run_pipeline.initial_checkpoint_path, which converts it once")
  raise FileNotFoundError(f"no finished checkpoint under {path} (expected <dir>/checkpoints/<step>/"
                          f"{PARAMS})")


def model_dir_of(checkpoint: str) -> str:
  """The model dir of a model dir, its checkpoints dir or one of its step dirs."""
  ckpt_dir, _ = resolve_step_dir(checkpoint)
  path = epath.Path(ckpt_dir)
  return str(path.parent) if path.name == "checkpoints" else ckpt_dir


def _shape_report(expected, found) -> list[str]:
  exp = {k: v for k, v in _named_shapes(expected)}
  got = {k: v for k, v in _named_shapes(found)}
  lines = []
  for k in sorted(exp.keys() | got.keys()):
    if k not in got:
      lines.append(f"  {k}: missing from checkpoint (model wants {exp[k]})")
    elif k not in exp:
      lines.append(f"  {k}: in checkpoint {got[k]} but not in the model")
    elif tuple(exp[k]) != tuple(got[k]):
      lines.append(f"  {k}: checkpoint {tuple(got[k])} vs model {tuple(exp[k])}")
  return lines


def _named_shapes(tree):
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)
    yield name, tuple(getattr(leaf, "shape", ()))


def _restore(mngr: ocp.CheckpointManager, step: int, items: dict, verify: bool = True):
  """mngr.restore, after verifying the step's checksums; a failure names the step and the fix."""
  step_dir = paths.resolve(mngr.directory) / str(step)
  problems = integrity.verify(step_dir) if verify else []
  if problems:
    raise CheckpointDamagedError(damaged_message(step_dir, problems))
  try:
    return mngr.restore(step, args=ocp.args.Composite(**items))
  except (CheckpointShapeError, KeyboardInterrupt):
    raise
  except Exception as e:  # orbax / tensorstore errors; pylint: disable=broad-except
    said = "\n    ".join(str(e).strip().splitlines()[:6])[:1200] or type(e).__name__
    if integrity.has_checksums(step_dir):  # the files are as saved: the request differs
      raise ValueError(
          f"cannot restore {step_dir}: {said}\nIts files match their checksums, so this run's "
          f"configuration (model or optimizer) differs from the one that saved it; compare with "
          f"config.gin in its model dir.") from None
    raise CheckpointDamagedError(damaged_message(
        step_dir, [f"orbax cannot read it (no checksums.json to tell damage from a different "
                   f"configuration): {said}"])) from None


def damaged_message(step_dir: epath.Path, problems: list[str]) -> str:
  shown = "\n".join(f"  {p}" for p in problems[:10])
  more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
  return (f"checkpoint {step_dir} is damaged:\n{shown}{more}\n"
          f"Nothing was restored from it. To resume from the newest intact step instead, re-run "
          f"with --gin.CheckpointConfig.fallback_to_intact=True (the damaged step is moved to "
          f"{step_dir.name}{DAMAGED_SUFFIX}, not deleted), or restore the files of {step_dir}.")


def restore_params(path: str, abstract_params) -> tuple[Any, int]:
  """Restores only the params item, sharded like `abstract_params` (ShapeDtypeStructs)."""
  ckpt_dir, step = resolve_step_dir(path)
  with open_manager(ckpt_dir, ocp.CheckpointManagerOptions(read_only=True)) as mngr:
    check_shapes(mngr, step, abstract_params, f"{ckpt_dir}/{step}")
    restored = _restore(mngr, step, {PARAMS: ocp.args.StandardRestore(abstract_params)})
  return restored[PARAMS], step


def check_shapes(mngr: ocp.CheckpointManager, step: int, abstract_params, where: str) -> None:
  try:
    meta = mngr.item_metadata(step)[PARAMS]
  except Exception as e:  # pylint: disable=broad-except
    step_dir = paths.resolve(mngr.directory) / str(step)
    problems = integrity.verify(step_dir) or [f"its metadata cannot be read: {e}"[:300]]
    raise CheckpointDamagedError(damaged_message(step_dir, problems)) from None
  tree = getattr(meta, "tree", meta)
  problems = _shape_report(abstract_params, tree)
  if problems:
    raise CheckpointShapeError(
        f"checkpoint {where} does not match the model ({len(problems)} parameters differ):\n"
        + "\n".join(problems[:30])
        + "\nCheck the model gin file (model size, vocab_size, num_kv_heads, scan_layers) against "
          "the one the checkpoint was trained with (config.gin in its model dir).")


def restore_full(mngr: ocp.CheckpointManager, step: int, abstract_params, abstract_opt_state,
                 where: str, verified: bool = False, data_files: Sequence[str] = ()):
  """Params, optimizer state and data position; `verified`: the checksums were checked already.

  The data position dict gets `"files"`: those of `data_files` the step holds (none for a step
  saved without them).
  """
  check_shapes(mngr, step, abstract_params, where)
  items = {
      PARAMS: ocp.args.StandardRestore(abstract_params),
      OPTIMIZER: ocp.args.StandardRestore({"opt_state": abstract_opt_state}),
      DATA: ocp.args.JsonRestore(),
  }
  step_dir = paths.resolve(mngr.directory) / str(step)
  if data_files and (step_dir / DATA_ITERATORS).is_dir():
    items[DATA_ITERATORS] = process_files.ProcessFilesRestore(list(data_files))
  restored = _restore(mngr, step, items, verify=not verified)
  checked = integrity.has_checksums(step_dir)
  logger.info("restored step %d from %s (%s)", step, where,
              "checksums verified" if checked else "no checksums.json: not verified")
  files = restored[DATA_ITERATORS] if DATA_ITERATORS in items else {}
  data_state = {**restored[DATA], "files": files}
  return restored[PARAMS], restored[OPTIMIZER]["opt_state"], data_state


def newest_intact_step(mngr: ocp.CheckpointManager, fallback: bool) -> int | None:
  """The step to resume from: the latest, or with `fallback` the newest whose files verify.

  Process 0 verifies and decides; every process gets its answer (one broadcast), so all hosts
  restore the same step. Damaged steps passed over are moved aside to `<step>.damaged`.
  """
  directory = paths.resolve(mngr.directory)
  step, error = -1, ""
  if jax.process_index() == 0:
    candidates = sorted(mngr.all_steps(), reverse=True)
    for candidate in candidates:
      problems = integrity.verify(directory / str(candidate))
      if not problems:
        step = candidate
        break
      message = damaged_message(directory / str(candidate), problems)
      if not fallback:
        step, error = -2, message
        break
      logger.warning("%s\nfallback_to_intact: moving it aside and trying the previous step.",
                     message.split("\nNothing was restored")[0])
      _move_aside(directory / str(candidate))
    if candidates and step == -1:
      step, error = -2, (f"no intact checkpoint left in {directory}: every step was damaged and "
                         f"moved aside to <step>{DAMAGED_SUFFIX}. Inspect them, or start afresh in "
                         f"a new model dir.")
  if jax.process_count() > 1:
    step = int(multihost_utils.broadcast_one_to_all(np.int32(step)))
  if step == -2:
    raise CheckpointDamagedError(error or "process 0 found the latest checkpoint damaged (see "
                                 "its log); nothing was restored.")
  mngr.reload()
  return None if step < 0 else step


def _move_aside(step_dir: epath.Path) -> None:
  target = step_dir.parent / f"{step_dir.name}{DAMAGED_SUFFIX}"
  n = 1
  while target.exists():
    n += 1
    target = step_dir.parent / f"{step_dir.name}{DAMAGED_SUFFIX}{n}"
  try:
    step_dir.rename(target)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointDamagedError(
        f"cannot move the damaged checkpoint {step_dir} aside to {target} ({e}); move or delete "
        f"it yourself, then re-run.") from None
  logger.warning("moved the damaged checkpoint %s to %s (not deleted)", step_dir, target)
