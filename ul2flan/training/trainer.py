"""The t5x-style trainer: restore or initialise a train state, then a short loop with hooks.

`train()` is gin-configurable like t5x's: model config, dataset configs, partitioner, checkpoint
config, optimizer and schedule, total steps, eval period. The step is pure and jitted once
(`ul2flan.training.steps`); logging, evaluation, checkpoints and profiling are hooks
(`ul2flan.training.hooks`) that run between steps.
"""

from __future__ import annotations

import dataclasses
import logging

from etils import epath
import gin
import jax

from ul2flan import config as config_lib
from ul2flan import partitioning
from ul2flan import vocabularies
from ul2flan.model.config import DecoderConfig
from ul2flan import checkpoints
from ul2flan.training import data as data_lib
from ul2flan.training import hooks as hooks_lib
from ul2flan.training import metrics as metrics_lib
from ul2flan.training import mfu
from ul2flan.training import optim
from ul2flan.training.steps import StepBuilder, TrainState, batch_spec

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
  model_dir: str
  step: int
  last_metrics: dict
  last_eval: dict


def restore_or_init(builder: StepBuilder, manager, model_dir: str,
                    ckpt_cfg: checkpoints.CheckpointConfig, seed: int
                    ) -> tuple[TrainState, int, str]:
  """Resume from the model dir, else start from INITIAL_CHECKPOINT_PATH, else from scratch.

  Returns (state, data position, how) where `how` says which path was taken.
  """
  latest = manager.latest_step()
  if latest is not None:
    params, opt_state, data_state = checkpoints.restore_full(
        manager, latest, builder.abstract_params, builder.abstract_opt_state,
        f"{checkpoints.checkpoint_dir(model_dir)}/{latest}")
    return (builder.make_state(latest, params, opt_state), data_state["batches_consumed"],
            f"resumed from step {latest}")
  path = ckpt_cfg.initial_checkpoint_path
  if path:
    if ckpt_cfg.initial_checkpoint_mode == "params":
      params, src_step = checkpoints.restore_params(path, builder.abstract_params)
      return (builder.make_state(0, params, builder.init_opt_state(params)), 0,
              f"params from {path} (step {src_step}), fresh optimizer at step 0")
    if ckpt_cfg.initial_checkpoint_mode == "full":
      ckpt_dir, src_step = checkpoints.resolve_step_dir(path)
      with checkpoints.open_manager(ckpt_dir) as other:
        params, opt_state, data_state = checkpoints.restore_full(
            other, src_step, builder.abstract_params, builder.abstract_opt_state, path)
      return (builder.make_state(src_step, params, opt_state), data_state["batches_consumed"],
              f"full state from {path} (step {src_step})")
    raise ValueError(f"initial_checkpoint_mode must be 'params' or 'full', got "
                     f"{ckpt_cfg.initial_checkpoint_mode!r}")
  params = builder.init_params(seed)
  return builder.make_state(0, params, builder.init_opt_state(params)), 0, "from scratch"


def evaluate(builder: StepBuilder, params, cfg: data_lib.DatasetConfig, num_batches: int,
             eval_step_cache: dict) -> dict:
  """Teacher-forced loss / token accuracy over `num_batches` batches of an eval split."""
  it = data_lib.HostIterator(cfg)
  sums = {"nll": 0.0, "z": 0.0, "correct": 0.0, "weight": 0.0}
  for _ in range(num_batches):
    try:
      local = next(it)
    except StopIteration:
      break
    spec = batch_spec(local)
    key = tuple(sorted(spec.items()))
    if key not in eval_step_cache:
      eval_step_cache[key] = builder.jit_eval_step(spec)
    with builder.partitioner.activation_context():
      out = eval_step_cache[key](params,
                                 partitioning.host_local_to_global(local, builder.partitioner))
    for k in sums:
      sums[k] += float(out[k])
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


@gin.configurable(denylist=["model_dir"])
def train(model_dir: str, *, train_dataset_cfg: data_lib.DatasetConfig = gin.REQUIRED,
          total_steps: int = gin.REQUIRED, model_config: DecoderConfig | None = None,
          partitioner: partitioning.Partitioner | None = None,
          checkpoint_cfg: checkpoints.CheckpointConfig | None = None,
          eval_dataset_cfg: data_lib.DatasetConfig | None = None, eval_period: int = 0,
          eval_steps: int = 10, log_period: int = 10, seed: int = 0, z_loss: float = 1e-4,
          num_microbatches: int = 1, peak_flops_per_device: float | None = None,
          profile_start_step: int | None = None, profile_num_steps: int = 3,
          stage_name: str = "train", progress: bool = True) -> TrainResult:
  """Trains until `total_steps`, resuming from the model dir's latest checkpoint."""
  model_config = model_config or DecoderConfig()
  partitioner = partitioner or partitioning.Partitioner()
  checkpoint_cfg = checkpoint_cfg or checkpoints.CheckpointConfig()
  epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
  _write_configs(model_dir, model_config, train_dataset_cfg)
  _check_batch(train_dataset_cfg, partitioner, num_microbatches)

  schedule = optim.make_schedule(total_steps=total_steps)
  builder = StepBuilder(model_config, partitioner, optim.make_optimizer(schedule), schedule,
                        seed=seed, z_loss=z_loss, num_microbatches=num_microbatches)
  manager = checkpoints.make_manager(model_dir, checkpoint_cfg)
  state, data_position, how = restore_or_init(builder, manager, model_dir, checkpoint_cfg, seed)
  start_step = int(state.step)
  logger.info("[%s] %s; training to step %d in %s", stage_name, how, total_steps, model_dir)
  result = TrainResult(model_dir=model_dir, step=start_step, last_metrics={}, last_eval={})
  if start_step >= total_steps:
    manager.close()
    return result

  train_iter = data_lib.HostIterator(train_dataset_cfg, start_batch=data_position)
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
  eval_cache: dict = {}

  def save_checkpoint(info: hooks_lib.StepInfo) -> None:
    checkpoints.save(manager, info.step, info.state.params, info.state.opt_state,
                     train_iter.state(), force=True)

  def run_eval(info: hooks_lib.StepInfo) -> None:
    with stopwatch.paused():
      result.last_eval = evaluate(builder, info.state.params, eval_dataset_cfg, eval_steps,
                                  eval_cache)
      eval_writer.write_scalars(info.step, result.last_eval)
      eval_writer.flush()

  hooks = hooks_lib.Hooks()
  hooks.add(logging_hook.accumulate)
  hooks.add(logging_hook.flush, every=log_period)
  hooks.add(save_checkpoint, every=checkpoint_cfg.save_period)
  if eval_dataset_cfg is not None and eval_period:
    hooks.add(run_eval, every=eval_period)
  if profile_start_step is not None:
    hooks.add(hooks_lib.Profiler(str(epath.Path(model_dir) / "profile"), profile_start_step,
                                 profile_num_steps))

  for step in range(start_step, total_steps):
    if local is None:
      local = next(train_iter)
    with partitioner.activation_context():
      state, step_metrics = step_fn(state, partitioning.host_local_to_global(local, partitioner))
    local = None
    hooks.run(hooks_lib.StepInfo(step + 1, state, step_metrics, last=step + 1 == total_steps))

  manager.wait_until_finished()
  manager.close()
  for w in (writer, eval_writer):
    w.close()
  if bar is not None:
    bar.close()
  if jax.process_index() == 0:
    (epath.Path(model_dir) / "config.operative.gin").write_text(gin.operative_config_str())
  result.step, result.last_metrics = total_steps, logging_hook.last
  return result
