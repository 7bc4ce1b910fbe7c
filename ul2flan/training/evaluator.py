"""Teacher-forced evaluation between steps, and the held-out text guard.

* `evaluate`: loss / token accuracy over an eval split, the same on every process; per group
  too (`loss/<g>`, `accuracy/<g>`: one group per UL2R denoiser, `steps.segment_group_ids`).
* `Evaluator`: the periodic evaluation hook (`metrics_eval.jsonl`, TensorBoard).
* `TextGuard`: held-out plain text scored before the first step and periodically. A stage whose
  text loss rises by more than `EvalConfig.text_max_rise` stops (exit status 4) with the figures
  and a learning rate to try: continued training at too high a rate makes a pretrained model
  worse at text while its own loss still falls (docs/hf.md has the measurements).
"""

from __future__ import annotations

import json
import logging

from etils import epath
import jax
import numpy as np

from ul2flan import partitioning
from ul2flan import row_layout
from ul2flan.training import data as data_lib
from ul2flan.training import guards
from ul2flan.training import hooks as hooks_lib
from ul2flan.training import settings
from ul2flan.training import metrics as metrics_lib
from ul2flan.training.steps import StepBuilder, batch_spec

logger = logging.getLogger(__name__)

TEXT_GUARD_FILE = "text_guard.json"  # in the model dir: the text loss the stage started from


def padding_batch(cfg: data_lib.DatasetConfig) -> dict:
  """Zero rows (no loss weight) shaped like this process's part of an eval batch."""
  lengths = row_layout.RowLayout(cfg.feature_converter).model_feature_lengths(
      cfg.task_feature_lengths)
  rows = cfg.batch_size // jax.process_count()
  return {k: np.zeros((rows, n), np.int32) for k, n in lengths.items()}


def _pad_rows(local: dict, padding: dict) -> dict:
  """A short last batch, filled up to the full row count with zero-weight rows."""
  short = {k: padding[k].shape[0] - v.shape[0] for k, v in local.items()}
  if set(local) != set(padding) or any(n < 0 for n in short.values()):
    raise ValueError(f"eval batch {batch_spec(local)} does not fit the padding layout "
                     f"{batch_spec(padding)}")
  return {k: np.concatenate([v, padding[k][:short[k]]]) if short[k] else v
          for k, v in local.items()}


def evaluate(builder: StepBuilder, params, cfg: data_lib.DatasetConfig, num_batches: int,
             eval_step_cache: dict) -> dict:
  """Teacher-forced loss / token accuracy over up to `num_batches` batches of an eval split,
  and per group where the step has groups (`metrics.per_group`).

  Every process runs the same steps (they are collectives): a process whose shard is used up
  feeds zero-weight rows, and the pass ends at the first step with no weight on any process
  (the summed weight is the same number everywhere).
  """
  it = data_lib.HostIterator(cfg)
  padding = padding_batch(cfg)
  sums = {"nll": 0.0, "z": 0.0, "correct": 0.0, "weight": 0.0}
  try:
    for _ in range(num_batches):
      local = next(it, None)
      local = padding if local is None else _pad_rows(local, padding)
      spec = batch_spec(local)
      key = tuple(sorted(spec.items()))
      if key not in eval_step_cache:
        eval_step_cache[key] = builder.jit_eval_step(spec)
      with builder.partitioner.activation_context():
        out = eval_step_cache[key](params,
                                   partitioning.host_local_to_global(local, builder.partitioner))
      out = {k: float(v) for k, v in out.items()}
      if out["weight"] == 0:
        break
      for k, v in out.items():
        sums[k] = sums.get(k, 0.0) + v
  finally:
    it.close()
  w = max(sums["weight"], 1.0)
  groups = metrics_lib.per_group({k: v for k, v in sums.items() if "/" in k})
  return {"loss": sums["nll"] / w, "accuracy": sums["correct"] / w, "tokens": sums["weight"],
          **groups}


