"""KV-cache decoding against a plain re-run-the-model loop; sampling filters against NumPy.

The reference decoder here feeds one unpadded prompt at a time to the model without any cache
and takes the argmax of the last position, growing the sequence by one token per step.
"""

import collections
import dataclasses
import functools
import json
import os
import re
import shutil

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ul2flan import checkpoints, config, row_layout, vocabularies as vocab
from ul2flan.commands import configurables  # noqa: F401
from ul2flan.commands import main as cli
from ul2flan.evaluation import self_consistency
from ul2flan.inference import decoding
from ul2flan.inference import generator as generator_lib
from ul2flan.training import trainer
from ul2flan.evaluation import harness
from ul2flan.model.decoder import Decoder
import helpers
from helpers import micro_config

BOS, EOS = 0, 1
STEPS = 10  # tokens generated per row; one value keeps compilations shared
PREFIX_LM_LAYOUT = row_layout.RowLayout(row_layout.PREFIX_LM)
PROMPT_IDS = ([37, 402, 9], [5, 612, 88, 140, 71, 300, 19, 250, 8, 45, 701], [260, 33, 517, 74, 90])


@functools.lru_cache(maxsize=None)
def random_params(config, seed=0):
  """NumPy-drawn parameters with init-like scales.

  Norm scales are drawn around 1 with unit spread, so a token's own (tied) embedding does not
  dominate its output and greedy decoding depends on the whole context.
  """
  shapes = jax.eval_shape(lambda: Decoder(config).init(jax.random.key(0),
                                                       jnp.zeros((1, 8), jnp.int32)))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return rng.normal(1.0, 1.0, leaf.shape).astype(np.float32)
    if "embedding" in name:
      return rng.normal(0.0, 1.0, leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) // (config.num_layers if config.scan_layers else 1)
    return rng.normal(0.0, fan_in ** -0.5, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, nn.unbox(shapes))


def reference_prompt(ids, prefix_lm):
  return [BOS] + list(ids) + ([EOS] if prefix_lm else [])


REFERENCE_LENGTH = 32


@functools.lru_cache(maxsize=None)
def _reference_forward(config):
  return jax.jit(lambda params, tokens, segments, prefix: Decoder(config).apply(
      {"params": params}, tokens, decoder_segment_ids=segments, decoder_causal_attention=prefix))


def reference_greedy(config, params, prompt, prefix_lm, steps, eos_id=None):
  """Greedy continuation of one prompt, recomputing the whole sequence every step.

  The sequence sits in a fixed [1, REFERENCE_LENGTH] buffer (one compilation) whose unused tail
  is segment 0, i.e. padding that no real position attends to.
  """
  forward = _reference_forward(config)
  sequence, generated = list(prompt), []
  for _ in range(steps):
    tokens = np.zeros((1, REFERENCE_LENGTH), np.int32)
    tokens[0, :len(sequence)] = sequence
    segments = (np.arange(REFERENCE_LENGTH) < len(sequence)).astype(np.int32)[None]
    prefix = (np.arange(REFERENCE_LENGTH) < (len(prompt) if prefix_lm else 0)).astype(np.int32)
    logits = forward(params, tokens, segments, prefix[None])
    token = int(np.argmax(np.asarray(logits)[0, len(sequence) - 1]))
    generated.append(token)
    sequence.append(token)
    if token == eos_id:
      break
  return generated


@pytest.fixture(autouse=True, scope="module")
def _clean_gin():
  yield
  gin.clear_config()


