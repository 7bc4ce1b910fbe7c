"""The t5x-style trainer: restore or initialise a train state, then a short loop with hooks.

`train()` is gin-configurable like t5x's: the dataset, model config, partitioner and checkpoint
config objects t5x users know, plus `TrainConfig` (the loop) and `EvalConfig` (periodic
evaluation and the held-out text guard), each passed whole (`ul2flan.training.settings`). The step
is pure and jitted once (`ul2flan.training.steps`); everything else runs between steps as hooks:
metrics (`hooks`), checkpoints (`checkpointer.Checkpointer`), evaluation and the text guard
(`evaluator`), divergence and preemption (`guards`), profiling.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from etils import epath
import gin
import jax

from ul2flan import checkpoints
from ul2flan import config as config_lib
from ul2flan import paths
from ul2flan import partitioning
from ul2flan import row_layout
from ul2flan import vocabularies
from ul2flan.model.config import DecoderConfig
from ul2flan.training import data as data_lib
from ul2flan.training import guards
from ul2flan.training import hooks as hooks_lib
from ul2flan.training import metrics as metrics_lib
from ul2flan.training import mfu
from ul2flan.training import optim
from ul2flan.training import validation
from ul2flan.training.checkpointer import Checkpointer
from ul2flan.training.evaluator import Evaluator, TextGuard
from ul2flan.training.settings import EvalConfig, TrainConfig
from ul2flan.training.steps import StepBuilder, StepSettings, batch_spec

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
  model_dir: str
  step: int
  last_metrics: dict
  last_eval: dict


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
                   train_cfg: data_lib.DatasetConfig, layout: row_layout.RowLayout) -> None:
  """config.gin (what was asked) and run.json (what inference needs), on process 0."""
  if jax.process_index() != 0:
    return
  (epath.Path(model_dir) / "config.gin").write_text(gin.config_str())
  config_lib.write_run_info(model_dir, config_lib.RunInfo(
      model=dataclasses.asdict(model_config), feature_converter=train_cfg.feature_converter,
      task_feature_lengths=dict(train_cfg.task_feature_lengths),
      vocabulary=dataclasses.asdict(vocabularies.configured_spec()),
      inputs_eos=layout.inputs_eos))


@dataclasses.dataclass(frozen=True)
class _Run:
  """One training run's settings and the objects built from them (what the loop reads)."""
  model_dir: str
  stage_name: str
  model_config: DecoderConfig
  partitioner: partitioning.Partitioner
  dataset_cfg: data_lib.DatasetConfig
  train_cfg: TrainConfig
  eval_cfg: EvalConfig
  builder: StepBuilder
  checkpointer: Checkpointer
  divergence: guards.DivergenceGuard


