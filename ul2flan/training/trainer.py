"""The t5x-style trainer: restore or initialise a train state, then a short loop with hooks.

`train()` is gin-configurable like t5x's: model config, dataset configs, partitioner, checkpoint
config, optimizer and schedule, total steps, eval period. The step is pure and jitted once
(`ul2flan.training.steps`); logging, evaluation, checkpoints and profiling are hooks
(`ul2flan.training.hooks`) that run between steps.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

from etils import epath
import gin
import jax
import numpy as np

from ul2flan import config as config_lib
from ul2flan import paths
from ul2flan import partitioning
from ul2flan import vocabularies
from ul2flan.model.config import DecoderConfig
from ul2flan import checkpoints
from ul2flan.training import data as data_lib
from ul2flan.training import guards
from ul2flan.training import hooks as hooks_lib
from ul2flan.training import metrics as metrics_lib
from ul2flan.training import mfu
from ul2flan.training import optim
from ul2flan.training import validation
from ul2flan.training.steps import StepBuilder, TrainState, batch_spec

logger = logging.getLogger(__name__)


_DATA_START = {"batches_consumed": 0}


@dataclasses.dataclass
class TrainResult:
  model_dir: str
  step: int
  last_metrics: dict
  last_eval: dict


def restore_or_init(builder: StepBuilder, manager, model_dir: str,
                    ckpt_cfg: checkpoints.CheckpointConfig, seed: int,
                    data_files: Sequence[str] = ()) -> tuple[TrainState, dict, str]:
  """Resume from the model dir, else start from INITIAL_CHECKPOINT_PATH, else from scratch.

  Returns (state, data state, how) where `how` says which path was taken and the data state is
  the saved `{"batches_consumed": N, "files": {...}}` (`files`: those of `data_files`, this
  process's iterator states, that the step holds). A damaged latest step stops the run with
  what is wrong, unless `ckpt_cfg.fallback_to_intact`.
  """
  latest = checkpoints.newest_intact_step(manager, ckpt_cfg.fallback_to_intact)
  if latest is not None:
    params, opt_state, data_state = checkpoints.restore_full(
        manager, latest, builder.abstract_params, builder.abstract_opt_state,
        f"{checkpoints.checkpoint_dir(model_dir)}/{latest}", verified=True, data_files=data_files)
    return builder.make_state(latest, params, opt_state), data_state, f"resumed from step {latest}"
  path = ckpt_cfg.initial_checkpoint_path
  if path:
    if ckpt_cfg.initial_checkpoint_mode == "params":
      params, src_step = checkpoints.restore_params(path, builder.abstract_params)
      return (builder.make_state(0, params, builder.init_opt_state(params)), _DATA_START,
              f"params from {path} (step {src_step}), fresh optimizer at step 0")
    if ckpt_cfg.initial_checkpoint_mode == "full":
      ckpt_dir, src_step = checkpoints.resolve_step_dir(path)
      with checkpoints.open_manager(ckpt_dir) as other:
        params, opt_state, data_state = checkpoints.restore_full(
            other, src_step, builder.abstract_params, builder.abstract_opt_state, path,
            data_files=data_files)
      return (builder.make_state(src_step, params, opt_state), data_state,
              f"full state from {path} (step {src_step})")
    raise ValueError(f"initial_checkpoint_mode must be 'params' or 'full', got "
                     f"{ckpt_cfg.initial_checkpoint_mode!r}")
  params = builder.init_params(seed)
  return builder.make_state(0, params, builder.init_opt_state(params)), _DATA_START, "from scratch"


def _padding_batch(cfg: data_lib.DatasetConfig) -> dict:
  """Zero rows (no loss weight) shaped like this process's part of an eval batch."""
  converter = data_lib.FEATURE_CONVERTERS[cfg.feature_converter](pack=cfg.pack)
  lengths = converter.get_model_feature_lengths(dict(cfg.task_feature_lengths))
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
  """Teacher-forced loss / token accuracy over up to `num_batches` batches of an eval split.

  Every process runs the same steps (they are collectives): a process whose shard is used up
  feeds zero-weight rows, and the pass ends at the first step with no weight on any process
  (the summed weight is the same number everywhere).
  """
  it = data_lib.HostIterator(cfg)
  padding = _padding_batch(cfg)
  sums = {"nll": 0.0, "z": 0.0, "correct": 0.0, "weight": 0.0}
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
    for k in sums:
      sums[k] += out[k]
  w = max(sums["weight"], 1.0)
  return {"loss": sums["nll"] / w, "accuracy": sums["correct"] / w, "tokens": sums["weight"]}


def _check_batch(cfg: data_lib.DatasetConfig, partitioner: partitioning.Partitioner,
                 num_microbatches: int) -> None:
  if cfg.batch_size % partitioner.data_parallel_size:
    raise ValueError(f"BATCH_SIZE={cfg.batch_size} must be divisible by the data "
                     f"parallel size {partitioner.data_parallel_size} (data x fsdp of MESH_SHAPE)")
  if cfg.batch_size % (num_microbatches * partitioner.data_parallel_size):
    raise ValueError(f"BATCH_SIZE={cfg.batch_size} must be divisible by "
                     f"num_microbatches={num_microbatches} x data parallel size "
                     f"{partitioner.data_parallel_size}")


def _write_configs(model_dir: str, model_config: DecoderConfig,
                   train_cfg: data_lib.DatasetConfig) -> None:
  """config.gin (what was asked) and run.json (what inference needs), on process 0."""
  if jax.process_index() != 0:
    return
  (epath.Path(model_dir) / "config.gin").write_text(gin.config_str())
  config_lib.write_run_info(model_dir, config_lib.RunInfo(
      model=dataclasses.asdict(model_config), feature_converter=train_cfg.feature_converter,
      task_feature_lengths=dict(train_cfg.task_feature_lengths),
      vocabulary=dataclasses.asdict(vocabularies.configured_spec())))


class _Hooks:
  """The side effects between steps that need the run's objects: saving, evaluation, stopping."""

  def __init__(self, *, model_dir: str, builder: StepBuilder, manager, train_iter,
               guard: guards.DivergenceGuard, watcher: guards.PreemptionWatcher,
               logging_hook: hooks_lib.MetricsLogger, stopwatch: hooks_lib.Stopwatch,
               eval_dataset_cfg, eval_steps: int, eval_writer, result: TrainResult):
    self.model_dir, self.builder, self.manager = model_dir, builder, manager
    self.train_iter, self.guard, self.watcher = train_iter, guard, watcher
    self.logging_hook, self.stopwatch = logging_hook, stopwatch
    self.eval_dataset_cfg, self.eval_steps, self.eval_writer = (eval_dataset_cfg, eval_steps,
                                                                eval_writer)
    self.result = result
    self.saved_step: int | None = None
    self.eval_cache: dict = {}

  def save_checkpoint(self, info: hooks_lib.StepInfo) -> None:
    """Saves the step unless saved already; never a state whose steps were not all finite."""
    if info.step == self.saved_step:
      return
    self.guard.check()
    with self.stopwatch.paused():
      self.guard.require_finite(self.builder.all_finite(info.state), info.step)
    checkpoints.save(self.manager, info.step, info.state.params, info.state.opt_state,
                     self.train_iter.state(), force=True, data_files=self.train_iter.snapshot())
    self.saved_step = info.step

  def run_eval(self, info: hooks_lib.StepInfo) -> None:
    with self.stopwatch.paused():
      self.result.last_eval = evaluate(self.builder, info.state.params, self.eval_dataset_cfg,
                                       self.eval_steps, self.eval_cache)
      self.eval_writer.write_scalars(info.step, self.result.last_eval)
      self.eval_writer.flush()

  def stop_if_preempted(self, info: hooks_lib.StepInfo) -> None:
    """On SIGTERM / SIGINT: log and save this step, wait for the commit, raise `Preempted`."""
    if info.last or not self.watcher.requested(info.step):
      return
    self.logging_hook.flush(info)
    self.save_checkpoint(info)
    self.manager.wait_until_finished()
    raise guards.Preempted(
        f"stopped by {self.watcher.signal_name} after step {info.step}; checkpoint "
        f"{checkpoints.checkpoint_dir(self.model_dir)}/{info.step} is committed. Re-run the same "
        f"command to resume from step {info.step}.")


def _last_checkpoint(manager, model_dir: str) -> str:
  manager.wait_until_finished()
  step = manager.latest_step()
  if step is None:
    return "none (nothing was saved in this model dir)"
  return f"{checkpoints.checkpoint_dir(model_dir)}/{step}"


@gin.configurable(denylist=["model_dir"])
def train(model_dir: str, *, train_dataset_cfg: data_lib.DatasetConfig = gin.REQUIRED,
          total_steps: int = gin.REQUIRED, model_config: DecoderConfig | None = None,
          partitioner: partitioning.Partitioner | None = None,
          checkpoint_cfg: checkpoints.CheckpointConfig | None = None,
          eval_dataset_cfg: data_lib.DatasetConfig | None = None, eval_period: int = 0,
          eval_steps: int = 10, log_period: int = 10, seed: int = 0, z_loss: float = 1e-4,
          num_microbatches: int = 1, peak_flops_per_device: float | None = None,
          profile_start_step: int | None = None, profile_num_steps: int = 3,
          on_nonfinite: str = "stop", max_consecutive_skips: int = 10,
          stage_name: str = "train", progress: bool = True) -> TrainResult:
  """Trains until `total_steps`, resuming from the model dir's latest checkpoint.

  Stops early by raising `guards.Preempted` (SIGTERM / SIGINT, after committing the step) or
  `guards.Diverged` (a non-finite step under `on_nonfinite='stop'`; nothing non-finite is saved).
  """
  validation.check_train_settings(
      train_dataset_cfg=train_dataset_cfg, eval_dataset_cfg=eval_dataset_cfg,
      total_steps=total_steps, eval_period=eval_period, eval_steps=eval_steps,
      log_period=log_period, num_microbatches=num_microbatches, seed=seed)
  model_dir = str(paths.resolve(model_dir))
  model_config = model_config or DecoderConfig()
  partitioner = partitioner or partitioning.Partitioner()
  checkpoint_cfg = checkpoint_cfg or checkpoints.CheckpointConfig()
  _check_batch(train_dataset_cfg, partitioner, num_microbatches)
  if jax.process_index() == 0:
    paths.make_writable_dir(model_dir, "model dir (--model_dir)")

  schedule = optim.make_schedule(total_steps=total_steps)
  builder = StepBuilder(model_config, partitioner, optim.make_optimizer(schedule), schedule,
                        seed=seed, z_loss=z_loss, num_microbatches=num_microbatches,
                        skip_nonfinite=on_nonfinite == "skip")
  manager = checkpoints.make_manager(model_dir, checkpoint_cfg)
  guard = guards.DivergenceGuard(on_nonfinite, max_consecutive_skips,
                                 lambda: _last_checkpoint(manager, model_dir))
  try:
    with guards.PreemptionWatcher() as watcher:
      state, data_state, how = restore_or_init(builder, manager, model_dir, checkpoint_cfg,
                                                  seed, data_lib.state_files(train_dataset_cfg))
      start_step = int(state.step)
      _write_configs(model_dir, model_config, train_dataset_cfg)  # once the start is known good
      if start_step >= total_steps:
        logger.info("[%s] %s: already at step %d >= TRAIN_STEPS=%d, nothing to train in %s",
                    stage_name, how, start_step, total_steps, model_dir)
      else:
        logger.info("[%s] %s; training to step %d in %s", stage_name, how, total_steps, model_dir)
      result = TrainResult(model_dir=model_dir, step=start_step, last_metrics={}, last_eval={})
      if start_step < total_steps:
        _train_steps(
            model_dir=model_dir, model_config=model_config, partitioner=partitioner,
            builder=builder, manager=manager, guard=guard, watcher=watcher, state=state,
            data_state=data_state, start_step=start_step, total_steps=total_steps,
            train_dataset_cfg=train_dataset_cfg, checkpoint_cfg=checkpoint_cfg,
            eval_dataset_cfg=eval_dataset_cfg, eval_period=eval_period, eval_steps=eval_steps,
            log_period=log_period, peak_flops_per_device=peak_flops_per_device,
            profile_start_step=profile_start_step, profile_num_steps=profile_num_steps,
            stage_name=stage_name, progress=progress, result=result)
  finally:
    manager.wait_until_finished()
    manager.close()
  if jax.process_index() == 0:
    (epath.Path(model_dir) / "config.operative.gin").write_text(gin.operative_config_str())
  return result


def _train_steps(*, model_dir, model_config, partitioner, builder, manager, guard, watcher, state,
                 data_state, start_step, total_steps, train_dataset_cfg, checkpoint_cfg,
                 eval_dataset_cfg, eval_period, eval_steps, log_period, peak_flops_per_device,
                 profile_start_step, profile_num_steps, stage_name, progress, result):
  """The loop: one jitted step, then the hooks; fills `result`."""
  train_iter = data_lib.HostIterator(train_dataset_cfg, resume=data_state)
  local = next(train_iter)
  spec = batch_spec(local)
  step_fn = builder.jit_train_step(spec)

  if peak_flops_per_device is None:
    peak_flops_per_device, peak_source = mfu.peak_flops_per_device()
  else:
    peak_source = "configured"
  flops_per_token = mfu.model_flops_per_token(model_config, spec["decoder_target_tokens"][1])
  logger.info("MFU: %.3g model FLOPs/token (PaLM formula, attention not halved); peak %.3g "
              "FLOP/s per device (%s)", flops_per_token, peak_flops_per_device, peak_source)

  stopwatch = hooks_lib.Stopwatch()
  writer = metrics_lib.create_writer(model_dir, "train", resume_step=start_step)
  eval_writer = metrics_lib.create_writer(model_dir, "eval", resume_step=start_step)
  bar = hooks_lib.progress_bar(total_steps, start_step, stage_name) if progress else None
  logging_hook = hooks_lib.MetricsLogger(
      writer, tokens_per_step=train_dataset_cfg.batch_size * spec["decoder_target_tokens"][1],
      flops_per_token=flops_per_token,
      peak_flops=peak_flops_per_device * jax.device_count(), stopwatch=stopwatch,
      progress_bar=bar)
  run = _Hooks(model_dir=model_dir, builder=builder, manager=manager, train_iter=train_iter,
               guard=guard, watcher=watcher, logging_hook=logging_hook, stopwatch=stopwatch,
               eval_dataset_cfg=eval_dataset_cfg, eval_steps=eval_steps,
               eval_writer=eval_writer, result=result)
  hooks = hooks_lib.Hooks()
  hooks.add(logging_hook.accumulate)
  hooks.add(guard.record)
  hooks.add(logging_hook.flush, every=log_period)
  hooks.add(guard.check, every=log_period)
  hooks.add(run.save_checkpoint, every=checkpoint_cfg.save_period)
  if eval_dataset_cfg is not None and eval_period:
    hooks.add(run.run_eval, every=eval_period)
  if profile_start_step is not None:
    hooks.add(hooks_lib.Profiler(str(epath.Path(model_dir) / "profile"), profile_start_step,
                                 profile_num_steps))
  hooks.add(run.stop_if_preempted)

  try:
    for step in range(start_step, total_steps):
      if local is None:
        local = next(train_iter)
      with partitioner.activation_context():
        state, step_metrics = step_fn(state, partitioning.host_local_to_global(local, partitioner))
      local = None
      hooks.run(hooks_lib.StepInfo(step + 1, state, step_metrics, last=step + 1 == total_steps))
  finally:
    for w in (writer, eval_writer):
      w.close()
    if bar is not None:
      bar.close()
    # Released one at a time, so a slow release names its part: a stage's end has stalled for
    # up to a minute while the input pipeline closed (docs/demo.md section 8).
    started = time.monotonic()
    train_iter.close()
    _log_if_slow(stage_name, "closing the input pipeline", started)
    started = time.monotonic()
    del step_fn, state, run, hooks
    _log_if_slow(stage_name, "releasing the compiled step, the train state and the hooks", started)
  result.step, result.last_metrics = total_steps, logging_hook.last


def _log_if_slow(stage_name: str, what: str, started: float, slow_s: float = 5.0) -> None:
  elapsed = time.monotonic() - started
  if elapsed > slow_s:
    logger.warning("[%s] %s took %.0fs", stage_name, what, elapsed)
