"""Decoder: prefix-LM masking against a NumPy reference, packing isolation, RoPE, configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from ul2flan.model import config as model_config
from ul2flan.model import decoder as model
from ul2flan.model import layers, losses
from helpers import micro_config


def reference_mask(segments, positions, prefix):
  """Independent definition: same non-padding segment AND (causal OR both in the prefix)."""
  b, n = segments.shape
  out = np.zeros((b, n, n), bool)
  for r in range(b):
    for q in range(n):
      for k in range(n):
        if segments[r, q] != segments[r, k] or segments[r, k] == 0:
          continue
        out[r, q, k] = positions[r, k] <= positions[r, q] or (prefix[r, q] and prefix[r, k])
  return out


def packed_prefix_batch():
  # Two rows; row 0 packs 3 examples (inputs lengths 2, 3, 1) then padding; row 1 packs 1 example.
  seg = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 0],
                  [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]])
  pos = np.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 0],
                  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0]])
  prefix = np.array([[1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0],
                     [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
  return seg, pos, prefix


def test_prefix_lm_mask_matches_numpy_reference():
  seg, pos, prefix = packed_prefix_batch()
  got = model.attention_mask(model.MaskInputs(jnp.array(pos), jnp.array(pos), jnp.array(seg),
                                             jnp.array(seg), jnp.array(prefix), jnp.array(prefix)))
  np.testing.assert_array_equal(np.asarray(got)[:, 0], reference_mask(seg, pos, prefix))
  causal = model.attention_mask(model.MaskInputs(jnp.array(pos), jnp.array(pos), jnp.array(seg),
                                                jnp.array(seg)))
  np.testing.assert_array_equal(np.asarray(causal)[:, 0],
                                reference_mask(seg, pos, np.zeros_like(prefix)))


def test_seqio_prefix_lm_features_drive_the_mask():
  """The mask built from real seqio PrefixLM-converted packed features matches the reference."""
  import seqio
  import tensorflow as tf
  from ul2flan import vocabularies as vocab
  v = vocab.get_vocabulary()
  ds = tf.data.Dataset.from_tensor_slices({"inputs": ["Alice lives in", "Bob"],
                                           "targets": ["Paris.", "is a baker in Lyon."]})
  ds = ds.map(lambda ex: {"inputs": v.encode_tf(ex["inputs"]), "targets": v.encode_tf(ex["targets"])})
  ds = ds.map(lambda ex: {k: tf.concat([t, [1]], 0) for k, t in ex.items()})  # EOS
  conv = seqio.PrefixLMFeatureConverter(pack=True)
  out = next(conv(ds, {"inputs": 16, "targets": 16}).batch(1).as_numpy_iterator())
  seg, pos, pre = (out["decoder_segment_ids"], out["decoder_positions"],
                   out["decoder_causal_attention"])
  assert seg.max() == 2, "both examples should be packed in one row"
  got = model.attention_mask(model.MaskInputs(*(jnp.array(x) for x in (pos, pos, seg, seg, pre,
                                                                         pre))))
  np.testing.assert_array_equal(np.asarray(got)[:, 0], reference_mask(seg, pos, pre))
  # Per segment, the bidirectional positions hold exactly BOS + the inputs (shifted input space)
  # and the loss covers exactly the target tokens (+ EOS).
  inp, tgt, w = out["decoder_input_tokens"][0], out["decoder_target_tokens"][0], out[
      "decoder_loss_weights"][0]
  for s_id, (x, y) in enumerate([("Alice lives in", "Paris."), ("Bob", "is a baker in Lyon.")], 1):
    in_seg = seg[0] == s_id
    x_ids, y_ids = list(v.encode(x)) + [1], list(v.encode(y)) + [1]
    assert list(inp[in_seg & (pre[0] == 1)]) == [0] + x_ids
    assert list(tgt[in_seg & (w == 1)]) == y_ids


@pytest.mark.parametrize("scan", [False, True])
def test_packed_segments_do_not_interact(scan):
  cfg = micro_config(scan_layers=scan)
  m = model.Decoder(cfg)
  seg, pos, prefix = packed_prefix_batch()
  tokens = np.random.RandomState(0).randint(3, 700, size=seg.shape)
  params = m.init(jax.random.key(0), jnp.array(tokens))["params"]
  params = nn.unbox(params)
  f = lambda t: m.apply({"params": params}, jnp.array(t), jnp.array(seg), jnp.array(pos),
                        jnp.array(prefix))
  base = np.asarray(f(tokens))
  changed = tokens.copy()
  changed[0, 5] = (changed[0, 5] + 7) % 700 + 3  # a prefix token of segment 2 in row 0
  after = np.asarray(f(changed))
  # Every real token of every other segment is untouched (padding, segment 0, carries no loss
  # and is never visible as a key, so its own outputs are not part of the contract).
  other = (seg[0] != 2) & (seg[0] > 0)
  np.testing.assert_allclose(after[0, other], base[0, other], rtol=0, atol=0)
  np.testing.assert_allclose(after[1, seg[1] > 0], base[1, seg[1] > 0], rtol=0, atol=0)
  # Bidirectional prefix: the earlier prefix token of segment 2 does see the change.
  assert np.abs(after[0, 4] - base[0, 4]).max() > 0


def test_causal_when_feature_absent():
  cfg = micro_config()
  m = model.Decoder(cfg)
  tokens = np.random.RandomState(1).randint(3, 700, size=(1, 10))
  params = nn.unbox(m.init(jax.random.key(0), jnp.array(tokens))["params"])
  base = np.asarray(m.apply({"params": params}, jnp.array(tokens)))
  changed = tokens.copy()
  changed[0, 6] += 1
  after = np.asarray(m.apply({"params": params}, jnp.array(changed)))
  np.testing.assert_array_equal(after[0, :6], base[0, :6])
  assert np.abs(after[0, 6:] - base[0, 6:]).max() > 0


def test_rotary_embedding_matches_complex_rotation():
  rng = np.random.RandomState(0)
  x = rng.randn(1, 5, 2, 8).astype(np.float32)
  pos = np.arange(5)[None]
  freq8 = layers.rope_frequencies(model_config.DecoderConfig(head_dim=8))
  got = np.asarray(layers.rotary_embedding(jnp.array(x), jnp.array(pos), freq8))
  half = 4
  freq = 10000.0 ** (-np.arange(half) / half)
  z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * pos[0][None, :, None, None] * freq)
  np.testing.assert_allclose(got, np.concatenate([z.real, z.imag], -1), atol=1e-5)
  # Relative property: <rope(q, m), rope(k, n)> depends only on m - n.
  q, k = rng.randn(8), rng.randn(8)
  def dot(m, n):
    a = layers.rotary_embedding(jnp.array(q)[None, None, None], jnp.array([[m]]), freq8)
    b = layers.rotary_embedding(jnp.array(k)[None, None, None], jnp.array([[n]]), freq8)
    return float(jnp.sum(a * b))
  assert dot(7, 3) == pytest.approx(dot(14, 10), rel=1e-4)


def test_cross_entropy_and_z_loss_against_numpy():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 3, 11).astype(np.float64)
  targets = rng.randint(0, 11, size=(2, 3))
  weights = np.array([[1, 1, 0], [0, 1, 1]], np.float64)
  nll, z, correct = losses.cross_entropy_with_z_loss(jnp.array(logits, jnp.float32),
                                                    jnp.array(targets), jnp.array(weights), 1e-4)
  log_z = np.log(np.exp(logits).sum(-1))
  ref_nll = ((log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]) * weights).sum()
  assert float(nll) == pytest.approx(ref_nll, rel=1e-5)
  assert float(z) == pytest.approx((1e-4 * log_z ** 2 * weights).sum(), rel=1e-5)
  assert float(correct) == ((logits.argmax(-1) == targets) * weights).sum()


@pytest.mark.parametrize("kv_heads,parallel,norm,tied", [(4, False, "rmsnorm", False),
                                                         (1, True, "layernorm", True)])
def test_architecture_options_build_and_count(kv_heads, parallel, norm, tied):
  cfg = micro_config(num_kv_heads=kv_heads, parallel_block=parallel, norm_type=norm,
                     tie_embeddings=tied)
  m = model.Decoder(cfg)
  params = jax.eval_shape(lambda: nn.unbox(m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))))
  # Independent count by hand for the micro model: d=64, heads 4 x 16, mlp 128, vocab 768.
  d, h, hd, f, v = 64, 4, 16, 128, 768
  per_layer = d * hd * (2 * h + 2 * kv_heads) + 3 * d * f + d * (1 if parallel else 2)
  expected = 2 * per_layer + d + v * d * (1 if tied else 2)
  assert model.count_params(params["params"]) == expected


def test_bad_config_errors():
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    micro_config(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="remat_policy"):
    micro_config(remat_policy="sometimes")


@pytest.mark.parametrize("packed", [False, True])
def test_hidden_start_slot_computes_the_text_as_a_model_without_a_bos(packed):
  """A model pre-trained without a BOS (`row_layout.RowLayout.hidden_start`): behind seqio's start
  slot (id 0 at position 0), with the slot hidden, every token's logits are those the same model
  gives the text alone from position 0 (RoPE is relative), as Hugging Face runs such models."""
  cfg = micro_config()
  m = model.Decoder(cfg)
  rng = np.random.RandomState(2)
  texts = [rng.randint(3, 700, size=n) for n in (9, 6)]
  params = nn.unbox(m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  alone = [np.asarray(m.apply({"params": params}, jnp.array(t[None])))[0] for t in texts]
  if packed:  # both texts in one row, each behind its own start slot
    tokens = np.concatenate([[0], texts[0], [0], texts[1]])[None]
    seg = np.array([[1] * 10 + [2] * 7])
    pos = np.array([list(range(10)) + list(range(7))])
    out = np.asarray(m.apply({"params": params}, jnp.array(tokens), jnp.array(seg),
                             jnp.array(pos), hide_start=True))[0]
    got = [out[1:10], out[11:17]]
  else:
    got = [np.asarray(m.apply({"params": params}, jnp.array(np.concatenate([[0], t])[None]),
                              hide_start=True))[0, 1:] for t in texts]
  for g, a in zip(got, alone):
    np.testing.assert_allclose(g, a, rtol=2e-5, atol=2e-5)
  # Without hiding, the slot is a token the model attends to: the logits differ.
  shown = np.asarray(m.apply({"params": params},
                             jnp.array(np.concatenate([[0], texts[0]])[None])))[0, 1:]
  assert np.abs(shown - alone[0]).max() > 1e-3