@gin.configurable(denylist=["model_dir", "check_only"])
def train(model_dir: str, *, train_dataset_cfg: data_lib.DatasetConfig = gin.REQUIRED,
          train_cfg: TrainConfig = gin.REQUIRED, model_config: DecoderConfig | None = None,
          partitioner: partitioning.Partitioner | None = None,
          checkpoint_cfg: checkpoints.CheckpointConfig | None = None,
          eval_cfg: EvalConfig | None = None, stage_name: str = "train",
          check_only: bool = False) -> TrainResult | None:
  """Trains until `train_cfg.total_steps`, resuming from the model dir's latest checkpoint.

  `check_only`: check every setting, the data (each dataset's split and files) and the
  vocabulary, then return None without building or writing anything (the pipeline's preflight).

  Stops early by raising a `guards.RunStopped`: `Preempted` (SIGTERM / SIGINT, after committing the
  step), `Diverged` (a non-finite step under `on_nonfinite='stop'`; nothing non-finite is saved) or
  `evaluator.TextLossRose` (the held-out text guard).
  """
  eval_cfg = eval_cfg or EvalConfig()
  validation.check_train_settings(train_dataset_cfg, train_cfg, eval_cfg)
  model_dir = str(paths.resolve(model_dir))
  model_config = model_config or DecoderConfig()
  partitioner = partitioner or partitioning.Partitioner()
  _check_batch(train_dataset_cfg, partitioner, train_cfg.num_microbatches)
  layout = row_layout.RowLayout.of(train_dataset_cfg.feature_converter,
                                   vocabularies.get_vocabulary(),
                                   data_lib.inputs_end_with_eos(train_dataset_cfg))
  if check_only:
    _check_data(model_dir, train_dataset_cfg, eval_cfg)
    return None
  if jax.process_index() == 0:
    paths.make_writable_dir(model_dir, "model dir (--model_dir)")

  schedule = optim.make_schedule(total_steps=train_cfg.total_steps)
  builder = StepBuilder(model_config, partitioner, optim.make_optimizer(schedule), schedule,
                        StepSettings(seed=train_cfg.seed, z_loss=train_cfg.z_loss,
                                     num_microbatches=train_cfg.num_microbatches,
                                     skip_nonfinite=train_cfg.on_nonfinite == "skip",
                                     hide_start=layout.hidden_start,
                                     segment_groups=data_lib.denoiser_groups(train_dataset_cfg)))
  checkpointer = Checkpointer(model_dir, checkpoint_cfg or checkpoints.CheckpointConfig())
  run = _Run(model_dir, stage_name, model_config, partitioner, train_dataset_cfg, train_cfg,
             eval_cfg, builder, checkpointer,
             guards.DivergenceGuard(train_cfg.on_nonfinite, train_cfg.max_consecutive_skips,
                                    checkpointer.last_committed))
  total = train_cfg.total_steps
  try:
    with guards.PreemptionWatcher() as watcher:
      state, data_state, how = checkpointer.restore_or_init(
          builder, train_cfg.seed, data_lib.state_files(train_dataset_cfg))
      start_step = int(state.step)
      # Once the start is known good.
      _write_configs(model_dir, model_config, train_dataset_cfg, layout)
      if start_step >= total:
        logger.info("[%s] %s: already at step %d >= TRAIN_STEPS=%d, nothing to train in %s",
                    stage_name, how, start_step, total, model_dir)
      else:
        logger.info("[%s] %s; training to step %d in %s", stage_name, how, total, model_dir)
      result = TrainResult(model_dir=model_dir, step=start_step, last_metrics={}, last_eval={})
      if start_step < total:
        _train_steps(run, watcher, state, data_state, result)
  finally:
    checkpointer.close()
  if jax.process_index() == 0:
    (epath.Path(model_dir) / config_lib.OPERATIVE_CONFIG_FILE).write_text(
        gin.operative_config_str())
  return result


def _check_data(model_dir: str, train_dataset_cfg: data_lib.DatasetConfig,
                eval_cfg: EvalConfig) -> None:
  if paths.resolve(model_dir).is_file():
    raise ValueError(f"model dir (--model_dir) {model_dir} is a file; choose a directory")
  validation.check_data(train_dataset_cfg, "train")
  if eval_cfg.enabled:
    validation.check_data(eval_cfg.dataset_cfg, "eval")
  if eval_cfg.guards_text:
    validation.check_data(eval_cfg.text_dataset_cfg, "text")


def _hooks(run: _Run, watcher: guards.PreemptionWatcher, train_iter, logging_hook,
           stopwatch: hooks_lib.Stopwatch, eval_writer) -> tuple[hooks_lib.Hooks, list]:
  """The between-steps hooks, in order, and the evaluation hooks (to read their last figures)."""
  cfg, eval_cfg = run.train_cfg, run.eval_cfg
  save = run.checkpointer.save_hook(run.builder, run.divergence, train_iter, stopwatch)
  hooks = hooks_lib.Hooks()
  hooks.add(logging_hook.accumulate)
  hooks.add(run.divergence.record)
  hooks.add(logging_hook.flush, every=cfg.log_period)
  hooks.add(run.divergence.check, every=cfg.log_period)
  hooks.add(save, every=run.checkpointer.cfg.save_period)
  evaluations = []
  if eval_cfg.enabled:
    evaluations.append(Evaluator(run.builder, eval_cfg.dataset_cfg, eval_cfg.steps, eval_writer,
                                 stopwatch))
  if eval_cfg.guards_text:
    evaluations.append(TextGuard(
        run.builder, eval_cfg, eval_writer, stopwatch, model_dir=run.model_dir,
        stage_name=run.stage_name,
        learning_rate=config_lib.query("make_schedule.base_learning_rate"),
        last_checkpoint=run.checkpointer.last_committed))
  for evaluation in evaluations:
    hooks.add(evaluation, every=eval_cfg.period)
  if cfg.profile_start_step is not None:
    hooks.add(hooks_lib.Profiler(str(epath.Path(run.model_dir) / "profile"),
                                 cfg.profile_start_step, cfg.profile_num_steps))
  hooks.add(guards.PreemptionHook(watcher, flush_logs=logging_hook.flush, save=save,
                                  wait=run.checkpointer.wait,
                                  checkpoint_dir=checkpoints.checkpoint_dir(run.model_dir)))
  return hooks, evaluations


