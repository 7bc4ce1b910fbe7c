"""The t5x-style trainer: an explicit train-state pytree, one jitted step, side effects outside.

`train()` is gin-configurable like t5x's: model config, dataset configs, partitioner, checkpoint
config, optimizer and schedule, total steps, eval period and model dir. The step function is pure,
jitted once with explicit in/out shardings and the state donated; data loading, checkpointing and
metric writing happen in the Python loop around it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from ul2flan import checkpoints
from ul2flan import data as data_lib
from ul2flan import metrics as metrics_lib
from ul2flan import optim
from ul2flan import partitioning
from ul2flan.model import Decoder, DecoderConfig, cross_entropy_with_z_loss, model_inputs


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass
class TrainResult:
  model_dir: str
  step: int
  last_metrics: dict
  last_eval: dict


def _dummy_tokens() -> jax.Array:
  """Input for shape-only initialisation; parameter shapes do not depend on it."""
  return jnp.zeros((1, 8), jnp.int32)


class StepBuilder:
  """Builds the model, shardings and the jitted train/eval steps for one configuration."""

  def __init__(self, model_config: DecoderConfig, partitioner: partitioning.Partitioner,
               tx: optax.GradientTransformation, schedule: optax.Schedule, *, seed: int,
               z_loss: float, num_microbatches: int):
    self.config = model_config
    self.model = Decoder(model_config)
    self.partitioner = partitioner
    self.tx = tx
    self.schedule = schedule
    self.seed = seed
    self.z_loss = z_loss
    self.num_microbatches = num_microbatches

    boxed = jax.eval_shape(lambda: self.model.init(jax.random.key(0),
                                                   _dummy_tokens()))["params"]
    self.param_shardings = partitioner.param_shardings(boxed)
    self.abstract_params = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(boxed), self.param_shardings)
    abstract_opt = jax.eval_shape(tx.init, self.abstract_params)
    self.opt_shardings = optax.tree_map_params(
        tx, lambda leaf, p, s: partitioning.derived_sharding(leaf.shape, p.shape, s),
        abstract_opt, self.abstract_params, self.param_shardings,
        transform_non_params=lambda _: partitioner.replicated(),
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    self.abstract_opt_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_opt,
        self.opt_shardings)
    self.state_shardings = TrainState(step=partitioner.replicated(), params=self.param_shardings,
                                      opt_state=self.opt_shardings)

  # ---- state construction -------------------------------------------------------------------
  def init_params(self, seed: int):
    init = lambda: nn.unbox(self.model.init(jax.random.key(seed),
                                            _dummy_tokens()))["params"]
    with self.partitioner.activation_context():
      return jax.jit(init, out_shardings=self.param_shardings)()

  def init_opt_state(self, params):
    with self.partitioner.activation_context():
      return jax.jit(self.tx.init, out_shardings=self.opt_shardings)(params)

  def make_state(self, step: int, params, opt_state) -> TrainState:
    step = jax.device_put(jnp.asarray(step, jnp.int32), self.partitioner.replicated())
    return TrainState(step=step, params=params, opt_state=opt_state)

  # ---- steps ----------------------------------------------------------------------------------
  def _loss_sums(self, params, batch, rng, enable_dropout: bool):
    logits = self.model.apply({"params": params}, **model_inputs(batch),
                              enable_dropout=enable_dropout, rngs={"dropout": rng})
    return cross_entropy_with_z_loss(logits, batch["decoder_target_tokens"],
                                     batch["decoder_loss_weights"], self.z_loss)

  def train_step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(jax.random.key(self.seed), state.step)
    enable_dropout = self.config.dropout_rate > 0
    total_weight = jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)

    def loss_fn(params, mb, mb_rng):
      nll, z, correct = self._loss_sums(params, mb, mb_rng, enable_dropout)
      return (nll + z) / total_weight, (nll, z, correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    k = self.num_microbatches
    if k == 1:
      (_, (nll, z, correct)), grads = grad_fn(state.params, batch, rng)
    else:
      batch_axes = self.partitioner.spec(("batch",))[0]

      def split(x):  # microbatch i takes rows i, i+k, ...: every device feeds every microbatch
        x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, P(None, batch_axes))

      micro = jax.tree.map(split, batch)

      def body(carry, inputs):
        i, mb = inputs
        (_, sums), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
        acc_g, acc_s = carry
        return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_s, sums)), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, (nll, z, correct)), _ = jax.lax.scan(
          body, (zeros, (0.0, 0.0, 0.0)), (jnp.arange(k), micro))

    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": nll / total_weight, "z_loss": z / total_weight,
        "accuracy": correct / total_weight, "learning_rate": self.schedule(state.step),
        "grad_norm": optax.global_norm(grads), "loss_weight": total_weight,
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def eval_step(self, params, batch) -> dict:
    nll, z, correct = self._loss_sums(params, batch, jax.random.key(0), False)
    return {"nll": nll, "z": z, "correct": correct,
            "weight": jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32))}

  def batch_shardings(self, batch_spec: dict) -> dict:
    return {k: self.partitioner.batch_sharding(len(shape)) for k, shape in batch_spec.items()}

  def jit_train_step(self, batch_spec: dict) -> Callable:
    return jax.jit(self.train_step,
                   in_shardings=(self.state_shardings, self.batch_shardings(batch_spec)),
                   out_shardings=(self.state_shardings, self.partitioner.replicated()),
                   donate_argnums=(0,))

  def jit_eval_step(self, batch_spec: dict) -> Callable:
    return jax.jit(self.eval_step, in_shardings=(self.param_shardings,
                                                 self.batch_shardings(batch_spec)),
                   out_shardings=self.partitioner.replicated())


def restore_or_init(builder: StepBuilder, manager, model_dir: str,
                    ckpt_cfg: checkpoints.CheckpointConfig, seed: int):
  """Resume from the model dir, else start from INITIAL_CHECKPOINT_PATH, else from scratch.

  Returns (state, data_position, how) where `how` says which path was taken.
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