def test_prompt_layout_matches_seqio_prefix_lm_converter():
  """BOS + inputs + EOS is exactly the bidirectional part of a PrefixLMFeatureConverter example."""
  import seqio
  import tensorflow as tf
  ids = [37, 402, 9]
  example = {"inputs": tf.constant(ids + [EOS], tf.int32),
             "targets": tf.constant([55, 66, EOS], tf.int32)}
  converted = seqio.PrefixLMFeatureConverter(pack=False)(
      tf.data.Dataset.from_tensors(example), {"inputs": 8, "targets": 8})
  features = next(iter(converted.as_numpy_iterator()))
  prompt = row_layout.RowLayout(row_layout.PREFIX_LM).prompt(ids, EOS)
  assert prompt == [BOS] + ids + [EOS]
  assert list(features["decoder_input_tokens"][:len(prompt)]) == prompt
  assert list(features["decoder_causal_attention"][:len(prompt) + 1]) == [1] * len(prompt) + [0]
  # The first target is predicted at the last prompt position.
  assert features["decoder_target_tokens"][len(prompt) - 1] == 55
  assert row_layout.RowLayout(row_layout.LM).prompt(ids, EOS) == [BOS] + ids


@pytest.mark.parametrize("scan_layers", [False, True], ids=["layers", "scan"])
@pytest.mark.parametrize("prefix_lm", [True, False], ids=["prefix_lm", "causal"])
def test_cached_greedy_equals_full_recompute(prefix_lm, scan_layers):
  config = micro_config(scan_layers=scan_layers)
  params = random_params(config)
  prompts = [reference_prompt(ids, prefix_lm) for ids in PROMPT_IDS]
  tokens, lengths = decoding.pad_prompts(prompts, 16)
  steps = STEPS
  settings = decoding.DecodeSettings(max_new_tokens=steps, prefix_lm=prefix_lm, eos_id=None)
  cached = decoding.decode(params, config, tokens, lengths, settings)
  expected = [reference_greedy(config, params, p, prefix_lm, steps) for p in prompts]
  np.testing.assert_array_equal(cached.tokens, np.array(expected))
  np.testing.assert_array_equal(cached.lengths, [steps] * 3)
  # The same params run with the other layer layout (stacked or sliced inside the call).
  other = decoding.decode(params, config, tokens, lengths,
                          dataclasses.replace(settings, scan_layers=not scan_layers))
  np.testing.assert_array_equal(other.tokens, cached.tokens)
  if not scan_layers:
    uncached = decoding.decode(params, config, tokens, lengths,
                               dataclasses.replace(settings, use_cache=False))
    np.testing.assert_array_equal(uncached.tokens, cached.tokens)


