"""Orbax checkpoints: train state + data position, saved together and atomically.

Layout: MODEL_DIR/checkpoints/<step>/{params, optimizer, data}. `params` is its own item so a
params-only restore (how the UL2R and Flan stages start) reads nothing else. Orbax writes each
step into a temporary directory and renames it when complete, so a crash mid-save leaves no
directory that `latest_step()` would return.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import gin
import jax
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)

PARAMS, OPTIMIZER, DATA = "params", "optimizer", "data"


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


class CheckpointShapeError(ValueError):
  pass


def checkpoint_dir(model_dir: str) -> str:
  return os.path.join(os.path.abspath(model_dir), "checkpoints")


def open_manager(directory: str, options: ocp.CheckpointManagerOptions | None = None):
  """A manager that knows how every item is stored, so a fresh process can read metadata."""
  handlers = {PARAMS: ocp.StandardCheckpointHandler(), OPTIMIZER: ocp.StandardCheckpointHandler(),
              DATA: ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def make_manager(model_dir: str, cfg: CheckpointConfig) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=cfg.keep, save_interval_steps=1, enable_async_checkpointing=cfg.async_save,
      create=True, cleanup_tmp_directories=True)
  return open_manager(checkpoint_dir(model_dir), options)


def save(manager: ocp.CheckpointManager, step: int, params, opt_state, data_state: dict,
         force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.Composite(**{
      PARAMS: ocp.args.StandardSave(params),
      OPTIMIZER: ocp.args.StandardSave({"opt_state": opt_state}),
      DATA: ocp.args.JsonSave(data_state),
  }), force=force)


def resolve_step_dir(path: str) -> tuple[str, int]:
  """Accepts a step dir, a checkpoints dir or a model dir; returns (checkpoints dir, step)."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and os.path.isdir(os.path.join(path, PARAMS)):
    return os.path.dirname(path), int(base)
  for candidate in (path, os.path.join(path, "checkpoints")):
    if os.path.isdir(candidate):
      steps = [int(d) for d in os.listdir(candidate)
               if d.isdigit() and os.path.isdir(os.path.join(candidate, d, PARAMS))]
      if steps:
        return candidate, max(steps)
  if os.path.exists(os.path.join(path, "config.json")) and any(
      f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in os.listdir(path)):
    raise FileNotFoundError(
        f"{path} is a Hugging Face model dir, not a ul2flan checkpoint: convert it with "
        f"`ul2flan import-hf {path} OUT_DIR` and use OUT_DIR (and OUT_DIR/model.gin), or give it "
        f"to the pipeline as run_pipeline.initial_checkpoint_path, which converts it once")
  raise FileNotFoundError(f"no finished checkpoint under {path} (expected <dir>/checkpoints/<step>/"
                          f"{PARAMS})")


def model_dir_of(checkpoint: str) -> str:
  """The model dir of a model dir, its checkpoints dir or one of its step dirs."""
  ckpt_dir, _ = resolve_step_dir(checkpoint)
  return os.path.dirname(ckpt_dir) if os.path.basename(ckpt_dir) == "checkpoints" else ckpt_dir


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


def restore_params(path: str, abstract_params) -> tuple[Any, int]:
  """Restores only the params item, sharded like `abstract_params` (ShapeDtypeStructs)."""
  ckpt_dir, step = resolve_step_dir(path)
  with open_manager(ckpt_dir, ocp.CheckpointManagerOptions(read_only=True)) as mngr:
    check_shapes(mngr, step, abstract_params, f"{ckpt_dir}/{step}")
    restored = mngr.restore(step, args=ocp.args.Composite(
        **{PARAMS: ocp.args.StandardRestore(abstract_params)}))
  return restored[PARAMS], step


def check_shapes(mngr: ocp.CheckpointManager, step: int, abstract_params, where: str) -> None:
  meta = mngr.item_metadata(step)[PARAMS]
  tree = getattr(meta, "tree", meta)
  problems = _shape_report(abstract_params, tree)
  if problems:
    raise CheckpointShapeError(
        f"checkpoint {where} does not match the model ({len(problems)} parameters differ):\n"
        + "\n".join(problems[:30])
        + "\nCheck the model gin file (model size, vocab_size, num_kv_heads, scan_layers) against "
          "the one the checkpoint was trained with (config.gin in its model dir).")


def restore_full(mngr: ocp.CheckpointManager, step: int, abstract_params, abstract_opt_state,
                 where: str):
  check_shapes(mngr, step, abstract_params, where)
  restored = mngr.restore(step, args=ocp.args.Composite(**{
      PARAMS: ocp.args.StandardRestore(abstract_params),
      OPTIMIZER: ocp.args.StandardRestore({"opt_state": abstract_opt_state}),
      DATA: ocp.args.JsonRestore(),
  }))
  logger.info("restored step %d from %s", step, where)
  return restored[PARAMS], restored[OPTIMIZER]["opt_state"], restored[DATA]
