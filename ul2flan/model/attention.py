"""Attention: the prefix-LM / packed-segment / sliding-window mask, and multi-/grouped-query
attention with a KV cache, computed by one of two cores.

* "xla": heads-major einsums with an additive mask bias, softmax in float32 (the fast path on
  XLA:CPU; also the fallback for anything the fused kernels cannot express).
* "cudnn" / "jax_nn": `jax.nn.dot_product_attention` (cuDNN's flash kernel, or its XLA
  implementation given the same arguments). The mask is expressed in the form the fused kernel
  takes: `is_causal` when queries and keys are the same sequence and there is no prefix, a
  `local_window_size` for a sliding window where the layer's choice is static, and a boolean
  [batch, 1, q, k] mask (cuDNN turns it into a bias) only where nothing else fits: packed segment
  ids, the bidirectional prefix, a KV cache, or a per-layer window under `scan_layers`.

The cache is passed as explicit arrays (not a mutable flax collection), so the same code path serves
training, prefill and one-token decode steps.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ul2flan import partitioning
from ul2flan.model.config import DecoderConfig
from ul2flan.model.layers import (Norm, dense_init, param_with_axes, rope_frequencies,
                                  rotary_embedding)

Array = jax.Array
NEG_INF = -1e10
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)  # what cuDNN's flash kernel takes
_SCORE_ALGORITHMS = {jnp.dtype(jnp.bfloat16): jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
                     jnp.dtype(jnp.float16): jax.lax.DotAlgorithmPreset.F16_F16_F32}


class MaskInputs(NamedTuple):
  """What one forward pass's masks are built from: positions and segment ids of the queries and
  the keys (the same arrays without a cache), and the bidirectional prefix (None: causal)."""
  query_positions: Array
  key_positions: Array
  query_segments: Array
  key_segments: Array
  query_prefix: Array | None = None
  key_prefix: Array | None = None


def attention_mask(inputs: MaskInputs, window: int | None = None,
                   hide_start: bool = False) -> Array:
  """Boolean [batch, 1, q_len, k_len] mask: causal, or bidirectional within the prefix.

  A key is visible when it is in the query's segment (segment 0 is padding and sees nothing) and
  either precedes the query or both lie in the prefix. Positions restart at 0 in each packed
  segment, so comparing positions within a segment is the causal order. With a `window`, a key
  must also be less than `window` positions away (before the query, or after it inside a
  bidirectional prefix). With `hide_start` (a model pre-trained without a BOS,
  `ul2flan.row_layout`), a segment's start slot (position 0) is visible to itself only.
  """
  (query_positions, key_positions, query_segments, key_segments, query_prefix,
   key_prefix) = inputs
  same_segment = (query_segments[:, :, None] == key_segments[:, None, :]) & (
      key_segments[:, None, :] > 0)
  causal = key_positions[:, None, :] <= query_positions[:, :, None]
  visible = causal
  if query_prefix is not None:
    both_in_prefix = query_prefix[:, :, None].astype(bool) & key_prefix[:, None, :].astype(bool)
    visible = visible | both_in_prefix
  if window is not None:
    distance = query_positions[:, :, None] - key_positions[:, None, :]
    visible = visible & (distance < window) & (-distance < window)
  if hide_start:
    visible = visible & ((key_positions[:, None, :] > 0) | (query_positions[:, :, None] == 0))
  return (same_segment & visible)[:, None, :, :]


def cudnn_head_dim_limit() -> int:
  """The largest head_dim cuDNN's flash kernel takes on this machine's first device (128 on
  Ampere, 256 from Hopper); 0 where it does not run (no NVIDIA GPU of compute capability 8+)."""
  if jax.default_backend() != "gpu":
    return 0
  try:
    major = int(str(jax.devices()[0].compute_capability).split(".")[0])
  except (AttributeError, ValueError):  # a ROCm GPU has no CUDA compute capability
    return 0
  return 0 if major < 8 else 256 if major >= 9 else 128


def resolve_impl(cfg: DecoderConfig, cached: bool) -> str:
  """The attention core one forward pass uses (see `config.ATTENTION_IMPLS`)."""
  if cfg.attn_logits_soft_cap is not None:
    # Neither fused implementation can apply tanh to the logits before the softmax.
    return "xla"
  if cfg.attention_impl == "auto":
    fits = (cfg.compute_dtype in _CUDNN_DTYPES and cfg.head_dim % 8 == 0
            and cfg.head_dim <= cudnn_head_dim_limit())
    # A decode step (one query row against the cache) is memory-bound: no gain from cuDNN.
    return "cudnn" if fits and not cached else "xla"
  if cfg.attention_impl == "cudnn":
    limit = cudnn_head_dim_limit()
    if not limit or cfg.compute_dtype not in _CUDNN_DTYPES or cfg.head_dim > limit:
      raise ValueError(
          f"attention_impl='cudnn' needs an NVIDIA GPU (compute capability 8+), dtype bfloat16 "
          f"or float16 and head_dim <= {limit or 128}; this is {jax.devices()[0].device_kind} "
          f"with {cfg.compute_dtype.name} and head_dim {cfg.head_dim}. Use attention_impl='auto' "
          f"(cuDNN where it applies, XLA elsewhere).")
  return cfg.attention_impl


@flax.struct.dataclass
class AttentionMasks:
  """What every layer's attention core needs to know about visibility, built once per forward.

  `global_mask` / `local_mask`: the mask without / with the sliding window; additive float32 bias
  for the "xla" core, boolean for the fused ones; None where a layer needs none (the fused core
  with only a causal flag, or no layer of that kind). `causal`: queries and keys are one sequence
  with no prefix, so the fused core may pass `is_causal` (seqio positions count 0, 1, ... within
  each segment, so position order is index order). `flag_window`: a sliding window the fused core
  passes as `local_window_size` on the layers whose (static) choice is to slide.
  """
  global_mask: Array | None
  local_mask: Array | None
  impl: str = flax.struct.field(pytree_node=False)
  causal: bool = flax.struct.field(pytree_node=False)
  flag_window: int | None = flax.struct.field(pytree_node=False)

  def for_layer(self, use_window: bool | Array) -> tuple[Array | None, int | None]:
    """(mask, local_window) for a layer; `use_window` is a bool, or a traced one under scan."""
    if isinstance(use_window, bool):
      if not use_window:
        return self.global_mask, None
      if self.flag_window is not None:
        return self.global_mask, self.flag_window
      return self.local_mask, None
    return jnp.where(use_window, self.local_mask, self.global_mask), None


def build_masks(cfg: DecoderConfig, impl: str, inputs: MaskInputs, *, cached: bool,
                plain_causal: bool, hide_start: bool = False) -> AttentionMasks:
  """The masks of one forward pass. `plain_causal`: no segments, positions or prefix were given
  and there is no cache, so the fused core needs only `is_causal`. `hide_start`: see
  `attention_mask` (it needs a mask array, so the fused core no longer gets by with a flag)."""
  plain_causal = plain_causal and not hide_start
  flags = cfg.window_layers
  any_local, any_global = any(flags), not all(flags)
  traced_flags = cfg.scan_layers and cfg.window_varies_by_layer
  fused = impl != "xla"
  causal = fused and not cached and inputs.query_prefix is None
  flag_window = cfg.sliding_window if (causal and any_local and not traced_flags) else None

  def build(window):
    mask = attention_mask(inputs, window, hide_start)
    return mask if fused else jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)

  need_global = any_global or flag_window is not None or traced_flags
  skip_global = fused and plain_causal and not traced_flags
  global_mask = build(None) if need_global and not skip_global else None
  local_mask = build(cfg.sliding_window) if any_local and flag_window is None else None
  return AttentionMasks(global_mask, local_mask, impl=impl, causal=causal,
                        flag_window=flag_window)


def _einsum_core(q: Array, k: Array, v: Array, bias: Array, cfg: DecoderConfig,
                 scale: float) -> Array:
  """Heads-major attention. q: [b, heads, lq, hd]; k, v: [b, kv_heads, lt, hd]; bias [b, 1, lq, lt].

  Heads-major keeps the big [.., q, t] tensors and their gradients in natural layouts on XLA:CPU
  (about 2x faster than length-major with 5-D einsums). Query heads sharing a KV head are folded
  into the query axis: [b, kv, groups * q, hd]. A fully masked (padding) query averages over every
  key; that only changes padding outputs, which carry no loss and are never visible as keys.
  """
  dt = q.dtype
  groups = cfg.num_heads // cfg.num_kv_heads
  b, _, lq, _ = q.shape
  lt = k.shape[2]
  q = q.reshape(b, cfg.num_kv_heads, groups * lq, cfg.head_dim) * scale
  # float32 scores from 16-bit q, k; the algorithm preset keeps the backward matmuls 16-bit too
  # (cuDNN's numerics; a plain float32 cotangent would make them float32, TF32 at best, jax#24047).
  scores = jnp.einsum("bhqk,bhtk->bhqt", q, k, preferred_element_type=jnp.float32,
                      precision=_SCORE_ALGORITHMS.get(dt))
  if cfg.attn_logits_soft_cap is not None:
    cap = cfg.attn_logits_soft_cap
    scores = cap * jnp.tanh(scores / cap)
  scores = scores.reshape(b, cfg.num_kv_heads, groups, lq, lt) + bias[:, :, None]
  probs = jax.nn.softmax(scores, axis=-1).astype(dt).reshape(b, cfg.num_kv_heads,
                                                             groups * lq, lt)
  out = jnp.einsum("bhqt,bhtk->bhqk", probs, v)
  return out.reshape(b, cfg.num_heads, lq, cfg.head_dim)


def _fused_core(q: Array, k: Array, v: Array, mask: Array | None, *, scale: float, causal: bool,
                local_window: int | None, impl: str) -> Array:
  """q: [b, lq, heads, hd]; k, v: [b, lt, kv_heads, hd] (jax.nn's layout, GQA native)."""
  return jax.nn.dot_product_attention(
      q, k, v, mask=mask, scale=scale, is_causal=causal,
      # (left, right): a key at most window - 1 positions before the query, none after.
      local_window_size=None if local_window is None else (local_window - 1, 0),
      implementation="cudnn" if impl == "cudnn" else "xla")


class Attention(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, masks: AttentionMasks, deterministic: bool,
               cache: Mapping[str, Array] | None = None, cache_offsets: Array | None = None,
               use_window: bool | Array = False):
    """`masks` from `build_masks`; `use_window`: this layer slides (a traced bool under scan)."""
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
    heads_major = masks.impl == "xla"
    proj = "bld,dhk->bhlk" if heads_major else "bld,dhk->blhk"
    q = jnp.einsum(proj, x, wq.astype(dt))
    k = jnp.einsum(proj, x, wk.astype(dt))
    v = jnp.einsum(proj, x, wv.astype(dt))
    if cfg.attention_qkv_bias:
      q, k, v = (t + self._bias(name, heads, heads_major) for t, name, heads in (
          (q, "query_bias", cfg.num_heads), (k, "key_bias", cfg.num_kv_heads),
          (v, "value_bias", cfg.num_kv_heads)))
    if cfg.qk_norm:  # per head, over head_dim, before RoPE
      q = Norm(cfg, rmsnorm=True, name="query_norm")(q)
      k = Norm(cfg, rmsnorm=True, name="key_norm")(k)
    q = partitioning.constrain(q, ("batch", "heads", "length", "kv") if heads_major
                               else ("batch", "length", "heads", "kv"))
    freq = rope_frequencies(cfg)
    q = rotary_embedding(q, positions, freq, heads_major=heads_major)
    k = rotary_embedding(k, positions, freq, heads_major=heads_major)

    new_cache = None
    if cache is not None:  # the cache is [batch, max_len, kv_heads, head_dim]
      write = jax.vmap(lambda buf, new, off: jax.lax.dynamic_update_slice_in_dim(buf, new, off, 0))
      to_cache = (lambda t: t.swapaxes(1, 2)) if heads_major else (lambda t: t)
      k_all = write(cache["key"], to_cache(k).astype(cache["key"].dtype), cache_offsets)
      v_all = write(cache["value"], to_cache(v).astype(cache["value"].dtype), cache_offsets)
      new_cache = {"key": k_all, "value": v_all}
      k, v = to_cache(k_all).astype(dt), to_cache(v_all).astype(dt)

    scale = (cfg.head_dim if cfg.query_scale is None else cfg.query_scale) ** -0.5
    mask, local_window = masks.for_layer(use_window)
    if heads_major:
      out = _einsum_core(q, k, v, mask, cfg, scale)
      out_spec = "bhlk,hkd->bld"
    else:
      if cfg.attn_logits_soft_cap is not None:
        raise ValueError("the fused attention cores cannot soft-cap logits: use resolve_impl")
      out = _fused_core(q, k, v, mask, scale=scale, causal=masks.causal,
                        local_window=local_window, impl=masks.impl)
      out_spec = "blhk,hkd->bld"
    out = nn.Dropout(cfg.dropout_rate)(out, deterministic=deterministic)
    out = jnp.einsum(out_spec, out, wo.astype(dt))
    if cfg.attention_out_bias:
      out = out + param_with_axes(self, "out_bias", nn.initializers.zeros, (cfg.d_model,),
                                  ("embed",)).astype(dt)
    return out, new_cache

  def _bias(self, name: str, heads: int, heads_major: bool) -> Array:
    """A q/k/v bias [heads, head_dim], shaped to add to the projection's layout."""
    axes = ("heads" if name == "query_bias" else "kv_heads", "kv")
    bias = param_with_axes(self, name, nn.initializers.zeros, (heads, self.config.head_dim),
                           axes).astype(self.config.compute_dtype)
    return bias[None, :, None, :] if heads_major else bias[None, None, :, :]