@pytest.mark.parametrize("prefix_lm", [True, False], ids=["prefix_lm", "causal"])
def test_hidden_start_slot_decodes_and_scores_as_the_text_alone(prefix_lm):
  """A model pre-trained without a BOS: with its start slot hidden, the prompt `[0] + ids` is
  read as `ids` alone from position 0 (RoPE is relative), as the original model reads it.
  Reference: the full recompute over the prompt without any start slot."""
  config = micro_config()
  params = random_params(config)
  kind = row_layout.PREFIX_LM if prefix_lm else row_layout.LM
  layout = row_layout.RowLayout(kind, hidden_start=True)
  prompts = [layout.prompt(ids, EOS) for ids in PROMPT_IDS]
  assert all(p[0] == BOS and p[1:len(ids) + 1] == list(ids) for p, ids in zip(prompts, PROMPT_IDS))
  tokens, lengths = decoding.pad_prompts(prompts, 16)
  settings = decoding.DecodeSettings(max_new_tokens=STEPS, prefix_lm=prefix_lm, hide_start=True,
                                     eos_id=None)
  got = decoding.decode(params, config, tokens, lengths, settings)
  expected = [reference_greedy(config, params, p[1:], prefix_lm, STEPS) for p in prompts]
  np.testing.assert_array_equal(got.tokens, np.array(expected))

  generator = generator_lib.Generator(config, params, vocab.get_vocabulary(), layout)
  targets = [[55, 66, 77], [12, 13], [400]]
  scores = generator.score_ids(list(PROMPT_IDS), targets)
  shown = generator_lib.Generator(config, params, vocab.get_vocabulary(),
                                  dataclasses.replace(layout, hidden_start=False))
  # The slot is really hidden, not merely harmless: seen, it changes every score.
  assert all(abs(a - b) > 1e-3 for a, b in zip(shown.score_ids(list(PROMPT_IDS), targets), scores))
  forward = _reference_forward(config)
  for p, target, score in zip(prompts, targets, scores):
    sequence = p[1:] + target[:-1]
    padded = np.zeros((1, REFERENCE_LENGTH), np.int32)
    padded[0, :len(sequence)] = sequence
    segments = (np.arange(REFERENCE_LENGTH) < len(sequence)).astype(np.int32)[None]
    prefix = (np.arange(REFERENCE_LENGTH) < (len(p) - 1 if prefix_lm else 0)).astype(np.int32)
    logits = np.asarray(forward(params, padded, segments, prefix[None]), np.float64)[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    first = len(p) - 2  # the prompt's last position (without the slot) predicts target[0]
    want = sum(logp[first + k, t] for k, t in enumerate(target))
    assert score == pytest.approx(want, abs=1e-3)


def test_prefix_and_causal_attention_differ():
  """Guards the test above against a model whose outputs ignore the attention pattern."""
  config = micro_config()
  params = random_params(config)
  prompt = reference_prompt(PROMPT_IDS[1], True)
  assert (reference_greedy(config, params, prompt, True, 6)
          != reference_greedy(config, params, prompt, False, 6))


def test_eos_stops_each_row():
  config = micro_config()
  params = random_params(config)
  prompts = [reference_prompt(ids, True) for ids in PROMPT_IDS]
  tokens, lengths = decoding.pad_prompts(prompts, 16)
  free = [reference_greedy(config, params, p, True, STEPS) for p in prompts]
  # Row 0 must stop mid-way: use as stop token its first new token after two steps.
  stop_at = next(i for i in range(2, STEPS) if free[0][i] not in free[0][:i])
  stop = free[0][stop_at]
  got = decoding.decode(params, config, tokens, lengths, decoding.DecodeSettings(
      max_new_tokens=STEPS, prefix_lm=True, eos_id=stop))
  for row, continuation in enumerate(free):
    cut = continuation.index(stop) + 1 if stop in continuation else STEPS
    assert got.lengths[row] == cut
    assert list(got.tokens[row]) == continuation[:cut] + [decoding.PAD_ID] * (STEPS - cut)
  assert got.lengths[0] == stop_at + 1 < STEPS


# ---- stop sequences and batching ----------------------------------------------------------------
def first_stop_end(texts, tokens, stops):
  """Reference: how many tokens it takes until their joined text contains a stop (None: never)."""
  text = ""
  for count, token in enumerate(tokens, 1):
    text += texts[token]
    if any(stop in text for stop in stops):
      return count
  return None


def test_stop_table_finds_stops_inside_and_across_tokens():
  texts = ["", "a", "b", "ab", "ba", "aab", "\n", "\n\n", "Q", "Q:", ":", " ", "x\nQ", "abab"]
  stops = ["\n\nQ:", "abab", "aab", ":"]  # "abab" and "aab" need the matcher's fallbacks
  table = decoding.stop_table(texts, stops)
  matched = table.shape[1] - 1
  rng = np.random.default_rng(0)
  hits = 0
  for _ in range(400):
    tokens = rng.integers(0, len(texts), 10)
    states, ended = np.zeros(table.shape[0], np.int64), None
    for count, token in enumerate(tokens, 1):
      states = table[np.arange(table.shape[0]), states, token]
      if (states == matched).any():
        ended = count
        break
    assert ended == first_stop_end(texts, tokens, stops), [texts[t] for t in tokens]
    hits += ended is not None
  assert 50 < hits < 400  # both outcomes were exercised
  assert decoding.stop_table(texts, []).shape == (1, 2, len(texts))  # no stop: never matches
  assert not (decoding.stop_table(texts, []) == 1).any()


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
def test_stop_sequences_end_each_row_and_the_loop(use_cache):
  """A row ends with the token that completes a stop (here spanning two tokens), then holds
  PAD_ID; the loop stops once every row has ended, not after max_new_tokens."""
  config = micro_config()
  params = random_params(config)
  prompts = [reference_prompt(ids, True) for ids in PROMPT_IDS]
  tokens, lengths = decoding.pad_prompts(prompts, 16)
  free = [reference_greedy(config, params, p, True, STEPS) for p in prompts]
  texts = [f"<{i}>" for i in range(config.vocab_size)]
  # Row 0 stops on its 3rd + 4th tokens together, rows 1 and 2 on one token each.
  stops = [f"{free[0][2]}><{free[0][3]}>", f"<{free[1][1]}>", f"<{free[2][0]}>"]
  expected = [first_stop_end(texts, row, stops) or STEPS for row in free]
  got = decoding.decode(params, config, tokens, lengths, decoding.DecodeSettings(
      max_new_tokens=STEPS, prefix_lm=True, eos_id=None, use_cache=use_cache),
                        stops=decoding.stop_table(texts, stops))
  assert got.lengths.tolist() == expected
  for row, continuation in enumerate(free):
    cut = expected[row]
    assert got.tokens[row].tolist() == continuation[:cut] + [decoding.PAD_ID] * (STEPS - cut)
  assert got.steps == max(expected) <= 4 < STEPS


def test_generator_cuts_text_at_stops_as_lm_eval_harness_does():
  """generate(stop_sequences=...) returns each greedy continuation up to its first stop, and
  decodes fewer steps; without stops it is the reference continuation, over several batches."""
  config = micro_config()
  params = random_params(config)
  spm = vocab.get_vocabulary()
  generator = generator_lib.Generator(config, params, spm, PREFIX_LM_LAYOUT, batch_size=2)
  prompts = ["Alice lives in Paris.", "What is 12 + 7?", "The pet of Bob is a", "x",
             "Carol and Dave walk to the market."]
  references = [spm.decode([t for t in reference_greedy(
      config, params, reference_prompt(spm.encode(p), True), True, STEPS, eos_id=EOS)
      if t != EOS]) for p in prompts]
  assert generator.generate(prompts, max_new_tokens=STEPS) == [[r] for r in references]
  full_steps = generator.last_stats["decode_steps"]
  assert generator.last_stats["decode_calls"] == 3  # 5 prompts, 2 rows per call

  stops = sorted({r[2:4] for r in references if len(r) >= 4})

  def until(text):  # lm-eval-harness: text.split(stop)[0] for each stop
    for stop in stops:
      text = text.split(stop)[0]
    return text

  assert all(until(r) != r for r in references if len(r) >= 4)
  got = generator.generate(prompts, max_new_tokens=STEPS, stop_sequences=stops)
  assert got == [[until(r)] for r in references]
  assert generator.last_stats["decode_steps"] < full_steps


def test_prompt_buckets_and_batch_plan():
  assert [generator_lib.bucket_length(n) for n in (1, 17, 64, 65, 81, 129, 513, 933)] == [
      16, 32, 64, 80, 96, 160, 640, 1024]
  assert all(n <= generator_lib.bucket_length(n) < 1.25 * n for n in range(65, 5000))
  assert len({generator_lib.bucket_length(n) for n in range(65, 4097)}) == 24  # 4 per octave
  # Three short prompts are not padded to the long ones' length: they get a call of their own.
  lengths = [1000, 10, 1000, 10, 1000, 10, 1000]
  assert generator_lib.plan_batches(lengths, 4, 8) == [[1, 3, 5], [0, 2, 4, 6]]
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 700, 50).tolist()
  plan = generator_lib.plan_batches(lengths, 8, 16)
  assert sorted(i for batch in plan for i in batch) == list(range(50))
  assert all(len(batch) <= 8 for batch in plan)
  flat = [lengths[i] for batch in plan for i in batch]
  assert flat == sorted(lengths)

  def cost(batches):
    return sum(8 * (generator_lib.bucket_length(max(lengths[i] for i in b)) + 16)
               for b in batches)

  order = sorted(range(50), key=lambda i: lengths[i])
  assert cost(plan) <= cost([order[k:k + 8] for k in range(0, 50, 8)])


