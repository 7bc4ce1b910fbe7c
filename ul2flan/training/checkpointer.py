"""`Checkpointer`: where a run starts (resume, an initial checkpoint, or scratch) and its saves.

One object per run owns the orbax manager: it restores or initialises the train state, saves
steps as a hook between steps (never a state with a non-finite step behind it, and never the same
step twice), and says which checkpoint is the last one committed (named in stop messages).
"""

from __future__ import annotations

import logging
from typing import Sequence

from ul2flan import checkpoints
from ul2flan.training import guards
from ul2flan.training import hooks as hooks_lib
from ul2flan.training.steps import StepBuilder, TrainState

logger = logging.getLogger(__name__)

DATA_START = {"batches_consumed": 0}


class Checkpointer:
  """The run's checkpoints: restore or init at the start, periodic saves, the last committed."""

  def __init__(self, model_dir: str, cfg: checkpoints.CheckpointConfig):
    self.model_dir, self.cfg = model_dir, cfg
    self.manager = checkpoints.make_manager(model_dir, cfg)
    self.saved_step: int | None = None

  # ---- the start --------------------------------------------------------------------------------
  def restore_or_init(self, builder: StepBuilder, seed: int, data_files: Sequence[str] = ()
                      ) -> tuple[TrainState, dict, str]:
    """Resume from the model dir, else start from the initial checkpoint, else from scratch.

    Returns (state, data state, how) where `how` says which path was taken and the data state is
    the saved `{"batches_consumed": N, "files": {...}}` (`files`: those of `data_files`, this
    process's iterator states, that the step holds). A damaged latest step stops the run with
    what is wrong, unless `cfg.fallback_to_intact`.
    """
    latest = checkpoints.newest_intact_step(self.manager, self.cfg.fallback_to_intact)
    if latest is not None:
      params, opt_state, data_state = checkpoints.restore_full(
          self.manager, latest, builder.abstract_params, builder.abstract_opt_state,
          f"{checkpoints.checkpoint_dir(self.model_dir)}/{latest}", verified=True,
          data_files=data_files)
      self.saved_step = latest
      return builder.make_state(latest, params, opt_state), data_state, f"resumed from step {latest}"
    path, mode = self.cfg.initial_checkpoint_path, self.cfg.initial_checkpoint_mode
    if path and mode == "params":
      params, src_step = checkpoints.restore_params(path, builder.abstract_params)
      return (builder.make_state(0, params, builder.init_opt_state(params)), DATA_START,
              f"params from {path} (step {src_step}), fresh optimizer at step 0")
    if path and mode == "full":
      ckpt_dir, src_step = checkpoints.resolve_step_dir(path)
      with checkpoints.open_manager(ckpt_dir) as other:
        params, opt_state, data_state = checkpoints.restore_full(
            other, src_step, builder.abstract_params, builder.abstract_opt_state, path,
            data_files=data_files)
      return (builder.make_state(src_step, params, opt_state), data_state,
              f"full state from {path} (step {src_step})")
    params = builder.init_params(seed)
    return builder.make_state(0, params, builder.init_opt_state(params)), DATA_START, "from scratch"

  # ---- saving -----------------------------------------------------------------------------------
  def save_hook(self, builder: StepBuilder, divergence: guards.DivergenceGuard, train_iter,
                stopwatch: hooks_lib.Stopwatch):
    """The hook that saves a step: unless saved already, and only a state checked finite."""

    def save(info: hooks_lib.StepInfo) -> None:
      if info.step == self.saved_step:
        return
      divergence.check()
      with stopwatch.paused():
        divergence.require_finite(builder.all_finite(info.state), info.step)
      checkpoints.save(self.manager, info.step, info.state.params, info.state.opt_state,
                       train_iter.state(), force=True, data_files=train_iter.snapshot())
      self.saved_step = info.step

    return save

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def last_committed(self) -> str:
    """The last committed checkpoint step dir, as stop messages name it."""
    self.wait()
    step = self.manager.latest_step()
    if step is None:
      return "none (nothing was saved in this model dir)"
    return f"{checkpoints.checkpoint_dir(self.model_dir)}/{step}"

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
