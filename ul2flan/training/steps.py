"""The train state pytree and the pure step functions, jitted once with explicit shardings.

`StepBuilder` owns one configuration (model, partitioner, optimizer): it derives the sharding of
every parameter and optimizer leaf, initialises state, and jits `train_step` (state donated) and
`eval_step`. Nothing here touches files, data pipelines or metrics writers.

Per-group metrics (UL2R: one group per denoiser): given `segment_groups` ({name: leading ids}),
each packed segment belongs to the group whose ids begin it (its mode token), found inside the
step from the batch's own tokens and positions, so the batches stay as the converter made them.
Both steps then also return, per group, the summed nll and correct tokens and the loss weight
(`nll_sum/<name>`, `correct_sum/<name>`, `loss_weight/<name>`); the loss and the gradients do
not depend on them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from ul2flan import partitioning
from ul2flan.model import decoder as decoder_lib
from ul2flan.model.config import DecoderConfig
from ul2flan.model.losses import cross_entropy_with_z_loss


GROUP_SUMS = ("nll_sum", "correct_sum", "loss_weight")  # per-group metric names, before "/<group>"


def segment_group_ids(targets: jax.Array, positions: jax.Array,
                      leading_ids: Sequence[Sequence[int]]) -> jax.Array:
  """[batch, length] int32: 1 + the index of the group whose `leading_ids` begin each token's
  packed segment, 0 where none does (padding included).

  A segment starts where its position is 0; the row's text begins at the targets there (the
  start slot predicts the first input token), so a UL2 segment's mode-token ids are
  `targets[start:start + len(ids)]`. Longer ids are matched first, so that a group whose ids
  extend another's is not taken for it.
  """
  length = targets.shape[1]
  starts = jnp.arange(length, dtype=positions.dtype)[None, :] - positions
  groups = jnp.zeros(targets.shape, jnp.int32)
  for g in sorted(range(len(leading_ids)), key=lambda g: -len(leading_ids[g])):
    match = jnp.ones(targets.shape, bool)
    for offset, token in enumerate(leading_ids[g]):
      at = jnp.clip(starts + offset, 0, length - 1)
      match &= jnp.take_along_axis(targets, at, axis=1) == token
    groups = jnp.where((groups == 0) & match, g + 1, groups)
  return groups


def _positions(batch) -> jax.Array:
  """Each token's position in its packed segment; unpacked rows are one segment each, from 0."""
  positions = batch.get("decoder_positions")
  if positions is None:
    targets = batch["decoder_target_tokens"]
    positions = jnp.broadcast_to(jnp.arange(targets.shape[1]), targets.shape)
  return positions


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What the jitted steps compute besides the model and the optimizer.

  Attributes:
    seed: initialisation and dropout.
    z_loss: weight of the z-loss (log Z squared) added to the loss.
    num_microbatches: the batch is split into this many microbatches, gradients accumulated.
    skip_nonfinite: a step whose loss or gradient norm is not finite keeps the previous params
      and optimizer state (the update is dropped); otherwise it is applied and the caller stops.
    hide_start: a model pre-trained without a BOS (`row_layout.RowLayout.hidden_start`): each
      segment's start slot is hidden from attention and nothing is predicted from it.
    segment_groups: {group name: the ids that begin its segments}: per-group loss and accuracy
      (module doc).
  """
  seed: int = 0
  z_loss: float = 1e-4
  num_microbatches: int = 1
  skip_nonfinite: bool = False
  hide_start: bool = False
  segment_groups: Mapping[str, Sequence[int]] | None = None


class StepBuilder:
  """Builds the model, shardings and the jitted train/eval steps for one configuration."""

  def __init__(self, model_config: DecoderConfig, partitioner: partitioning.Partitioner,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               settings: StepSettings = StepSettings()):
    self.config = model_config
    self.model = decoder_lib.Decoder(model_config)
    self.partitioner = partitioner
    self.tx = tx
    self.schedule = schedule
    self.seed = settings.seed
    self.z_loss = settings.z_loss
    self.num_microbatches = settings.num_microbatches
    self.skip_nonfinite = settings.skip_nonfinite
    self.hide_start = settings.hide_start
    groups = settings.segment_groups or {}
    self.group_names = tuple(groups)
    self.group_leading_ids = tuple(tuple(int(i) for i in groups[n]) for n in self.group_names)
    self._all_finite = None

    self.abstract_params = decoder_lib.abstract_params(model_config, partitioner)
    self.param_shardings = jax.tree.map(lambda x: x.sharding, self.abstract_params)
    abstract_opt = jax.eval_shape(tx.init, self.abstract_params)
    self.opt_shardings = optax.tree_map_params(
        tx, lambda leaf, p: partitioning.derived_sharding(leaf.shape, p.shape, p.sharding),
        abstract_opt, self.abstract_params,
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
                                            jnp.zeros((1, 8), jnp.int32)))["params"]
    with self.partitioner.activation_context():
      return jax.jit(init, out_shardings=self.param_shardings)()

  def init_opt_state(self, params):
    with self.partitioner.activation_context():
      return jax.jit(self.tx.init, out_shardings=self.opt_shardings)(params)

  def make_state(self, step: int, params, opt_state) -> TrainState:
    step = jax.device_put(jnp.asarray(step, jnp.int32), self.partitioner.replicated())
    return TrainState(step=step, params=params, opt_state=opt_state)

  # ---- steps ----------------------------------------------------------------------------------
  def _loss_weights(self, batch):
    weights = batch["decoder_loss_weights"]
    if not self.hide_start:
      return weights
    return jnp.where(_positions(batch) == 0, jnp.zeros_like(weights), weights)

  def _loss_sums(self, params, batch, rng, enable_dropout: bool) -> dict:
    """Summed nll, z-loss and correct tokens; per group (`group_*`, shape [groups]) too."""
    logits = self.model.apply({"params": params}, **decoder_lib.model_inputs(batch),
                              enable_dropout=enable_dropout, hide_start=self.hide_start,
                              rngs={"dropout": rng})
    targets, weights = batch["decoder_target_tokens"], self._loss_weights(batch)
    nll, z, correct = cross_entropy_with_z_loss(logits, targets, weights, self.z_loss)
    sums = {"nll": nll, "z": z, "correct": correct}
    if self.group_names:
      group_weights = self._group_weights(batch, weights)
      # Only the weights vary over the groups: logits-derived terms are computed once.
      group_nll, _, group_correct = jax.vmap(
          lambda w: cross_entropy_with_z_loss(logits, targets, w, 0.0))(group_weights)
      sums.update(group_nll=group_nll, group_correct=group_correct,
                  group_weight=jnp.sum(group_weights, axis=(1, 2)))
    return sums

  def _group_weights(self, batch, weights) -> jax.Array:
    """[groups, batch, length] float32: the loss weights of each group's tokens."""
    ids = segment_group_ids(batch["decoder_target_tokens"], _positions(batch),
                            self.group_leading_ids)
    one_hot = ids[None] == jnp.arange(1, len(self.group_names) + 1)[:, None, None]
    return one_hot.astype(jnp.float32) * weights.astype(jnp.float32)[None]

  def _zero_sums(self) -> dict:
    groups = len(self.group_names)
    zeros = {"nll": 0.0, "z": 0.0, "correct": 0.0}
    if groups:
      zeros.update(group_nll=jnp.zeros(groups), group_correct=jnp.zeros(groups),
                   group_weight=jnp.zeros(groups))
    return zeros

  def _group_metrics(self, sums: dict) -> dict:
    """Per-group sums as scalars named `<sum>/<group>` (`GROUP_SUMS`)."""
    out = {}
    for g, name in enumerate(self.group_names):
      for key, value in zip(GROUP_SUMS, ("group_nll", "group_correct", "group_weight")):
        out[f"{key}/{name}"] = sums[value][g]
    return out

  def _gradients(self, params, batch, rng, total_weight):
    """Summed gradients and the `_loss_sums`, over `num_microbatches` microbatches."""
    enable_dropout = self.config.dropout_rate > 0

    def loss_fn(params, mb, mb_rng):
      sums = self._loss_sums(params, mb, mb_rng, enable_dropout)
      return (sums["nll"] + sums["z"]) / total_weight, sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    k = self.num_microbatches
    if k == 1:
      (_, sums), grads = grad_fn(params, batch, rng)
      return grads, sums
    batch_axes = self.partitioner.spec(("batch",))[0]

    def split(x):  # microbatch i takes rows i, i+k, ...: every device feeds every microbatch
      x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
      return jax.lax.with_sharding_constraint(x, P(None, batch_axes))

    def body(carry, inputs):
      i, mb = inputs
      (_, sums), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
      acc_g, acc_s = carry
      return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_s, sums)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, sums), _ = jax.lax.scan(body, (zeros, self._zero_sums()),
                                    (jnp.arange(k), jax.tree.map(split, batch)))
    return grads, sums

  def train_step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(jax.random.key(self.seed), state.step)
    total_weight = jnp.maximum(jnp.sum(self._loss_weights(batch).astype(jnp.float32)), 1.0)
    grads, sums = self._gradients(state.params, batch, rng, total_weight)
    nll, z, correct = sums["nll"], sums["z"], sums["correct"]
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    loss, grad_norm = nll / total_weight, optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if self.skip_nonfinite:
      keep_old = lambda new, old: jnp.where(finite, new, old)
      params = jax.tree.map(keep_old, params, state.params)
      opt_state = jax.tree.map(keep_old, opt_state, state.opt_state)
    metrics = {
        "loss": loss, "z_loss": z / total_weight,
        "accuracy": correct / total_weight, "learning_rate": self.schedule(state.step),
        "grad_norm": grad_norm, "loss_weight": total_weight,
        "nonfinite_steps": 1.0 - finite.astype(jnp.float32),
        **self._group_metrics(sums),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def all_finite(self, state: TrainState) -> bool:
    """Whether every param and optimizer leaf is finite (checked before each save)."""
    if self._all_finite is None:
      def check(params, opt_state):
        leaves = [x for x in jax.tree.leaves((params, opt_state))
                  if jnp.issubdtype(x.dtype, jnp.inexact)]
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
      self._all_finite = jax.jit(check, out_shardings=self.partitioner.replicated())
    with self.partitioner.activation_context():
      return bool(self._all_finite(state.params, state.opt_state))

  def eval_step(self, params, batch) -> dict:
    sums = self._loss_sums(params, batch, jax.random.key(0), False)
    return {"nll": sums["nll"], "z": sums["z"], "correct": sums["correct"],
            "weight": jnp.sum(self._loss_weights(batch).astype(jnp.float32)),
            **self._group_metrics(sums)}

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


def batch_spec(batch: dict) -> dict:
  """{feature: shape}: what a jitted step is specialised on."""
  return {k: v.shape for k, v in batch.items()}