def test_sampling_with_top_k_one_is_greedy():
  config = micro_config()
  params = random_params(config)
  tokens, lengths = decoding.pad_prompts([reference_prompt(ids, True) for ids in PROMPT_IDS], 16)
  settings = decoding.DecodeSettings(max_new_tokens=STEPS, prefix_lm=True, eos_id=None)
  greedy = decoding.decode(params, config, tokens, lengths, settings)
  sampled = decoding.decode(params, config, tokens, lengths,
                            dataclasses.replace(settings, temperature=1.3, top_k=1), rng=7)
  np.testing.assert_array_equal(sampled.tokens, greedy.tokens)
  # Plain sampling at a high temperature does leave the greedy path.
  hot = decoding.decode(params, config, tokens, lengths,
                        dataclasses.replace(settings, temperature=5.0), rng=7)
  assert (hot.tokens != greedy.tokens).any()


def numpy_filtered_probs(logits, top_k, top_p):
  """Top-k, then the smallest most-likely set with mass >= top_p, renormalised."""
  out = np.zeros_like(logits)
  for row, values in enumerate(logits):
    order = np.argsort(-values)
    if top_k:
      order = order[:top_k]
    probs = np.exp(values[order] - values[order].max())
    probs /= probs.sum()
    if top_p is not None:
      keep = 1
      while probs[:keep].sum() < top_p and keep < len(order):
        keep += 1
      order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    out[row, order] = probs
  return out


