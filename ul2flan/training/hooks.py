"""Side effects of the training loop, as hooks that run between steps, outside jit.

The loop calls `Hooks.run(info)` after every step; each hook runs when `info.step` is a multiple
of its period, and on the last step. Hooks: metrics logging (+ progress bar), periodic
teacher-forced evaluation, checkpointing, profiling, and the divergence and preemption checks of
`ul2flan.training.guards`. A `Stopwatch` lets a hook keep its own
time (evaluation, a blocking save) out of the throughput the metrics hook reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class StepInfo:
  step: int  # steps done so far (the step just taken is step - 1)
  state: Any  # the TrainState after the step
  metrics: dict  # this step's metrics, still on device
  last: bool  # the run's final step


class Stopwatch:
  """Training time, with pauses for work that is not training (eval, blocking saves)."""

  def __init__(self):
    self.start = time.perf_counter()
    self.paused_seconds = 0.0

  def reset(self) -> None:
    self.start, self.paused_seconds = time.perf_counter(), 0.0

  def elapsed(self) -> float:
    return time.perf_counter() - self.start - self.paused_seconds

  @contextlib.contextmanager
  def paused(self):
    t = time.perf_counter()
    try:
      yield
    finally:
      self.paused_seconds += time.perf_counter() - t


class Hooks:
  """An ordered list of (hook, period)."""

  def __init__(self):
    self._hooks: list[tuple[Callable[[StepInfo], None], int]] = []

  def add(self, hook: Callable[[StepInfo], None], every: int = 1) -> None:
    if every < 1:
      raise ValueError(f"hook period must be >= 1, got {every}")
    self._hooks.append((hook, every))

  def run(self, info: StepInfo) -> None:
    for hook, every in self._hooks:
      if info.step % every == 0 or info.last:
        hook(info)


class MetricsLogger:
  """Accumulates step metrics on device; every period fetches them, adds throughput and MFU,
  writes them (clu writer) and updates the progress bar. `accumulate` runs every step.
  Counts (`SUMMED`) are summed over the logged window; everything else is averaged."""

  SUMMED = frozenset({"nonfinite_steps"})

  def __init__(self, writer, *, tokens_per_step: int, flops_per_token: float,
               peak_flops: float, stopwatch: Stopwatch, progress_bar=None):
    self.writer = writer
    self.tokens_per_step = tokens_per_step
    self.flops_per_token = flops_per_token
    self.peak_flops = peak_flops  # of all devices together
    self.stopwatch = stopwatch
    self.bar = progress_bar
    self.pending: list[dict] = []
    self.last: dict[str, float] = {}

  def accumulate(self, info: StepInfo) -> None:
    self.pending.append(info.metrics)
    if self.bar is not None:
      self.bar.update(1)

  def flush(self, info: StepInfo) -> None:
    if not self.pending:
      return
    fetched = jax.device_get(self.pending)
    elapsed = max(self.stopwatch.elapsed(), 1e-9)
    scalars = {k: float((np.sum if k in self.SUMMED else np.mean)([m[k] for m in fetched]))
               for k in fetched[-1]}
    scalars["learning_rate"] = float(fetched[-1]["learning_rate"])
    tokens_per_second = self.tokens_per_step * len(fetched) / elapsed
    scalars.update(step_time=elapsed / len(fetched), tokens_per_second=tokens_per_second,
                   mfu=tokens_per_second * self.flops_per_token / self.peak_flops)
    self.writer.write_scalars(info.step, scalars)
    self.writer.flush()
    self.last = scalars
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{scalars['loss']:.3f}", acc=f"{scalars['accuracy']:.3f}",
                           tok_s=f"{tokens_per_second:,.0f}", mfu=f"{scalars['mfu']:.2f}")
    self.pending = []
    self.stopwatch.reset()


def progress_bar(total: int, initial: int, desc: str):
  """A tqdm bar on process 0 (None elsewhere)."""
  if jax.process_index() != 0:
    return None
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr,
              mininterval=1.0)


class Profiler:
  """Traces `num_steps` steps from `start_step` with jax.profiler into `log_dir` (Perfetto /
  TensorBoard profile plugin)."""

  def __init__(self, log_dir: str, start_step: int, num_steps: int):
    self.log_dir, self.start_step, self.stop_step = log_dir, start_step, start_step + num_steps
    self.active = False

  def __call__(self, info: StepInfo) -> None:
    if not self.active and info.step == self.start_step and not info.last:
      jax.profiler.start_trace(self.log_dir)
      self.active = True
      logger.info("profiling steps %d..%d into %s", self.start_step, self.stop_step, self.log_dir)
    elif self.active and (info.step >= self.stop_step or info.last):
      jax.block_until_ready(info.state)
      jax.profiler.stop_trace()
      self.active = False
