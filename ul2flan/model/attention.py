"""Attention: the prefix-LM / packed-segment mask and multi-/grouped-query attention with a KV cache.

The cache is passed as explicit arrays (not a mutable flax collection), so the same code path serves
training, prefill and one-token decode steps.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ul2flan import partitioning
from ul2flan.model.config import DecoderConfig
from ul2flan.model.layers import (Norm, dense_init, param_with_axes, rope_frequencies,
                                  rotary_embedding)

Array = jax.Array
NEG_INF = -1e10


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
    init = dense_init(in_axis=0, out_axis=(1, 2))
    out_init = dense_init(in_axis=(0, 1), out_axis=2)
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
    if cfg.attention_qkv_bias:
      q, k, v = (t + self._bias(name, heads)[None, :, None, :] for t, name, heads in (
          (q, "query_bias", cfg.num_heads), (k, "key_bias", cfg.num_kv_heads),
          (v, "value_bias", cfg.num_kv_heads)))
    if cfg.qk_norm:  # per head, over head_dim, before RoPE
      q = Norm(cfg, rmsnorm=True, name="query_norm")(q)
      k = Norm(cfg, rmsnorm=True, name="key_norm")(k)
    q = partitioning.constrain(q, ("batch", "heads", "length", "kv"))
    freq = rope_frequencies(cfg)
    q = rotary_embedding(q, positions, freq, heads_major=True)
    k = rotary_embedding(k, positions, freq, heads_major=True)

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
    if cfg.attention_out_bias:
      out = out + param_with_axes(self, "out_bias", nn.initializers.zeros, (cfg.d_model,),
                                  ("embed",)).astype(dt)
    return out, new_cache

  def _bias(self, name: str, heads: int) -> Array:
    axes = ("heads" if name == "query_bias" else "kv_heads", "kv")
    return param_with_axes(self, name, nn.initializers.zeros, (heads, self.config.head_dim),
                           axes).astype(self.config.compute_dtype)