@pytest.mark.parametrize("top_k,top_p", [(None, None), (5, None), (None, 0.3), (None, 0.9),
                                         (12, 0.8), (1, 0.9), (40, 1.0)])
def test_filter_logits_matches_numpy(top_k, top_p):
  logits = np.random.default_rng(3).normal(0, 2.0, (6, 50)).astype(np.float32)
  filtered = np.asarray(decoding.filter_logits(jnp.asarray(logits), top_k or 0,
                                               1.0 if top_p is None else top_p))
  expected = numpy_filtered_probs(logits.astype(np.float64), top_k, top_p)
  np.testing.assert_array_equal(np.isfinite(filtered), expected > 0)
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(filtered, axis=-1)), expected, atol=1e-6)


def test_sampling_frequencies_follow_tempered_filtered_distribution():
  logits = np.array([2.0, 1.5, 1.0, 0.0, -1.0, -3.0], np.float32)
  draws = 40_000
  tokens = decoding.choose_tokens(jnp.broadcast_to(logits, (draws, 6)), jax.random.key(0),
                                  temperature=0.7, top_k=4, top_p=0.95, greedy=False)
  freq = np.bincount(np.asarray(tokens), minlength=6) / draws
  expected = numpy_filtered_probs((logits / 0.7)[None].astype(np.float64), 4, 0.95)[0]
  np.testing.assert_allclose(freq, expected, atol=0.01)
  assert freq[4:].sum() == 0


def test_generator_text_round_trip():
  config = micro_config()
  params = random_params(config)
  spm = vocab.get_vocabulary()
  generator = generator_lib.Generator(config, params, spm, PREFIX_LM_LAYOUT, batch_size=4)
  prompts = ["Alice lives in Paris.", "What is 12 + 7?", "The pet of Bob is a"]
  assert generator.generate([], max_new_tokens=STEPS) == []
  outputs = generator.generate(prompts, max_new_tokens=STEPS)
  for prompt, output in zip(prompts, outputs):
    ids = reference_greedy(config, params, reference_prompt(spm.encode(prompt), True), True, STEPS,
                           eos_id=EOS)
    assert output == [spm.decode([t for t in ids if t != EOS])]
  assert isinstance(generator, harness.Generator)
  assert generator.count_tokens(prompts[0]) == len(spm.encode(prompts[0])) + 1
  assert generator.last_stats["examples"] == 3 and generator.last_stats["tokens_per_second"] > 0

  samples = generator.generate(prompts, max_new_tokens=STEPS, temperature=0.8, top_k=1,
                               num_samples=3, seed=5)
  assert samples == [o * 3 for o in outputs]
  with pytest.raises(ValueError, match="top_p"):
    generator.generate(prompts, max_new_tokens=4, temperature=1.0, top_p=0.0)


