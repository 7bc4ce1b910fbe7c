"""A PaLM-style decoder-only Transformer (flax.linen) that is also a prefix LM.

Defaults follow PaLM: SwiGLU MLP, parallel attention+MLP block, multi-query attention, RoPE, no
biases, shared input/output embeddings, z-loss. Options cover Llama-family models (sequential
block, grouped-query attention, RMSNorm, untied embeddings).

Inputs follow seqio's decoder feature names. `decoder_causal_attention` (seqio's PrefixLM feature)
marks the prefix: positions marked 1 attend to each other bidirectionally; everything else is
causal. `decoder_segment_ids` keep packed examples apart. Every parameter and key activation names
its logical axes; `ul2flan.partitioning` maps those names onto the device mesh.

Attention takes an optional KV cache (explicit arrays, not a mutable collection) so the same code
path serves training, prefill and one-token decode steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from ul2flan import partitioning

Array = jax.Array
NEG_INF = -1e10


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture hyperparameters. Gin files in gin_configs/models/ bind these."""
  vocab_size: int = 768
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 1  # 1: multi-query (PaLM); == num_heads: multi-head; else grouped-query.
  head_dim: int = 64
  mlp_dim: int = 1024
  parallel_block: bool = True  # PaLM: y = x + attn(norm(x)) + mlp(norm(x)).
  norm_type: str = "layernorm"  # "layernorm" (PaLM, no bias) or "rmsnorm" (Llama).
  tie_embeddings: bool = True
  rope_max_wavelength: float = 10_000.0
  dropout_rate: float = 0.0
  dtype: str = "float32"  # activations/compute; parameters are always float32.
  scan_layers: bool = False
  remat_policy: str = "none"  # "none", "full", "dots" or "dots_with_no_batch_dims".
  norm_epsilon: float = 1e-6

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.norm_type not in ("layernorm", "rmsnorm"):
      raise ValueError(f"norm_type must be 'layernorm' or 'rmsnorm', got {self.norm_type!r}")
    if self.remat_policy not in _REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {sorted(_REMAT_POLICIES)}, "
                       f"got {self.remat_policy!r}")
    if self.head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def num_params(self, include_embeddings: bool = True) -> int:
    """Analytic parameter count (used for MFU and checked against the built model in tests)."""
    attn = self.d_model * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * self.d_model * self.mlp_dim
    norms = self.d_model * (1 if self.parallel_block else 2)
    per_layer = attn + mlp + norms
    total = self.num_layers * per_layer + self.d_model  # + final norm
    if include_embeddings:
      total += self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
    return total


_REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _dense_init(in_axis=-2, out_axis=-1):
  # PaLM: weights ~ N(0, 1/fan_in). The axes matter for 3-D attention kernels.
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                          in_axis=in_axis, out_axis=out_axis)


