"""Attention cores against a float64 NumPy reference, and the fused path against the einsum path.

The "jax_nn" core is `jax.nn.dot_product_attention` (its XLA implementation) given exactly the
arguments the cuDNN kernel gets on a GPU (causal flag, boolean mask, local window), so these CPU
tests check how the prefix-LM mask, packed segments, the KV cache and sliding windows are put into
the fused form. The cuDNN kernel itself only runs on an NVIDIA GPU (benchmarks/train_mfu.py).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ul2flan import row_layout
from ul2flan.inference import decoding
from ul2flan.model import attention
from ul2flan.model.decoder import Decoder
from ul2flan.vocabularies import EOS_ID
from helpers import micro_config

IMPLS = ["xla", "jax_nn"]


# ---- the independent reference ------------------------------------------------------------------
def reference_mask(seg, pos, prefix, window=None):
  """[b, q, k]: same real segment AND (key not after the query OR both in the prefix) AND, with a
  window, |query position - key position| < window."""
  b, n = seg.shape
  out = np.zeros((b, n, n), bool)
  for r in range(b):
    for q in range(n):
      for k in range(n):
        if seg[r, q] != seg[r, k] or seg[r, k] == 0:
          continue
        if window is not None and abs(int(pos[r, q]) - int(pos[r, k])) >= window:
          continue
        out[r, q, k] = pos[r, k] <= pos[r, q] or bool(prefix[r, q] and prefix[r, k])
  return out


def rope_np(x, pos, max_wavelength=10_000.0):
  """RoPE as a complex rotation of (first half + i * second half); x: [b, l, h, d]."""
  half = x.shape[-1] // 2
  freq = max_wavelength ** (-np.arange(half) / half)
  z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * pos[:, :, None, None] * freq)
  return np.concatenate([z.real, z.imag], -1)


def reference_attention(x, params, cfg, seg, pos, prefix, use_window):
  x = x.astype(np.float64)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  q = rope_np(np.einsum("bld,dhk->blhk", x, p["query"]), pos)
  k = rope_np(np.einsum("bld,dhk->blhk", x, p["key"]), pos)
  v = np.einsum("bld,dhk->blhk", x, p["value"])
  groups = cfg.num_heads // cfg.num_kv_heads
  k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)  # head h uses kv h // groups
  scale = (cfg.query_scale or cfg.head_dim) ** -0.5
  s = np.einsum("bqhk,bthk->bhqt", q * scale, k)
  if cfg.attn_logits_soft_cap:
    s = cfg.attn_logits_soft_cap * np.tanh(s / cfg.attn_logits_soft_cap)
  mask = reference_mask(seg, pos, prefix, cfg.sliding_window if use_window else None)
  s = np.where(mask[:, None], s, -np.inf)
  with np.errstate(invalid="ignore"):  # padding rows: all masked (NaN), compared nowhere
    w = np.exp(s - s.max(-1, keepdims=True))
    w = np.nan_to_num(w / w.sum(-1, keepdims=True))
  out = np.einsum("bhqt,bthk->bqhk", w, v)
  return np.einsum("bqhk,hkd->bqd", out, p["out"])


def packed_batch(length=12):
  """Row 0: three packed prefix-LM examples then padding; row 1: one long example."""
  seg = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 0],
                  [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]])
  pos = np.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 0],
                  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0]])
  prefix = np.array([[1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0],
                     [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
  return seg[:, :length], pos[:, :length], prefix[:, :length]


def _layer_output(cfg, impl, x, seg, pos, prefix, use_window):
  cfg = dataclasses.replace(cfg, attention_impl=impl)
  impl = attention.resolve_impl(cfg, cached=False)  # the soft-cap falls back to "xla"
  layer = attention.Attention(cfg)
  j = lambda a: None if a is None else jnp.asarray(a)
  masks = attention.build_masks(cfg, impl, attention.MaskInputs(
      query_positions=j(pos), key_positions=j(pos), query_segments=j(seg), key_segments=j(seg),
      query_prefix=j(prefix), key_prefix=j(prefix)), cached=False, plain_causal=False)
  params = nn.unbox(layer.init(jax.random.key(1), j(x), j(pos), masks, True,
                               use_window=use_window))["params"]
  out, _ = layer.apply({"params": params}, j(x), j(pos), masks, True, use_window=use_window)
  return np.asarray(out), params


ATTENTION_OPTIONS = {
    "plain": {},
    "window": dict(sliding_window=3),
    "soft_cap_and_query_scale": dict(attn_logits_soft_cap=0.5, query_scale=4.0),
    "mqa_window_cap": dict(num_kv_heads=1, sliding_window=2, attn_logits_soft_cap=1.0),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("prefix_lm", [False, True], ids=["causal", "prefix_lm"])
@pytest.mark.parametrize("options", sorted(ATTENTION_OPTIONS))
def test_attention_layer_matches_numpy(options, prefix_lm, impl):
  cfg = micro_config(**ATTENTION_OPTIONS[options])
  seg, pos, prefix = packed_batch()
  prefix = prefix if prefix_lm else None
  x = np.random.RandomState(0).randn(*seg.shape, cfg.d_model).astype(np.float32)
  use_window = cfg.sliding_window is not None
  got, params = _layer_output(cfg, impl, x, seg, pos, prefix, use_window)
  ref = reference_attention(x, params, cfg, seg, pos,
                            np.zeros_like(seg) if prefix is None else prefix, use_window)
  real = seg > 0
  np.testing.assert_allclose(got[real], ref[real], rtol=1e-4, atol=1e-4)


def test_window_mask_matches_reference():
  seg, pos, prefix = packed_batch()
  for window, pre in [(1, None), (2, prefix), (3, prefix), (20, None)]:
    got = attention.attention_mask(attention.MaskInputs(
        *(jnp.asarray(a) for a in (pos, pos, seg, seg)), None if pre is None else jnp.asarray(pre),
        None if pre is None else jnp.asarray(pre)), window)
    want = reference_mask(seg, pos, np.zeros_like(seg) if pre is None else pre, window)
    np.testing.assert_array_equal(np.asarray(got)[:, 0], want)


def _random_params(cfg, seed=0):
  """Unrolled-layout parameters drawn with init-like scales, norm scales spread around 1, so a
  token's own (tied) embedding does not dominate and greedy decoding depends on the context."""
  shapes = jax.eval_shape(lambda: Decoder(dataclasses.replace(cfg, scan_layers=False)).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return rng.normal(1.0, 1.0, leaf.shape).astype(np.float32)
    if "embedding" in name:
      return rng.normal(0.0, 1.0, leaf.shape).astype(np.float32)
    return rng.normal(0.0, np.prod(leaf.shape[:-1]) ** -0.5, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, nn.unbox(shapes))


# ---- the fused path equals the einsum path, through the whole decoder ---------------------------
def _stack_layers(params, num_layers):
  """Unrolled layer_i params -> the scanned {"layers": {"layer": stacked}} layout."""
  layers = [params[f"layer_{i}"] for i in range(num_layers)]
  out = {k: v for k, v in params.items() if not k.startswith("layer_")}
  out["layers"] = {"layer": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
  return out


def _loss_and_grads(cfg, params, tokens, **features):
  def loss(p):
    logits = Decoder(cfg).apply({"params": p}, tokens, **features)
    real = (features.get("decoder_segment_ids", jnp.ones_like(tokens)) > 0)[..., None]
    return jnp.sum(jnp.where(real, jax.nn.log_softmax(logits), 0.0)[..., 5]), logits
  # Eagerly: the unrolled models share compiled ops across tests (faster than a jit each here).
  (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return np.asarray(logits), value, grads


DECODER_CASES = {
    "causal": dict(packed=False, prefix=False),
    "packed_causal": dict(packed=True, prefix=False),
    "packed_prefix_lm": dict(packed=True, prefix=True),
}
WINDOWS = {"none": {}, "all_layers": dict(sliding_window=3),
           "gemma_pattern": dict(sliding_window=2, sliding_window_pattern=2)}


@pytest.mark.parametrize("case,window,scan", [
    (case, window, False) for case in sorted(DECODER_CASES) for window in sorted(WINDOWS)] + [
    ("causal", "gemma_pattern", True), ("packed_prefix_lm", "gemma_pattern", True)])
def test_fused_path_equals_einsum_path(case, window, scan):
  """Logits and gradients of "jax_nn" equal "xla" within float32 tolerance."""
  seg, pos, prefix = packed_batch()
  tokens = jnp.asarray(np.random.RandomState(2).randint(3, 700, size=seg.shape))
  features = {}
  if DECODER_CASES[case]["packed"]:
    features.update(decoder_segment_ids=jnp.asarray(seg), decoder_positions=jnp.asarray(pos))
  if DECODER_CASES[case]["prefix"]:
    features["decoder_causal_attention"] = jnp.asarray(prefix)
  base = micro_config(**WINDOWS[window])
  params = nn.unbox(Decoder(base).init(jax.random.key(0), tokens))["params"]
  if scan:
    params = _stack_layers(params, base.num_layers)
  results = {}
  for impl in IMPLS:
    cfg = dataclasses.replace(base, attention_impl=impl, scan_layers=scan)
    results[impl] = _loss_and_grads(cfg, params, tokens, **features)
  (xla_logits, xla_loss, xla_grads), (nn_logits, nn_loss, nn_grads) = results.values()
  real = (seg > 0) if DECODER_CASES[case]["packed"] else np.ones(seg.shape, bool)
  np.testing.assert_allclose(nn_logits[real], xla_logits[real], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(float(nn_loss), float(xla_loss), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(nn_grads), jax.tree.leaves(xla_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=2e-5)


def test_scanned_window_pattern_equals_unrolled_layers():
  """With scan_layers the per-layer window choice is a scanned input: alternating layers give
  the same logits as the unrolled model (a Python branch would apply one choice to all)."""
  base = micro_config(num_layers=4, sliding_window=2, sliding_window_pattern=2)
  seg, pos, prefix = packed_batch()
  tokens = jnp.asarray(np.random.RandomState(3).randint(3, 700, size=seg.shape))
  params = nn.unbox(Decoder(base).init(jax.random.key(0), tokens))["params"]
  forward = lambda cfg, p: np.asarray(jax.jit(Decoder(cfg).apply)({"params": p}, tokens))
  unrolled = forward(base, params)
  for impl in IMPLS:
    for remat in ("none", "full"):
      cfg = dataclasses.replace(base, scan_layers=True, attention_impl=impl, remat_policy=remat)
      np.testing.assert_allclose(forward(cfg, _stack_layers(params, 4)), unrolled,
                                 rtol=1e-4, atol=1e-4)
  # ... and the pattern matters: every layer sliding gives other logits.
  other = forward(dataclasses.replace(base, sliding_window_pattern=None), params)
  assert np.abs(other - unrolled).max() > 1e-3


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("window", [None, 3])
def test_cached_prefill_and_step_equal_full_forward(window, impl):
  """A prefill into the KV cache and one decode step give the logits of the uncached forward
  pass over the same tokens (the window, 3, is shorter than the 9-token sequence)."""
  cfg = micro_config(sliding_window=window, attention_impl=impl)
  model = Decoder(cfg)
  rng = np.random.RandomState(4)
  prompt_len, cache_len = 8, 12
  tokens = jnp.asarray(rng.randint(3, 700, size=(2, prompt_len + 1)))
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), tokens))["params"]
  lengths = np.array([8, 5])
  slots = np.broadcast_to(np.arange(cache_len), (2, cache_len))
  prompt_seg = (slots[:, :prompt_len] < lengths[:, None]).astype(np.int32)
  prefill, cache = jax.jit(model.apply)(
      {"params": params}, tokens[:, :prompt_len], decoder_segment_ids=jnp.asarray(prompt_seg),
      decoder_positions=jnp.asarray(slots[:, :prompt_len]),
      cache=model.init_cache(2, cache_len), cache_offsets=jnp.zeros((2,), jnp.int32),
      key_segment_ids=jnp.asarray((slots < lengths[:, None]).astype(np.int32)),
      key_positions=jnp.asarray(slots))
  # One step: row r feeds token `next_tok[r]` at position lengths[r].
  next_tok = tokens[np.arange(2), lengths][:, None]
  step, _ = jax.jit(model.apply)(
      {"params": params}, next_tok, decoder_segment_ids=jnp.ones((2, 1), jnp.int32),
      decoder_positions=jnp.asarray(lengths[:, None]), cache=cache,
      cache_offsets=jnp.asarray(lengths),
      key_segment_ids=jnp.asarray((slots <= lengths[:, None]).astype(np.int32)),
      key_positions=jnp.asarray(slots))
  reference = jax.jit(Decoder(dataclasses.replace(cfg, attention_impl="xla")).apply)
  for r, n in enumerate(lengths):
    full = reference({"params": params}, tokens[r:r + 1, :n + 1])
    np.testing.assert_allclose(np.asarray(prefill)[r, :n], np.asarray(full)[0, :n],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(step)[r, 0], np.asarray(full)[0, n],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prefix_lm", [False, True], ids=["causal", "prefix_lm"])
def test_decode_with_sliding_window_cached_equals_recompute(prefix_lm):
  """Greedy decoding through the KV cache equals recomputing the whole sequence every step,
  with a Gemma-style pattern whose window (4) is far shorter than prompt + generated tokens."""
  cfg = micro_config(sliding_window=4, sliding_window_pattern=2, attn_logits_soft_cap=2.0,
                     query_scale=8.0, scan_layers=True)
  params = _stack_layers(_random_params(cfg), cfg.num_layers)
  layout = row_layout.RowLayout(row_layout.PREFIX_LM if prefix_lm else row_layout.LM)
  prompts = [layout.prompt(ids, EOS_ID) for ids in
             ([37, 402, 9, 55, 61, 70], [5, 612, 88, 140, 71, 300, 19, 250, 8, 45, 701])]
  toks, lengths = decoding.pad_prompts(prompts, 14)
  settings = decoding.DecodeSettings(max_new_tokens=10, prefix_lm=prefix_lm, eos_id=None)
  cached = decoding.decode(params, cfg, toks, lengths, settings)
  uncached = decoding.decode(params, cfg, toks, lengths,
                             dataclasses.replace(settings, use_cache=False))
  np.testing.assert_array_equal(cached.tokens, uncached.tokens)
  # The window is in force: without it the same weights decode differently.
  no_window = dataclasses.replace(cfg, sliding_window=None, sliding_window_pattern=None)
  assert (decoding.decode(params, no_window, toks, lengths, settings).tokens
          != cached.tokens).any()


# ---- the form each core is given --------------------------------------------------------------
def test_fused_core_gets_a_mask_only_where_nothing_else_fits():
  j = jnp.asarray
  seg, pos, prefix = packed_batch()

  def masks(impl, prefix=None, plain=False, cached=False, **options):
    cfg = micro_config(**options)
    return attention.build_masks(cfg, impl, attention.MaskInputs(
        query_positions=j(pos), key_positions=j(pos), query_segments=j(seg), key_segments=j(seg),
        query_prefix=prefix, key_prefix=prefix), cached=cached, plain_causal=plain)

  plain = masks("cudnn", plain=True)
  assert plain.global_mask is None and plain.causal  # unpacked causal LM: is_causal alone
  window = masks("cudnn", plain=True, sliding_window=4)  # Mistral: is_causal + local window
  assert window.global_mask is None and window.local_mask is None and window.flag_window == 4
  packed = masks("cudnn")
  assert packed.causal and packed.global_mask.dtype == jnp.bool_  # segments need the mask
  prefix_lm = masks("cudnn", prefix=j(prefix))
  assert not prefix_lm.causal and prefix_lm.global_mask is not None
  cached = masks("cudnn", cached=True)
  assert not cached.causal
  scanned = masks("cudnn", plain=True, sliding_window=4, sliding_window_pattern=2,
                  scan_layers=True)  # traced per-layer choice: both masks, no static window
  assert scanned.flag_window is None and scanned.local_mask is not None
  assert masks("xla", plain=True).global_mask.dtype == jnp.float32  # the additive bias


def test_impl_resolution_on_cpu():
  assert attention.resolve_impl(micro_config(), cached=False) == "xla"
  assert attention.resolve_impl(micro_config(attention_impl="jax_nn"), cached=False) == "jax_nn"
  # The soft-cap cannot be expressed in the fused call: it falls back to the einsum core.
  capped = micro_config(attention_impl="jax_nn", attn_logits_soft_cap=30.0)
  assert attention.resolve_impl(capped, cached=False) == "xla"
  with pytest.raises(ValueError, match="needs an NVIDIA GPU.*attention_impl='auto'"):
    attention.resolve_impl(micro_config(attention_impl="cudnn"), cached=False)


def test_attention_option_errors():
  for bad, match in [(dict(attention_impl="flash"), "attention_impl must be one of"),
                     (dict(sliding_window=0), "sliding_window must be a positive int"),
                     (dict(sliding_window_pattern=2), "needs sliding_window"),
                     (dict(sliding_window=4, sliding_window_pattern=1), "int >= 2"),
                     (dict(attn_logits_soft_cap=0.0), "attn_logits_soft_cap must be > 0"),
                     (dict(query_scale=-1.0), "query_scale must be > 0"),
                     (dict(dtype="bf16"), "dtype must be one of")]:
    with pytest.raises(ValueError, match=match):
      micro_config(**bad)
  assert micro_config(sliding_window=4, sliding_window_pattern=3,
                      num_layers=6).window_layers == (True, True, False, True, True, False)