def test_self_consistency_votes_extracted_answers():
  class Canned:
    def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
                 num_samples=1, seed=0):
      assert num_samples == 4 and temperature == 0.7 and top_k == 40
      return [["So the answer is 3.", "The answer is 5.", "the answer is 5", "no idea"]
              for _ in prompts]

  voted = self_consistency.self_consistency(
      Canned(), ["q1", "q2"], self_consistency.Sampling(num_samples=4, max_new_tokens=16))
  assert [v.answer for v in voted] == ["5", "5"]
  assert voted[0].answers == ["3", "5", "5", "no idea"]


# ---- a real checkpoint written by the trainer ---------------------------------------------------
def _saved_params(model_dir):
  import orbax.checkpoint as ocp
  ckpt_dir, step = checkpoints.resolve_step_dir(model_dir)
  with checkpoints.open_manager(ckpt_dir) as manager:
    return manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore()))["params"]


def test_load_generator_from_trainer_checkpoint(trained_model_dir, tmp_path):
  generator = generator_lib.load_generator(trained_model_dir)
  assert generator.config == micro_config()
  assert generator.prefix_lm is False  # trained with the "lm" feature converter
  assert generator.max_prompt_tokens == 32  # the trained targets length
  saved = _saved_params(trained_model_dir)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(generator.params), saved)

  prompt = "Alice lives in"
  [[text]] = generator.generate([prompt], max_new_tokens=STEPS)
  ids = reference_greedy(micro_config(), saved, reference_prompt(generator.vocabulary.encode(
      prompt), False), False, STEPS, eos_id=EOS)
  assert text == generator.vocabulary.decode([t for t in ids if t != EOS])

  # A step dir described by gin files instead of run.json.
  gin_file = tmp_path / "micro.gin"
  gin_file.write_text("\n".join(b.replace("=", " = ") for b in helpers.MICRO_BINDINGS)
                      + "\nFEATURE_CONVERTER = 'prefix_lm'\n")
  config.parse_gin([str(gin_file)], optional_macros=config.RUN_INFO_MACROS)
  step_dir = os.path.join(trained_model_dir, "checkpoints", "1")
  generator = generator_lib.load_generator(step_dir, config.run_info_from_gin())
  assert generator.prefix_lm is True and generator.config == micro_config()

  # A model dir whose run.json says prefix_lm decodes as a prefix LM.
  prefix_dir = tmp_path / "prefix_model"
  shutil.copytree(trained_model_dir, prefix_dir)
  run_json = prefix_dir / "run.json"
  run_json.write_text(run_json.read_text().replace('"feature_converter": "lm"',
                                                   '"feature_converter": "prefix_lm"'))
  assert generator_lib.load_generator(str(prefix_dir)).prefix_lm is True