def param_with_axes(module: nn.Module, name: str, init, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class Norm(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    scale = param_with_axes(self, "scale", nn.initializers.ones, (x.shape[-1],), ("norm",))
    x32 = x.astype(jnp.float32)
    if cfg.norm_type == "layernorm":
      x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + cfg.norm_epsilon)
    return (y * scale).astype(cfg.compute_dtype)


def rotary_embedding(x: Array, positions: Array, max_wavelength: float,
                     heads_major: bool = False) -> Array:
  """Applies RoPE. x: [batch, length, heads, head_dim] (or [batch, heads, length, head_dim]
  with `heads_major`); positions: [batch, length]."""
  half = x.shape[-1] // 2
  freq = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions[..., None].astype(jnp.float32) * freq  # [b, l, half]
  if heads_major:
    sin, cos = jnp.sin(angle)[:, None], jnp.cos(angle)[:, None]
  else:
    sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def attention_mask(query_positions: Array, key_positions: Array,
                   query_segments: Array, key_segments: Array,
                   query_prefix: Array | None, key_prefix: Array | None) -> Array:
  """Boolean [batch, 1, q_len, k_len] mask: causal, or bidirectional within the prefix.

  A key is visible when it is in the query's segment (segment 0 is padding and sees nothing) and
  either precedes the query or both lie in the prefix. Positions restart at 0 in each packed
  segment, so comparing positions within a segment is the causal order.
  """
  same_segment = (query_segments[:, :, None] == key_segments[:, None, :]) & (
      key_segments[:, None, :] > 0)
  causal = key_positions[:, None, :] <= query_positions[:, :, None]
  visible = causal
  if query_prefix is not None:
    visible = visible | (query_prefix[:, :, None].astype(bool) & key_prefix[:, None, :].astype(bool))
  return (same_segment & visible)[:, None, :, :]


class Attention(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask_bias: Array, deterministic: bool,
               cache: Mapping[str, Array] | None = None, cache_offsets: Array | None = None):
    """`mask_bias`: float32 [batch, 1, q, t], 0 where visible and NEG_INF elsewhere.

    A fully masked (padding) query averages over every key; that only changes padding outputs,
    which carry no loss and are never visible as keys.
    """
    cfg = self.config
    dt = cfg.compute_dtype
    init = _dense_init(in_axis=0, out_axis=(1, 2))
    out_init = _dense_init(in_axis=(0, 1), out_axis=2)
    wq = param_with_axes(self, "query", init, (cfg.d_model, cfg.num_heads, cfg.head_dim),
                         ("embed", "heads", "kv"))
    wk = param_with_axes(self, "key", init, (cfg.d_model, cfg.num_kv_heads, cfg.head_dim),
                         ("embed", "kv_heads", "kv"))
    wv = param_with_axes(self, "value", init, (cfg.d_model, cfg.num_kv_heads, cfg.head_dim),
                         ("embed", "kv_heads", "kv"))
    wo = param_with_axes(self, "out", out_init, (cfg.num_heads, cfg.head_dim, cfg.d_model),
                         ("heads", "kv", "embed"))
    # Heads-major layout ([batch, heads, length, head_dim]) throughout: on XLA:CPU it keeps the
    # big [.., q, t] tensors and their gradients in natural layouts (about 2x faster than
    # length-major with 5-D einsums); on accelerators it is the usual attention layout.
    q = jnp.einsum("bld,dhk->bhlk", x, wq.astype(dt))
    k = jnp.einsum("bld,dhk->bhlk", x, wk.astype(dt))
    v = jnp.einsum("bld,dhk->bhlk", x, wv.astype(dt))
    q = partitioning.constrain(q, ("batch", "heads", "length", "kv"))
    q = rotary_embedding(q, positions, cfg.rope_max_wavelength, heads_major=True)
    k = rotary_embedding(k, positions, cfg.rope_max_wavelength, heads_major=True)

    new_cache = None
    if cache is not None:  # the cache is [batch, max_len, kv_heads, head_dim]
      write = jax.vmap(lambda buf, new, off: jax.lax.dynamic_update_slice_in_dim(buf, new, off, 0))
      k_all = write(cache["key"], k.swapaxes(1, 2).astype(cache["key"].dtype), cache_offsets)
      v_all = write(cache["value"], v.swapaxes(1, 2).astype(cache["value"].dtype), cache_offsets)
      new_cache = {"key": k_all, "value": v_all}
      k, v = k_all.swapaxes(1, 2).astype(dt), v_all.swapaxes(1, 2).astype(dt)

    groups = cfg.num_heads // cfg.num_kv_heads
    b, _, lq, _ = q.shape
    lt = k.shape[2]
    # Query heads sharing a KV head are folded into the query axis: [b, kv, groups * q, hd].
    q = q.reshape(b, cfg.num_kv_heads, groups * lq, cfg.head_dim) * (cfg.head_dim ** -0.5)
    scores = jnp.einsum("bhqk,bhtk->bhqt", q, k).astype(jnp.float32)
    scores = scores.reshape(b, cfg.num_kv_heads, groups, lq, lt) + mask_bias[:, :, None]
    probs = jax.nn.softmax(scores, axis=-1).astype(dt).reshape(b, cfg.num_kv_heads,
                                                               groups * lq, lt)
    out = jnp.einsum("bhqt,bhtk->bhqk", probs, v).reshape(b, cfg.num_heads, lq, cfg.head_dim)
    out = nn.Dropout(cfg.dropout_rate)(out, deterministic=deterministic)
    out = jnp.einsum("bhlk,hkd->bld", out, wo.astype(dt))
    return out, new_cache


class MLP(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.config
    dt = cfg.compute_dtype
    init = _dense_init()
    w_gate = param_with_axes(self, "wi_gate", init, (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"))
    w_up = param_with_axes(self, "wi_up", init, (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"))
    w_down = param_with_axes(self, "wo", init, (cfg.mlp_dim, cfg.d_model), ("mlp", "embed"))
    # 2-D activations and one matmul for gate and up: XLA:CPU then keeps the backward pass in
    # natural layouts (about 1.8x faster than 3-D einsums); neutral on accelerators.
    b, l, d = x.shape
    x2 = x.reshape(b * l, d)
    if partitioning.mesh_axis_size("model") == 1:
      gate_up = x2 @ jnp.concatenate([w_gate, w_up], axis=1).astype(dt)
      gate, up = jnp.split(gate_up, 2, axis=-1)
    else:  # concatenating model-sharded weights would reshuffle them across devices
      gate, up = x2 @ w_gate.astype(dt), x2 @ w_up.astype(dt)
    h = jax.nn.silu(gate) * up
    h = partitioning.constrain(h, ("batch", "mlp"))
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return (h @ w_down.astype(dt)).reshape(b, l, d)


class DecoderLayer(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, positions, mask, deterministic, cache=None, cache_offsets=None):
    cfg = self.config
    h = Norm(cfg, name="pre_attention_norm")(x)
    attn, new_cache = Attention(cfg, name="attention")(h, positions, mask, deterministic, cache,
                                                      cache_offsets)
    if cfg.parallel_block:
      y = x + attn + MLP(cfg, name="mlp")(h, deterministic)
    else:
      x = x + attn
      y = x + MLP(cfg, name="mlp")(Norm(cfg, name="pre_mlp_norm")(x), deterministic)
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    y = partitioning.constrain(y, ("batch", "length", "embed"))
    return y, new_cache


class _ScannedLayer(nn.Module):
  """Adapter so nn.scan sees (carry, per-layer inputs) -> (carry, per-layer outputs)."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, layer_cache, positions, mask, deterministic, cache_offsets):
    layer_cls = _maybe_remat(DecoderLayer, self.config)
    y, new_cache = layer_cls(self.config, name="layer")(x, positions, mask, deterministic,
                                                        layer_cache, cache_offsets)
    return y, new_cache


def _maybe_remat(cls, cfg: DecoderConfig):
  if cfg.remat_policy == "none":
    return cls
  return nn.remat(cls, policy=_REMAT_POLICIES[cfg.remat_policy], static_argnums=(4,))


class Decoder(nn.Module):
  """Decoder-only LM. Returns float32 logits [batch, length, vocab]."""
  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
        (cfg.vocab_size, cfg.d_model), jnp.float32)
    if not cfg.tie_embeddings:
      self.output_embedding = self.param(
          "output_embedding",
          nn.with_logical_partitioning(_dense_init(), ("embed", "vocab")),
          (cfg.d_model, cfg.vocab_size), jnp.float32)
    if cfg.scan_layers:
      self.layers = nn.scan(
          _ScannedLayer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
          length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, name="layers")
    else:
      layer_cls = _maybe_remat(DecoderLayer, cfg)
      self.layers = [layer_cls(cfg, name=f"layer_{i}") for i in range(cfg.num_layers)]
    self.final_norm = Norm(cfg)
    self.embedding_dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, decoder_input_tokens: Array, decoder_segment_ids: Array | None = None,
               decoder_positions: Array | None = None,
               decoder_causal_attention: Array | None = None, *, enable_dropout: bool = False,
               cache: Mapping[str, Array] | None = None, cache_offsets: Array | None = None,
               key_segment_ids: Array | None = None, key_positions: Array | None = None,
               key_causal_attention: Array | None = None):
    """Forward pass.

    Training: pass the seqio decoder features; returns logits. Decoding: also pass `cache`
    (stacked over layers: {"key","value"}: [layers, batch, max_len, kv_heads, head_dim]),
    `cache_offsets` (per-row write offset of this chunk) and the key-side segment / position /
    prefix arrays over the whole cache; returns (logits, new_cache).
    """
    cfg = self.config
    b, length = decoder_input_tokens.shape
    if decoder_segment_ids is None:
      decoder_segment_ids = jnp.ones((b, length), jnp.int32)
    if decoder_positions is None:
      decoder_positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    if cache is None:
      key_segment_ids, key_positions = decoder_segment_ids, decoder_positions
      key_causal_attention = decoder_causal_attention
    mask = attention_mask(decoder_positions, key_positions, decoder_segment_ids, key_segment_ids,
                          decoder_causal_attention, key_causal_attention)
    mask = jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)  # additive bias, built once

    deterministic = not enable_dropout
    x = self.embedding.astype(cfg.compute_dtype)[decoder_input_tokens]
    x = partitioning.constrain(x, ("batch", "length", "embed"))
    x = self.embedding_dropout(x, deterministic=deterministic)

    new_cache = None
    if cfg.scan_layers:
      x, new_cache = self.layers(x, cache, decoder_positions, mask, deterministic, cache_offsets)
    else:
      caches = []
      for i, layer in enumerate(self.layers):
        layer_cache = None if cache is None else jax.tree.map(lambda c, i=i: c[i], cache)
        x, c = layer(x, decoder_positions, mask, deterministic, layer_cache, cache_offsets)
        caches.append(c)
      if cache is not None:
        new_cache = jax.tree.map(lambda *cs: jnp.stack(cs), *caches)

    x = self.final_norm(x)
    if cfg.tie_embeddings:
      # Shared embeddings are N(0, 1); scale so initial logits are O(1).
      logits = jnp.einsum("bld,vd->blv", x, self.embedding.astype(cfg.compute_dtype))
      logits = logits * (cfg.d_model ** -0.5)
    else:
      logits = x @ self.output_embedding.astype(cfg.compute_dtype)
    logits = partitioning.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
    if cache is not None:
      return logits, new_cache
    return logits

  def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> dict[str, Array]:
    cfg = self.config
    shape = (cfg.num_layers, batch_size, max_length, cfg.num_kv_heads, cfg.head_dim)
    return {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}


def cross_entropy_with_z_loss(logits: Array, targets: Array, weights: Array,
                              z_loss: float) -> tuple[Array, Array, Array]:
  """Summed (not averaged) weighted cross-entropy, z-loss and correct-token count.

  Sums let gradient accumulation and cross-device reduction divide once by the total weight,
  so k microbatches equal one big batch exactly.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  weights = weights.astype(jnp.float32)
  z = z_loss * jnp.square(log_z)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(z * weights), jnp.sum(correct * weights)


def model_inputs(batch: Mapping[str, Array]) -> dict[str, Any]:
  """The subset of a seqio-converted batch the model consumes."""
  keys = ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions",
          "decoder_causal_attention")
  return {k: batch[k] for k in keys if k in batch}


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))

