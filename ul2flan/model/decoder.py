"""A PaLM-style decoder-only Transformer (flax.linen) that is also a prefix LM.

Defaults follow PaLM: SwiGLU MLP, parallel attention+MLP block, multi-query attention, RoPE, no
biases, shared input/output embeddings. Options cover the Hugging Face families that
`ul2flan.hf` imports (sequential block, grouped-query attention, RMSNorm, untied embeddings,
q/k/v biases, q/k norms, RoPE scaling, GeGLU, Gemma 2's extra norms and soft-capping).

Inputs follow seqio's decoder feature names. `decoder_causal_attention` (seqio's PrefixLM feature)
marks the prefix: positions marked 1 attend to each other bidirectionally; everything else is
causal. `decoder_segment_ids` keep packed examples apart.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ul2flan import partitioning
from ul2flan.model.attention import (Attention, AttentionMasks, MaskInputs,  # noqa: F401
                                     attention_mask, build_masks, resolve_impl)
from ul2flan.model.config import REMAT_POLICIES, DecoderConfig
from ul2flan.model.layers import MLP, Norm, dense_init

Array = jax.Array


class DecoderLayer(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, positions, masks: AttentionMasks, deterministic, cache=None,
               cache_offsets=None, use_window=False):
    cfg = self.config
    h = Norm(cfg, name="pre_attention_norm")(x)
    attn, new_cache = Attention(cfg, name="attention")(h, positions, masks, deterministic, cache,
                                                      cache_offsets, use_window)
    if cfg.post_norms:
      attn = Norm(cfg, name="post_attention_norm")(attn)
    if cfg.parallel_block:
      y = x + attn + MLP(cfg, name="mlp")(h, deterministic)
    else:
      x = x + attn
      mlp = MLP(cfg, name="mlp")(Norm(cfg, name="pre_mlp_norm")(x), deterministic)
      if cfg.post_norms:
        mlp = Norm(cfg, name="post_mlp_norm")(mlp)
      y = x + mlp
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    y = partitioning.constrain(y, ("batch", "length", "embed"))
    return y, new_cache


class _ScannedLayer(nn.Module):
  """Adapter so nn.scan sees (carry, per-layer inputs) -> (carry, per-layer outputs)."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, per_layer, positions, masks, deterministic, cache_offsets):
    layer_cache, use_window = per_layer
    if use_window is None:  # every layer makes the same choice: a static bool
      use_window = self.config.window_layers[0]
    layer_cls = _maybe_remat(DecoderLayer, self.config)
    y, new_cache = layer_cls(self.config, name="layer")(x, positions, masks, deterministic,
                                                        layer_cache, cache_offsets, use_window)
    return y, new_cache


def _maybe_remat(cls, cfg: DecoderConfig):
  if cfg.remat_policy == "none":
    return cls
  # `deterministic` and a static `use_window` are Python bools; a scanned one is traced.
  static = (4,) if cfg.scan_layers and cfg.window_varies_by_layer else (4, 7)
  return nn.remat(cls, policy=REMAT_POLICIES[cfg.remat_policy], static_argnums=static)


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
          nn.with_logical_partitioning(dense_init(), ("embed", "vocab")),
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
               key_causal_attention: Array | None = None, hide_start: bool = False):
    """Forward pass.

    Training: pass the seqio decoder features; returns logits. Decoding: also pass `cache`
    (stacked over layers: {"key","value"}: [layers, batch, max_len, kv_heads, head_dim]),
    `cache_offsets` (per-row write offset of this chunk) and the key-side segment / position /
    prefix arrays over the whole cache; returns (logits, new_cache). `hide_start`: the model was
    pre-trained without a BOS, so each segment's start slot (position 0) is hidden from the other
    positions (`ul2flan.row_layout`).
    """
    cfg = self.config
    b, length = decoder_input_tokens.shape
    plain_causal = (cache is None and decoder_segment_ids is None and decoder_positions is None
                    and decoder_causal_attention is None)
    if decoder_segment_ids is None:
      decoder_segment_ids = jnp.ones((b, length), jnp.int32)
    if decoder_positions is None:
      decoder_positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    if cache is None:
      key_segment_ids, key_positions = decoder_segment_ids, decoder_positions
      key_causal_attention = decoder_causal_attention
    impl = resolve_impl(cfg, cached=cache is not None)
    mask_inputs = MaskInputs(decoder_positions, key_positions, decoder_segment_ids,
                             key_segment_ids, decoder_causal_attention, key_causal_attention)
    masks = build_masks(cfg, impl, mask_inputs, cached=cache is not None,
                        plain_causal=plain_causal, hide_start=hide_start)

    deterministic = not enable_dropout
    x = self.embedding.astype(cfg.compute_dtype)[decoder_input_tokens]
    if cfg.scale_embeddings:
      x = x * jnp.asarray(cfg.d_model ** 0.5, cfg.compute_dtype)
    x = partitioning.constrain(x, ("batch", "length", "embed"))
    x = self.embedding_dropout(x, deterministic=deterministic)

    new_cache = None
    if cfg.scan_layers:
      # Per-layer window choices that differ are a scanned input, not a Python branch.
      window_flags = jnp.array(cfg.window_layers) if cfg.window_varies_by_layer else None
      x, new_cache = self.layers(x, (cache, window_flags), decoder_positions, masks,
                                 deterministic, cache_offsets)
    else:
      caches = []
      for i, layer in enumerate(self.layers):
        layer_cache = None if cache is None else jax.tree.map(lambda c, i=i: c[i], cache)
        x, c = layer(x, decoder_positions, masks, deterministic, layer_cache, cache_offsets,
                     cfg.window_layers[i])
        caches.append(c)
      if cache is not None:
        new_cache = jax.tree.map(lambda *cs: jnp.stack(cs), *caches)

    x = self.final_norm(x)
    if cfg.tie_embeddings:
      # Shared embeddings are N(0, 1); scale so initial logits are O(1).
      logits = jnp.einsum("bld,vd->blv", x, self.embedding.astype(cfg.compute_dtype))
      if cfg.scale_tied_logits:
        logits = logits * (cfg.d_model ** -0.5)
    else:
      logits = x @ self.output_embedding.astype(cfg.compute_dtype)
    if cfg.final_logit_soft_cap is not None:
      cap = cfg.final_logit_soft_cap
      logits = cap * jnp.tanh(logits.astype(jnp.float32) / cap)
    logits = partitioning.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
    if cache is not None:
      return logits, new_cache
    return logits

  def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> dict[str, Array]:
    cfg = self.config
    shape = (cfg.num_layers, batch_size, max_length, cfg.num_kv_heads, cfg.head_dim)
    return {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}


def model_inputs(batch: Mapping[str, Array]) -> dict[str, Any]:
  """The subset of a seqio-converted batch the model consumes."""
  keys = ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions",
          "decoder_causal_attention")
  return {k: batch[k] for k in keys if k in batch}


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def abstract_params(config: DecoderConfig, partitioner: partitioning.Partitioner):
  """The decoder's parameters as sharded ShapeDtypeStructs: what restore and init target.

  The one place that traces the model's shapes; trainer, generator and converters all use it.
  """
  boxed = jax.eval_shape(lambda: Decoder(config).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
  shardings = partitioner.param_shardings(boxed)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      nn.unbox(boxed), shardings)