def test_causal_prefix_lm_is_prompted_as_its_converter_trained_it(trained_model_dir, tmp_path):
  """A `prefix_lm_causal` model (Flan-base) was trained on `BOS inputs EOS targets`, causally:
  `ul2flan infer` / `eval` must prompt it with that EOS and score options at the same positions.
  The reference is the training layout itself: `CausalPrefixLMFeatureConverter`'s features."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from ul2flan.training import data  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / "flan_base_like"
  shutil.copytree(trained_model_dir, model_dir)
  run_json = model_dir / "run.json"
  run_json.write_text(run_json.read_text().replace('"feature_converter": "lm"',
                                                   '"feature_converter": "prefix_lm_causal"'))
  generator = generator_lib.load_generator(str(model_dir), batch_size=4)
  assert generator.prefix_lm is False and generator.prompt_eos is True
  spm = generator.vocabulary
  prompt, option = "Alice lives in", "Paris"
  ids, target = list(spm.encode(prompt)), list(spm.encode(option))
  example = {"inputs": tf.constant(ids + [EOS], tf.int32),
             "targets": tf.constant(target + [EOS], tf.int32)}
  converter = row_layout.RowLayout("prefix_lm_causal").feature_converter(pack=False)
  features = next(iter(converter(tf.data.Dataset.from_tensors(example),
                                 {"inputs": 16, "targets": 16}).as_numpy_iterator()))
  assert "decoder_causal_attention" not in features  # trained causally
  prompt_slots = len(ids) + 2  # BOS, the inputs, their EOS
  assert generator.encode(prompt) == list(features["decoder_input_tokens"][:prompt_slots])
  assert generator.count_tokens(prompt) == len(ids) + 1  # as the inputs length measured it
  # The first target is predicted at the EOS: greedy decoding continues from there.
  [[text]] = generator.generate([prompt], max_new_tokens=STEPS)
  expected = reference_greedy(micro_config(), generator.params, generator.encode(prompt), False,
                              STEPS, eos_id=EOS)
  assert text == spm.decode([t for t in expected if t != EOS])
  # Rank classification = the training loss's log-likelihood of `targets EOS` on those features.
  logits = _reference_forward(micro_config())(
      generator.params, features["decoder_input_tokens"][None],
      (features["decoder_loss_weights"] * 0 + 1)[None].astype(np.int32), None)
  logp = np.asarray(jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1))
  weights = features["decoder_loss_weights"]
  want = float(np.sum(logp[np.arange(len(weights)), features["decoder_target_tokens"]] * weights))
  [[got]] = generator.score_options([prompt], [[option]])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_a_prefix_lm_trained_without_the_inputs_eos_is_prompted_without_it(trained_model_dir,
                                                                          tmp_path):
  """A U-model trained with `ul2r_preset.inputs_eos = False` (run.json: inputs_eos false) saw
  `BOS inputs targets`, the inputs bidirectional: its prompt is that bidirectional part, with no
  EOS, and its first answer token is written from the last inputs token. The reference is the
  training layout: seqio's PrefixLMFeatureConverter over an example whose inputs lack the EOS."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / "u_model_without_inputs_eos"
  shutil.copytree(trained_model_dir, model_dir)
  run_json = model_dir / "run.json"
  info = json.loads(run_json.read_text())
  run_json.write_text(json.dumps({**info, "feature_converter": "prefix_lm", "inputs_eos": False}))
  generator = generator_lib.load_generator(str(model_dir), batch_size=4)
  assert generator.prefix_lm is True and generator.prompt_eos is False
  spm = generator.vocabulary
  prompt, option = "Alice lives in", "Paris"
  ids, target = list(spm.encode(prompt)), list(spm.encode(option))
  example = {"inputs": tf.constant(ids, tf.int32), "targets": tf.constant(target + [EOS], tf.int32)}
  features = next(iter(seqio.PrefixLMFeatureConverter(pack=False)(
      tf.data.Dataset.from_tensors(example), {"inputs": 16, "targets": 16}).as_numpy_iterator()))
  prompt_slots = len(ids) + 1  # BOS and the inputs: the bidirectional part
  assert generator.encode(prompt) == list(features["decoder_input_tokens"][:prompt_slots])
  assert list(features["decoder_causal_attention"][:prompt_slots + 1]) == [1] * prompt_slots + [0]
  assert features["decoder_target_tokens"][prompt_slots - 1] == target[0]  # from the last input
  assert generator.count_tokens(prompt) == len(ids)
  [[text]] = generator.generate([prompt], max_new_tokens=STEPS)
  expected = reference_greedy(micro_config(), generator.params, [BOS] + ids, True, STEPS,
                              eos_id=EOS)
  assert text == spm.decode([t for t in expected if t != EOS])
  # Rank classification = the training loss's log-likelihood of `targets EOS` on those features.
  logits = _reference_forward(micro_config())(
      generator.params, features["decoder_input_tokens"][None],
      np.ones_like(features["decoder_input_tokens"])[None].astype(np.int32),
      features["decoder_causal_attention"][None])
  logp = np.asarray(jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1))
  weights = features["decoder_loss_weights"]
  want = float(np.sum(logp[np.arange(len(weights)), features["decoder_target_tokens"]] * weights))
  [[got]] = generator.score_options([prompt], [[option]])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # Read causally (`infer --no-prefix_lm`): still no EOS, the same ids.
  causal = generator.with_layout(generator.layout.with_bidirectional_inputs(False))
  assert not causal.prefix_lm and causal.encode(prompt) == generator.encode(prompt)