def _batch_spec(batch: dict) -> dict:
  return {k: v.shape for k, v in batch.items()}


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
    spec = _batch_spec(local)
    key = tuple(sorted(spec.items()))
    if key not in eval_step_cache:
      eval_step_cache[key] = builder.jit_eval_step(spec)
    with builder.partitioner.activation_context():
      out = eval_step_cache[key](params, partitioning.host_local_to_global(local, builder.partitioner))
    for k in sums:
      sums[k] += float(out[k])
  w = max(sums["weight"], 1.0)
  return {"loss": sums["nll"] / w, "accuracy": sums["correct"] / w, "tokens": sums["weight"]}


def _progress(total: int, initial: int, desc: str):
  if jax.process_index() != 0:
    return None
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr,
              mininterval=1.0)


@gin.configurable(denylist=["model_dir"])
def train(model_dir: str, *, train_dataset_cfg: data_lib.DatasetConfig = gin.REQUIRED,
          total_steps: int = gin.REQUIRED, model_config: DecoderConfig | None = None,
          partitioner: partitioning.Partitioner | None = None,
          checkpoint_cfg: checkpoints.CheckpointConfig | None = None,
          eval_dataset_cfg: data_lib.DatasetConfig | None = None, eval_period: int = 0,
          eval_steps: int = 10, log_period: int = 10, seed: int = 0, z_loss: float = 1e-4,
          num_microbatches: int = 1, peak_flops_per_device: float | None = None,
          stage_name: str = "train", progress: bool = True) -> TrainResult:
  """Trains until `total_steps`, resuming from the model dir's latest checkpoint."""
  model_config = model_config or DecoderConfig()
  partitioner = partitioner or partitioning.Partitioner()
  checkpoint_cfg = checkpoint_cfg or checkpoints.CheckpointConfig()
  os.makedirs(model_dir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(gin.config_str())

  if train_dataset_cfg.batch_size % partitioner.data_parallel_size:
    raise ValueError(f"BATCH_SIZE={train_dataset_cfg.batch_size} must be divisible by the data "
                     f"parallel size {partitioner.data_parallel_size} (data x fsdp of MESH_SHAPE)")
  if train_dataset_cfg.batch_size % (num_microbatches * partitioner.data_parallel_size):
    raise ValueError(f"BATCH_SIZE={train_dataset_cfg.batch_size} must be divisible by "
                     f"num_microbatches={num_microbatches} x data parallel size "
                     f"{partitioner.data_parallel_size}")
  schedule = optim.make_schedule(total_steps=total_steps)
  tx = optim.make_optimizer(schedule)
  builder = StepBuilder(model_config, partitioner, tx, schedule, seed=seed, z_loss=z_loss,
                        num_microbatches=num_microbatches)
  manager = checkpoints.make_manager(model_dir, checkpoint_cfg)
  state, data_position, how = restore_or_init(builder, manager, model_dir, checkpoint_cfg, seed)
  start_step = int(state.step)
  logging.info("[%s] starting at step %d: %s", stage_name, start_step, how)
  print(f"[{stage_name}] {how}; training to step {total_steps} in {model_dir}", file=sys.stderr)

  result = TrainResult(model_dir=model_dir, step=start_step, last_metrics={}, last_eval={})
  if start_step >= total_steps:
    manager.close()
    return result

  train_iter = data_lib.HostIterator(train_dataset_cfg, start_batch=data_position)
  first = next(train_iter)
  spec = _batch_spec(first)
  step_fn = builder.jit_train_step(spec)
  writer = metrics_lib.MetricsWriter(model_dir)
  eval_writer = metrics_lib.MetricsWriter(model_dir, "eval")
  eval_cache: dict = {}
  if peak_flops_per_device is None:
    peak_flops_per_device, peak_source = metrics_lib.peak_flops_per_device()
  else:
    peak_source = "configured"
  seq_len = spec["decoder_target_tokens"][1]
  flops_per_token = metrics_lib.model_flops_per_token(model_config, seq_len)
  logging.info("MFU: %.3g model FLOPs/token (PaLM formula, attention not halved); peak %.3g "
               "FLOP/s per device (%s)", flops_per_token, peak_flops_per_device, peak_source)
  bar = _progress(total_steps, start_step, stage_name) if progress else None

  local = first
  pending, interval_start, interval_tokens, interval_excluded = [], time.perf_counter(), 0, 0.0
  global_tokens_per_step = train_dataset_cfg.batch_size * seq_len
  for step in range(start_step, total_steps):
    if local is None:
      local = next(train_iter)
    with partitioner.activation_context():
      state, step_metrics = step_fn(state, partitioning.host_local_to_global(local, partitioner))
    local = None
    pending.append(step_metrics)
    interval_tokens += global_tokens_per_step
    done = step + 1
    if done % log_period == 0 or done == total_steps:
      fetched = jax.device_get(pending)
      elapsed = time.perf_counter() - interval_start - interval_excluded
      scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
      scalars["learning_rate"] = float(fetched[-1]["learning_rate"])
      tps = interval_tokens / max(elapsed, 1e-9)
      scalars.update(step_time=elapsed / len(fetched), tokens_per_second=tps,
                     mfu=tps * flops_per_token / (peak_flops_per_device * jax.device_count()))
      writer.write(done, scalars)
      result.last_metrics = scalars
      if bar is not None:
        bar.set_postfix(loss=f"{scalars['loss']:.3f}", acc=f"{scalars['accuracy']:.3f}",
                        tok_s=f"{tps:,.0f}", mfu=f"{scalars['mfu']:.2f}")
      pending, interval_start, interval_tokens, interval_excluded = [], time.perf_counter(), 0, 0.0
    if bar is not None:
      bar.update(1)
    if done % checkpoint_cfg.save_period == 0 or done == total_steps:
      checkpoints.save(manager, done, state.params, state.opt_state,
                       train_iter.state(),
                       force=True)
    if eval_dataset_cfg is not None and eval_period and (done % eval_period == 0
                                                         or done == total_steps):
      eval_start = time.perf_counter()
      ev = evaluate(builder, state.params, eval_dataset_cfg, eval_steps, eval_cache)
      eval_writer.write(done, ev)
      result.last_eval = ev
      interval_excluded += time.perf_counter() - eval_start  # keep eval out of throughput
  manager.wait_until_finished()
  manager.close()
  writer.close()
  eval_writer.close()
  if bar is not None:
    bar.close()
  if jax.process_index() == 0:
    with open(os.path.join(model_dir, "config.operative.gin"), "w") as f:
      f.write(gin.operative_config_str())
  result.step = total_steps
  return result