class Evaluator:
  """The periodic evaluation hook: scores `cfg` and writes it as the step's eval metrics."""

  def __init__(self, builder: StepBuilder, cfg: data_lib.DatasetConfig, num_batches: int,
               writer, stopwatch: hooks_lib.Stopwatch):
    self.builder, self.cfg, self.num_batches = builder, cfg, num_batches
    self.writer, self.stopwatch = writer, stopwatch
    self.cache: dict = {}
    self.last: dict = {}
    self.warned_empty = False

  def __call__(self, info: hooks_lib.StepInfo) -> None:
    with self.stopwatch.paused():
      self.last = evaluate(self.builder, info.state.params, self.cfg, self.num_batches,
                           self.cache)
      self.writer.write_scalars(info.step, self.last)
      self.writer.flush()
    if not self.last["tokens"] and not self.warned_empty:
      self.warned_empty = True  # once: every later pass reads the same empty split
      logger.warning("evaluation of %r split %r scored no tokens (loss and accuracy read 0): the "
                     "split is empty, e.g. a held-out slice of a small file (ul2flan/holdout.py); "
                     "give the data a validation file or more rows", self.cfg.mixture_or_task_name,
                     self.cfg.split)


class TextLossRose(guards.RunStopped):
  exit_code = guards.EXIT_TEXT_LOSS_ROSE


class TextGuard:
  """Held-out text loss: measured at the start, then every period; stops a stage that raises it
  by more than `max_rise` (a fraction). The starting figure is kept in the model dir, so a
  resumed stage compares with where the stage began, not where it resumed."""

  def __init__(self, builder: StepBuilder, eval_cfg: settings.EvalConfig, writer,
               stopwatch: hooks_lib.Stopwatch, *, model_dir: str, stage_name: str,
               learning_rate: float | None, last_checkpoint):
    self.builder, self.writer, self.stopwatch = builder, writer, stopwatch
    self.cfg, self.num_batches = eval_cfg.text_dataset_cfg, eval_cfg.text_steps
    self.max_rise = eval_cfg.text_max_rise
    self.file = epath.Path(model_dir) / TEXT_GUARD_FILE
    self.stage_name, self.learning_rate = stage_name, learning_rate
    self.last_checkpoint = last_checkpoint  # () -> the last committed step, for the message
    self.cache: dict = {}
    self.start: dict | None = None
    self.last: dict = {}

  def _measure(self, params) -> float:
    with self.stopwatch.paused():
      result = evaluate(self.builder, params, self.cfg, self.num_batches, self.cache)
    if not result["tokens"]:
      raise ValueError(
          f"[{self.stage_name}] the held-out text ({self.cfg.mixture_or_task_name!r}, split "
          f"{self.cfg.split!r}) gave no tokens to score: give the corpus more documents or a "
          f"validation split, or unset EvalConfig.text_dataset_cfg")
    return result["loss"]

  def begin(self, step: int, params) -> None:
    """The stage's starting text loss: read back on a resume, measured on a fresh start."""
    if self.file.exists():
      self.start = json.loads(self.file.read_text())
    else:
      self.start = {"step": step, "text_loss": self._measure(params)}
      if jax.process_index() == 0:
        self.file.write_text(json.dumps(self.start) + "\n")
      self.writer.write_scalars(step, {"text_loss": self.start["text_loss"]})
      self.writer.flush()
    logger.info("[%s] held-out text loss at step %d: %.4f nats/token%s", self.stage_name,
                self.start["step"], self.start["text_loss"],
                "" if self.max_rise is None else
                f" (the stage stops if it rises above {self.limit:.4f}, +{self.max_rise:.0%})")

  @property
  def limit(self) -> float:
    return self.start["text_loss"] * (1.0 + (self.max_rise or 0.0))

  def __call__(self, info: hooks_lib.StepInfo) -> None:
    loss = self._measure(info.state.params)
    rise = loss / self.start["text_loss"] - 1.0
    self.last = {"text_loss": loss, "text_loss_rise": rise}
    self.writer.write_scalars(info.step, self.last)
    self.writer.flush()
    if self.max_rise is None or loss <= self.limit:
      return
    suggestion = ("" if not self.learning_rate else
                  f" Try a tenth of the learning rate: LEARNING_RATE={self.learning_rate / 10:.2g}"
                  f" (now {self.learning_rate:.2g}).")
    raise TextLossRose(
        f"[{self.stage_name}] held-out text loss rose from {self.start['text_loss']:.4f} (step "
        f"{self.start['step']}) to {loss:.4f} nats/token at step {info.step} ({rise:+.1%}; the "
        f"limit is +{self.max_rise:.0%}, EvalConfig.text_max_rise): this stage is making the "
        f"model worse at plain text.{suggestion} Checkpoints are kept (last committed: "
        f"{self.last_checkpoint()}); move {self.file.parent} aside before re-running, or the "
        f"stage resumes from them.")
