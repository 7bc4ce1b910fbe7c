"""The trainer's settings: one frozen, gin-bound object per concern, passed whole.

`train()` (`ul2flan.training.trainer`) takes the objects t5x users know (`train.train_dataset_cfg`,
`train.model_config`, `train.partitioner`, `train.checkpoint_cfg`) plus these two:

* `TrainConfig` (`train.train_cfg = @TrainConfig()`): how long and how the loop runs: steps,
  logging, seed, loss, microbatches, MFU peak, what a non-finite step does, profiling.
* `EvalConfig` (`train.eval_cfg = @EvalConfig()`): the periodic teacher-forced evaluation, and
  the held-out text guard (a stage that makes the model worse at plain text stops early).

The checkpoint settings are `ul2flan.checkpoints.CheckpointConfig`, the data ones
`ul2flan.training.data.DatasetConfig`. Values are checked before anything is built
(`ul2flan.training.validation`), with messages that name the gin parameter and its macro.
"""

from __future__ import annotations

import dataclasses

import gin

from ul2flan.training import data as data_lib


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How long and how the training loop runs (was `train.*` scalars before; same meanings)."""
  total_steps: int = gin.REQUIRED  # TRAIN_STEPS
  log_period: int = 10
  seed: int = 0  # SEED: initialisation and dropout
  z_loss: float = 1e-4
  num_microbatches: int = 1
  peak_flops_per_device: float | None = None  # None: the accelerator's table, or measured on CPU
  on_nonfinite: str = "stop"  # "stop" (exit 3) or "skip" (drop the update)
  max_consecutive_skips: int = 10
  profile_start_step: int | None = None
  profile_num_steps: int = 3
  progress: bool = True  # a progress bar on the terminal


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Periodic evaluation between steps.

  `dataset_cfg` is scored teacher-forced every `period` steps (`steps` batches; 0 = never) into
  `metrics_eval.jsonl`. `text_dataset_cfg`, when set, is held-out plain text scored the same way
  (as `text_loss`) before the first step and every `period` steps: a stage whose text loss rises
  by more than `text_max_rise` (a fraction of where it started; None only reports it) stops with
  the figures and a smaller learning rate to try (`evaluator.TextGuard`).
  """
  dataset_cfg: data_lib.DatasetConfig | None = None
  period: int = 0  # EVAL_PERIOD
  steps: int = 10
  text_dataset_cfg: data_lib.DatasetConfig | None = None
  text_steps: int = 10
  text_max_rise: float | None = 0.1

  @property
  def enabled(self) -> bool:
    return bool(self.period) and self.dataset_cfg is not None

  @property
  def guards_text(self) -> bool:
    return bool(self.period) and self.text_dataset_cfg is not None
