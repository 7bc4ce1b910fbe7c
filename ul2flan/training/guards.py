"""Stopping a run cleanly: preemption signals and non-finite steps, watched by trainer hooks.

- `PreemptionWatcher`: SIGTERM (what spot / preemptible VMs and Slurm send) or SIGINT asks the run
  to stop. On one process a signal handler sets a flag; on several, JAX's preemption sync service
  (started by `jax.distributed.initialize`, it owns SIGTERM) makes every host reach the same step.
  The trainer then saves that step, waits for the commit and raises `Preempted`.
- `DivergenceGuard`: the jitted step reports `nonfinite_steps` (1 when the loss or the gradient
  norm is not finite). The guard fetches those flags only when logging already synchronises with
  the device, and before every save, so no extra round trip per step. Policy `stop` raises
  `Diverged` naming the first bad step; `skip` (the step dropped the update) stops after
  `max_consecutive_skips` bad steps in a row.

`PreemptionHook` is the between-steps hook that acts on the watcher. `RunStopped.exit_code` is the
process exit status the CLI returns (distinct for each cause).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Callable

import jax
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

EXIT_DIVERGED = 3
EXIT_TEXT_LOSS_ROSE = 4  # the held-out text guard (`evaluator.TextGuard`)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later", i.e. re-run the same command
POLICIES = ("stop", "skip")


class RunStopped(Exception):
  exit_code = 1


class Preempted(RunStopped):
  exit_code = EXIT_PREEMPTED


class Diverged(RunStopped):
  exit_code = EXIT_DIVERGED


class PreemptionWatcher:
  """A context manager: inside it, SIGTERM / SIGINT request a clean stop instead of killing.

  A second signal while stopping restores the default behaviour (a third kills at once).
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, object] = {}
    self._synced = jax.process_count() > 1

  def __enter__(self) -> "PreemptionWatcher":
    # With several processes JAX's preemption notifier handles SIGTERM; SIGINT is forwarded to it.
    signals = (signal.SIGINT,) if self._synced else (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: signals stay as they were
        logger.debug("not in the main thread: %s not handled", signal.Signals(sig).name)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    del frame
    self.signal_name = signal.Signals(signum).name
    logger.warning("%s received: finishing the current step, then saving a checkpoint and "
                   "stopping (send it again to stop without saving)", self.signal_name)
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
    if self._synced:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier tells the other hosts

  def requested(self, step: int) -> bool:
    """True at the step where every process stops (call it at every step on every process)."""
    if not self._synced:
      return self.signal_name is not None
    if multihost_utils.reached_preemption_sync_point(step):
      self.signal_name = self.signal_name or "SIGTERM"
      return True
    return False


class DivergenceGuard:
  """Watches the steps' `nonfinite_steps` flags; see the module docstring for the policies."""

  def __init__(self, policy: str, max_consecutive_skips: int,
               last_checkpoint: Callable[[], str]):
    if policy not in POLICIES:
      raise ValueError(f"TrainConfig.on_nonfinite must be one of {POLICIES}, got {policy!r}")
    if max_consecutive_skips < 1:
      raise ValueError(f"TrainConfig.max_consecutive_skips must be >= 1, got {max_consecutive_skips}")
    self.policy = policy
    self.max_consecutive_skips = max_consecutive_skips
    self.last_checkpoint = last_checkpoint
    self.pending: list[tuple[int, dict]] = []
    self.skips_in_a_row = 0

  def record(self, info) -> None:
    m = info.metrics
    self.pending.append((info.step, {k: m[k] for k in ("nonfinite_steps", "loss", "grad_norm")}))

  def check(self, info=None) -> None:
    """Raises `Diverged` if the recorded steps call for it; runs at log time and before saves."""
    del info
    if not self.pending:
      return
    fetched = jax.device_get(self.pending)
    self.pending = []
    for step, m in fetched:
      if not m["nonfinite_steps"]:
        self.skips_in_a_row = 0
        continue
      self.skips_in_a_row += 1
      what = f"loss={float(m['loss']):.4g}, grad_norm={float(m['grad_norm']):.4g}"
      if self.policy == "stop":
        raise Diverged(self._message(f"step {step} is not finite ({what})",
                                     "or set --gin.TrainConfig.on_nonfinite=\"'skip'\" to drop such "
                                     "updates"))
      logger.warning("step %d is not finite (%s): update skipped (%d in a row)", step, what,
                     self.skips_in_a_row)
      if self.skips_in_a_row >= self.max_consecutive_skips:
        raise Diverged(self._message(
            f"{self.skips_in_a_row} steps in a row up to step {step} were not finite ({what})",
            "or raise TrainConfig.max_consecutive_skips"))

  def _message(self, what: str, alternative: str) -> str:
    return (f"training diverged: {what}. No non-finite state was saved; the last good checkpoint "
            f"is {self.last_checkpoint()}. Lower LEARNING_RATE (or raise the warmup) and re-run "
            f"to resume from it, {alternative}.")

  def require_finite(self, all_finite: bool, step: int) -> None:
    """Before a save: the state itself must be finite (a finite loss can still overflow it)."""
    if not all_finite:
      raise Diverged(self._message(f"the parameters or optimizer state after step {step} are not "
                                   f"finite although its loss was", "or clip gradients harder"))


class PreemptionHook:
  """On SIGTERM / SIGINT: logs and saves the step, waits for the commit, raises `Preempted`."""

  def __init__(self, watcher: PreemptionWatcher, *, flush_logs: Callable, save: Callable,
               wait: Callable[[], None], checkpoint_dir: str):
    self.watcher, self.flush_logs, self.save, self.wait = watcher, flush_logs, save, wait
    self.checkpoint_dir = checkpoint_dir

  def __call__(self, info) -> None:
    if info.last or not self.watcher.requested(info.step):
      return
    self.flush_logs(info)
    self.save(info)
    self.wait()
    raise Preempted(
        f"stopped by {self.watcher.signal_name} after step {info.step}; checkpoint "
        f"{self.checkpoint_dir}/{info.step} is committed. Re-run the same command to resume "
        f"from step {info.step}.")