def _train_steps(run: _Run, watcher: guards.PreemptionWatcher, state, data_state,
                 result: TrainResult) -> None:
  """The loop: one jitted step, then the hooks; fills `result`."""
  cfg, start_step = run.train_cfg, int(state.step)
  train_iter = data_lib.HostIterator(run.dataset_cfg, resume=data_state)
  local = next(train_iter)
  spec = batch_spec(local)
  step_fn = run.builder.jit_train_step(spec)

  peak_flops, peak_source = ((cfg.peak_flops_per_device, "configured")
                             if cfg.peak_flops_per_device is not None
                             else mfu.peak_flops_per_device())
  flops_per_token = mfu.model_flops_per_token(run.model_config, spec["decoder_target_tokens"][1])
  logger.info("MFU: %.3g model FLOPs/token (PaLM formula, attention not halved); peak %.3g "
              "FLOP/s per device (%s)", flops_per_token, peak_flops, peak_source)

  stopwatch = hooks_lib.Stopwatch()
  writer = metrics_lib.create_writer(run.model_dir, "train", resume_step=start_step)
  eval_writer = metrics_lib.create_writer(run.model_dir, "eval", resume_step=start_step)
  bar = (hooks_lib.progress_bar(cfg.total_steps, start_step, run.stage_name) if cfg.progress
         else None)
  logging_hook = hooks_lib.MetricsLogger(
      writer, tokens_per_step=run.dataset_cfg.batch_size * spec["decoder_target_tokens"][1],
      flops_per_token=flops_per_token, peak_flops=peak_flops * jax.device_count(),
      stopwatch=stopwatch, progress_bar=bar)
  hooks, evaluations = _hooks(run, watcher, train_iter, logging_hook, stopwatch, eval_writer)
  for evaluation in evaluations:
    if isinstance(evaluation, TextGuard):
      evaluation.begin(start_step, state.params)
  stopwatch.reset()

  try:
    for step in range(start_step, cfg.total_steps):
      if local is None:
        local = next(train_iter)
      with run.partitioner.activation_context():
        state, step_metrics = step_fn(state, partitioning.host_local_to_global(local,
                                                                              run.partitioner))
      local = None
      hooks.run(hooks_lib.StepInfo(step + 1, state, step_metrics,
                                   last=step + 1 == cfg.total_steps))
  finally:
    for w in (writer, eval_writer):
      w.close()
    if bar is not None:
      bar.close()
    # Released one at a time, so a slow release names its part: a stage's end has stalled for
    # up to a minute while the input pipeline closed (docs/demo.md section 8).
    started = time.monotonic()
    train_iter.close()
    _log_if_slow(run.stage_name, "closing the input pipeline", started)
    started = time.monotonic()
    del step_fn, state, hooks
    _log_if_slow(run.stage_name, "releasing the compiled step, the train state and the hooks",
                 started)
  result.step = cfg.total_steps
  result.last_metrics = metrics_lib.per_group(logging_hook.last)
  result.last_eval = {k: v for e in evaluations for k, v in e.last.items()}


def _log_if_slow(stage_name: str, what: str, started: float, slow_s: float = 5.0) -> None:
  elapsed = time.monotonic() - started
  if elapsed > slow_s:
    logger.warning("[%s] %s took %.0fs", stage_name, what, elapsed)