def test_load_generator_errors(trained_model_dir, tmp_path):
  bare = tmp_path / "bare"
  shutil.copytree(os.path.join(trained_model_dir, "checkpoints"), bare / "checkpoints")
  with pytest.raises(FileNotFoundError, match="run.json"):
    generator_lib.load_generator(str(bare))
  other = dataclasses.replace(config.read_run_info(trained_model_dir),
                              model={**micro_config().__dict__, "d_model": 32})
  with pytest.raises(checkpoints.CheckpointShapeError, match="d_model|embedding"):
    generator_lib.load_generator(trained_model_dir, other)


def test_infer_cli_greedy_text_is_the_reference_continuation(trained_model_dir, capsys):
  """`ul2flan infer` prints, per prompt, the greedy continuation that a full recompute of the
  saved params gives (causal LM, as run.json says)."""
  prompts = ["Alice lives in", "Bob"]
  code = cli.main(["infer", f"--checkpoint={trained_model_dir}", *[f"--prompt={p}" for p in prompts],
                   f"--max_new_tokens={STEPS}", "--json"])
  assert code == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["prompt"] for r in lines] == prompts
  saved, spm = _saved_params(trained_model_dir), vocab.get_vocabulary()
  for record, prompt in zip(lines, prompts):
    ids = reference_greedy(micro_config(), saved, reference_prompt(spm.encode(prompt), False),
                           False, STEPS, eos_id=EOS)
    assert record["samples"] == [spm.decode([t for t in ids if t != EOS])]
  # --stop cuts each continuation before the stop's first occurrence.
  stop = lines[0]["samples"][0][3:5]
  code = cli.main(["infer", f"--checkpoint={trained_model_dir}", *[f"--prompt={p}" for p in prompts],
                   f"--max_new_tokens={STEPS}", "--json", f"--stop={stop}"])
  assert code == 0
  stopped = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["samples"] for r in stopped] == [[r["samples"][0].split(stop)[0]] for r in lines]
  assert len(stopped[0]["samples"][0]) <= 3 < len(lines[0]["samples"][0])


def test_infer_cli_self_consistency_votes_over_its_chains(trained_model_dir, capsys):
  code = cli.main(["infer", f"--checkpoint={trained_model_dir}", "--prompt=What is 2 + 3?",
                   "--self_consistency", "--num_samples=5", f"--max_new_tokens={STEPS}", "--json"])
  assert code == 0
  (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert len(record["samples"]) == len(record["answers"]) == 5
  # Each chain's answer is the text after the last "answer is" (or the whole chain, stripped).
  for chain, answer in zip(record["samples"], record["answers"]):
    tail = re.split(r"answer is", chain, flags=re.IGNORECASE)[-1]
    assert answer.strip(" .") in tail
  votes = collections.Counter(a for a in record["answers"] if a)
  assert record["answer"] == (votes.most_common(1)[0][0] if votes else "")


def test_infer_cli_rejects_bad_settings_before_loading(tmp_path, capsys):
  missing = str(tmp_path / "nowhere")
  assert cli.main(["infer", f"--checkpoint={missing}", "--prompt=x", "--top_p=1.5"]) == 2
  assert "top_p must be in (0, 1]" in capsys.readouterr().err
  assert cli.main(["infer", f"--checkpoint={missing}", "--prompt=x"]) == 2
  assert "does not exist" in capsys.readouterr().err
