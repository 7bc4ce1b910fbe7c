"""UL2 denoisers on real demo text, checked against the published definitions (T5 / UL2 / U-PaLM).

The references here are written independently of `ul2flan.denoisers`: the chunking of the corpus,
the span-count formulas, the longest segment that fits, and the distribution of a uniformly random
composition are all recomputed in plain Python.
"""

import collections
import math

import numpy as np
import pytest
import seqio

from ul2flan.ul2 import tasks as ul2_tasks
from ul2flan.ul2 import denoisers
from ul2flan.ul2 import lengths as ul2_lengths
from ul2flan import vocabularies as vocab_lib
from ul2flan.demo import corpus as _demo_corpus  # noqa: F401  (registers the "demo" spec)
from ul2flan.demo import world

EOS = 1
DOCS_PER_GROUP = denoisers.DEFAULT_DOCS_PER_GROUP


@pytest.fixture(scope="module")
def vocabulary():
  return vocab_lib.get_vocabulary()


@pytest.fixture(scope="module")
def corpus_tokens(vocabulary):
  """The first demo training documents, tokenized in order (enough for 2,000 full-row segments)."""
  return [vocabulary.encode(doc) for doc in world.corpus_documents("train", num_documents=8000)]


def reference_stream(doc_tokens):
  """All documents concatenated, in order: segments continue across the cutter's groups."""
  return [t for doc in doc_tokens for t in doc]


def reference_chunks(doc_tokens, chunk_length):
  """The stream cut every `chunk_length` tokens (whole chunks of the tokenized prefix only)."""
  stream = reference_stream(doc_tokens)
  for start in range(0, len(stream) - chunk_length + 1, chunk_length):
    yield stream[start:start + chunk_length]


def assert_segments_tile_the_stream(segments, doc_tokens):
  """Segments, in order, are consecutive pieces of the stream: no text skipped or reused."""
  stream, position = reference_stream(doc_tokens), 0
  for checked, segment in enumerate(segments):
    if position + len(segment) > len(stream):
      return checked  # past the tokenized prefix of the corpus
    assert segment == stream[position:position + len(segment)]
    position += len(segment)
  return len(segments)


def ref_noise(length, rate):
  return min(max(round(length * rate), 1), length - 1)


def ref_spans(noise, mu):
  return max(1, round(noise / mu))


def ref_longest_segment(mu, rate, inputs_room, targets_room, fill_rows):
  """Largest L: with `fill_rows` non-noise + noise + two sentinels per span <= both rooms
  together; else non-noise + one sentinel per span <= inputs room, noise + sentinels <= targets."""
  best = None
  for length in range(2, inputs_room + targets_room + 1):
    noise = ref_noise(length, rate)
    spans = ref_spans(noise, mu)
    inputs, targets = length - noise + spans, noise + spans
    if (inputs + targets <= inputs_room + targets_room if fill_rows
        else inputs <= inputs_room and targets <= targets_room):
      best = length
  return best


def fits(ex, inputs_length, targets_length, fill_rows=True):
  """The example fits the decoder row (fill_rows), or each feature its own length."""
  n_in, n_tgt = len(ex["inputs"]), len(ex["targets"])
  if fill_rows:
    return n_in + n_tgt <= inputs_length + targets_length
  return n_in <= inputs_length and n_tgt <= targets_length


def examples_of(mixture, num, *, seed=0, split="train", shard_info=None, sequence_length=None):
  task = ul2_tasks.register_ul2_task(
      f"test_denoisers_{abs(hash(mixture)) % 10**8}", "demo", mixture, overwrite=True)
  ds = task.get_dataset(sequence_length, split=split, shuffle=False, seed=seed,
                        shard_info=shard_info)
  return list(ds.take(num).as_numpy_iterator())


def single(d, inputs_length, targets_length, **kwargs):
  return denoisers.DenoiserMixture("single", (d,), inputs_length, targets_length, **kwargs)


def parse_span_example(ex, mode_len, vocab_size, num_sentinels=100):
  """-> (reconstructed segment, sentinels in inputs, sentinels in targets, noise span lengths)."""
  inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
  assert inputs[-1] == EOS and targets[-1] == EOS
  assert EOS not in inputs[:-1] and EOS not in targets[:-1]
  is_sentinel = lambda t: t >= vocab_size - num_sentinels
  body, target_body = inputs[mode_len:-1], targets[:-1]
  assert is_sentinel(target_body[0]), "targets must start with a sentinel"
  spans, target_order = {}, []
  for t in target_body:
    if is_sentinel(t):
      target_order.append(t)
      spans[t] = []
    else:
      spans[target_order[-1]].append(t)
  segment, input_order = [], []
  for t in body:
    if is_sentinel(t):
      input_order.append(t)
      segment.extend(spans[t])
    else:
      segment.append(t)
  return segment, input_order, target_order, [len(spans[s]) for s in target_order]


# ------------------------------------------------------------------------------------------------
# R / X span corruption.

SPAN_CASES = [  # (kind, mu, r, inputs_length, targets_length, fill_rows, examples)
    ("R", 3, 0.15, 512, 512, True, 300),
    ("X", 32, 0.5, 512, 512, True, 300),
    ("X", 3, 0.5, 256, 256, True, 400),
    ("R", 3, 0.15, 512, 512, False, 300),  # T5's per-feature sizing
]


@pytest.fixture(scope="module", params=SPAN_CASES,
                ids=lambda c: f"{c[0]}({c[1]},{c[2]}){'' if c[5] else '-per-feature'}")
def span_case(request, vocabulary, corpus_tokens):
  kind, mu, rate, inputs_length, targets_length, fill_rows, num = request.param
  d = denoisers.Denoiser(kind, 1.0, "[NLU]" if kind == "R" else "[NLG]", mu, rate)
  mode_len = len(vocabulary.encode(d.mode_token))
  segment_length = ref_longest_segment(mu, rate, inputs_length - 1 - mode_len, targets_length - 1,
                                       fill_rows)
  chunks = list(reference_chunks(corpus_tokens, segment_length))[:num]
  examples = examples_of(single(d, inputs_length, targets_length, fill_rows=fill_rows),
                         len(chunks))
  return dict(d=d, mode_len=mode_len, segment_length=segment_length, chunks=chunks,
              examples=examples, lengths=(inputs_length, targets_length), fill_rows=fill_rows)


def test_span_corruption_reconstructs_each_segment_exactly(span_case, vocabulary):
  assert len(span_case["examples"]) == len(span_case["chunks"])
  for ex, chunk in zip(span_case["examples"], span_case["chunks"]):
    segment, *_ = parse_span_example(ex, span_case["mode_len"], vocabulary.vocab_size)
    assert segment == chunk


def test_span_counts_follow_the_t5_formulas(span_case, vocabulary):
  d = span_case["d"]
  for ex, chunk in zip(span_case["examples"], span_case["chunks"]):
    _, input_order, _, span_lengths = parse_span_example(
        ex, span_case["mode_len"], vocabulary.vocab_size)
    noise = ref_noise(len(chunk), d.corruption_rate)
    assert sum(span_lengths) == noise
    assert len(span_lengths) == min(ref_spans(noise, d.mean_span_length), noise, len(chunk) - noise)
    assert min(span_lengths) >= 1


def test_measured_rate_and_mean_span_length_match_the_config(span_case, vocabulary):
  d = span_case["d"]
  noise = tokens = spans = 0
  for ex, chunk in zip(span_case["examples"], span_case["chunks"]):
    _, _, _, span_lengths = parse_span_example(ex, span_case["mode_len"], vocabulary.vocab_size)
    noise += sum(span_lengths)
    spans += len(span_lengths)
    tokens += len(chunk)
  assert noise / tokens == pytest.approx(d.corruption_rate, rel=0.03)
  assert noise / spans == pytest.approx(d.mean_span_length, rel=0.04)


def test_sentinels_are_distinct_in_range_and_in_order(span_case, vocabulary):
  top = vocabulary.vocab_size - 1
  for ex in span_case["examples"]:
    _, input_order, target_order, _ = parse_span_example(
        ex, span_case["mode_len"], vocabulary.vocab_size)
    assert input_order == target_order == list(range(top, top - len(input_order), -1))
    assert len(input_order) <= 100


def test_segments_use_the_longest_length_that_fits_and_respect_budgets(span_case, vocabulary):
  inputs_length, targets_length = span_case["lengths"]
  assert all(len(c) == span_case["segment_length"] for c in span_case["chunks"])
  mode_ids = vocabulary.encode(span_case["d"].mode_token)
  for ex in span_case["examples"]:
    assert fits(ex, inputs_length, targets_length, span_case["fill_rows"])
    assert ex["inputs"][:len(mode_ids)].tolist() == mode_ids
  # One more token would not fit: the budget is used as fully as the definition allows.
  longer = span_case["segment_length"] + 1
  d = span_case["d"]
  noise = ref_noise(longer, d.corruption_rate)
  spans = ref_spans(noise, d.mean_span_length)
  inputs, targets = longer - noise + spans + span_case["mode_len"] + 1, noise + spans + 1
  if span_case["fill_rows"]:
    assert inputs + targets > inputs_length + targets_length
    # ... and the row is full: what is left is less than the 3 tokens one more text token costs
    used = [len(ex["inputs"]) + len(ex["targets"]) for ex in span_case["examples"]]
    assert min(used) >= inputs_length + targets_length - 2
  else:
    assert inputs > inputs_length or targets > targets_length


def uniform_composition_marginal(total, parts):
  """P(a given part = j) for a uniformly random composition of `total` into `parts` parts."""
  if parts == 1:
    return {total: 1.0}
  norm = math.comb(total - 1, parts - 1)
  return {j: math.comb(total - j - 1, parts - 2) / norm for j in range(1, total - parts + 2)}


def test_noise_span_lengths_are_a_uniform_composition(span_case, vocabulary):
  d, length = span_case["d"], span_case["segment_length"]
  noise = ref_noise(length, d.corruption_rate)
  parts = ref_spans(noise, d.mean_span_length)
  counts, first_span_total, n_segments = collections.Counter(), 0, 0
  for ex, chunk in zip(span_case["examples"], span_case["chunks"]):
    if len(chunk) == length:
      *_, span_lengths = parse_span_example(ex, span_case["mode_len"], vocabulary.vocab_size)
      counts.update(span_lengths)
      first_span_total += span_lengths[0]
      n_segments += 1
  n = sum(counts.values())
  reference = uniform_composition_marginal(noise, parts)
  total_variation = 0.5 * sum(abs(counts.get(j, 0) / n - p) for j, p in reference.items())
  assert total_variation < 0.08
  if parts > 1:  # no position is favoured: the first span has the same mean as any span
    assert first_span_total / n_segments == pytest.approx(noise / parts, rel=0.25)


def test_segments_start_with_text_and_end_with_noise_without_roll(span_case, vocabulary):
  top = vocabulary.vocab_size - 1
  for ex in span_case["examples"]:
    body = ex["inputs"].tolist()[span_case["mode_len"]:-1]
    assert body[0] < top - 99 and body[-1] == top - (sum(t > top - 100 for t in body) - 1)


def test_random_roll_keeps_reconstruction_and_sentinel_budget(vocabulary, corpus_tokens):
  d = denoisers.Denoiser("X", 1.0, "[NLG]", 8, 0.5)
  mixture = single(d, 256, 256, random_roll=True)
  compiled = ul2_lengths.compile_mixture(mixture, vocabulary)
  chunks = list(reference_chunks(corpus_tokens, compiled.max_segment_length))[:200]
  examples = examples_of(mixture, len(chunks))
  mode_len = len(vocabulary.encode("[NLG]"))
  starts_with_noise = 0
  for ex, chunk in zip(examples, chunks):
    segment, input_order, target_order, _ = parse_span_example(ex, mode_len, vocabulary.vocab_size)
    assert segment == chunk
    assert input_order == target_order
    assert fits(ex, 256, 256)
    starts_with_noise += ex["inputs"][mode_len] >= vocabulary.vocab_size - 100
  assert 0.2 < starts_with_noise / len(examples) < 0.8  # about the noise fraction of positions


# ------------------------------------------------------------------------------------------------
# S (prefix LM).

@pytest.mark.parametrize("target_fraction, fill_rows", [(None, True), (0.25, True), (0.25, False)])
def test_prefix_lm_reconstructs_and_follows_the_target_fraction(
    target_fraction, fill_rows, vocabulary, corpus_tokens):
  inputs_length, targets_length = 128, 128
  d = denoisers.Denoiser("S", 1.0, "[S2S]", target_fraction=target_fraction)
  mode = vocabulary.encode("[S2S]")
  examples = examples_of(single(d, inputs_length, targets_length, fill_rows=fill_rows), 1500)
  fractions, rounding_errors, segments = [], [], []
  for ex in examples:
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert inputs[:len(mode)] == mode and inputs[-1] == EOS and targets[-1] == EOS
    assert fits(ex, inputs_length, targets_length, fill_rows)
    prefix, rest = inputs[len(mode):-1], targets[:-1]
    assert prefix and rest
    segments.append(prefix + rest)  # no sentinel anywhere
    fractions.append(len(rest) / (len(prefix) + len(rest)))
    if target_fraction is not None:
      rounding_errors.append(abs(len(rest) - target_fraction * (len(prefix) + len(rest))))
  assert assert_segments_tile_the_stream(segments, corpus_tokens) == len(segments)
  if fill_rows:  # every segment fills the row: its text, the mode token and two EOS
    longest = inputs_length + targets_length - 2 - len(mode)
  else:  # the longest whose prefix and rest fit their own lengths
    longest = min(math.floor((inputs_length - 1 - len(mode)) / (1 - target_fraction)),
                  math.floor((targets_length - 1) / target_fraction))
  if fill_rows or target_fraction is not None:
    assert set(len(seg) for seg in segments) == {longest}
  fractions = np.sort(fractions)
  if target_fraction is None:  # Kolmogorov-Smirnov distance to U(0, 1), plus rounding slack
    n = len(fractions)
    ks = max(np.max(np.arange(1, n + 1) / n - fractions), np.max(fractions - np.arange(n) / n))
    assert ks < 1.63 / math.sqrt(n) + 0.01
    assert fractions.mean() == pytest.approx(0.5, abs=0.03)
  else:
    assert max(rounding_errors) <= 0.5 + 1e-9  # round(f * T) target tokens, exactly
    assert np.median(fractions) == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("fill_rows", [True, False])
def test_prefix_lm_with_sentinel_is_one_span_at_the_end(fill_rows, vocabulary, corpus_tokens):
  """`Denoiser.sentinel` (T5's span layout for S): inputs `[S2S] prefix <s0> EOS`, targets
  `<s0> rest EOS`, sentinel 0 = the vocabulary's last id; the text still tiles the corpus and
  the example still fits its row (or its two lengths)."""
  d = denoisers.Denoiser("S", 1.0, "[S2S]", target_fraction=0.25, sentinel=True)
  assert d.name == "S(frac=0.25,sentinel)"
  mode, s0 = vocabulary.encode("[S2S]"), vocabulary.vocab_size - 1
  examples = examples_of(single(d, 128, 128, fill_rows=fill_rows), 300)
  segments = []
  for ex in examples:
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert inputs[:len(mode)] == mode and inputs[-2:] == [s0, EOS]
    assert targets[0] == s0 and targets[-1] == EOS
    assert fits(ex, 128, 128, fill_rows)
    segments.append(inputs[len(mode):-2] + targets[1:-1])
    assert s0 not in segments[-1]
  assert assert_segments_tile_the_stream(segments, corpus_tokens) == len(segments)
  if fill_rows:  # the row is full: text, mode token, two sentinels and two EOS
    assert {len(ex["inputs"]) + len(ex["targets"]) for ex in examples} == {256}


# ------------------------------------------------------------------------------------------------
# The mixture.

@pytest.fixture(scope="module")
def ul2r_examples():
  return examples_of(denoisers.ul2r_preset(128, 128), 3000, seed=3)


def test_mixture_shares_match_rates_and_mode_tokens_match(ul2r_examples, vocabulary):
  mixture = denoisers.ul2r_preset(128, 128)
  by_name = {d.name: d for d in mixture.denoisers}
  counts = collections.Counter(ex["denoiser"].decode() for ex in ul2r_examples)
  n = len(ul2r_examples)
  for d, rate in zip(mixture.denoisers, mixture.rates):
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert abs(counts[d.name] / n - rate) < 4 * sigma, (d.name, counts)
  for ex in ul2r_examples:
    d = by_name[ex["denoiser"].decode()]
    mode = vocabulary.encode(d.mode_token)
    assert ex["inputs"][:len(mode)].tolist() == mode
    assert fits(ex, 128, 128)
    has_sentinel = np.any(ex["inputs"] >= vocabulary.vocab_size - 100)
    assert has_sentinel == d.is_span_corruption


def test_mixture_segments_tile_the_corpus_without_dropping_text(ul2r_examples, vocabulary,
                                                                 corpus_tokens):
  mixture = denoisers.ul2r_preset(128, 128)
  by_name = {d.name: d for d in mixture.denoisers}
  segments = []
  for ex in ul2r_examples:
    d = by_name[ex["denoiser"].decode()]
    mode_len = len(vocabulary.encode(d.mode_token))
    if d.is_span_corruption:
      segments.append(parse_span_example(ex, mode_len, vocabulary.vocab_size)[0])
    else:
      segments.append(ex["inputs"].tolist()[mode_len:-1] + ex["targets"].tolist()[:-1])
  assert assert_segments_tile_the_stream(segments, corpus_tokens) > 2000


def test_denoiser_is_chosen_per_example_not_per_block(ul2r_examples):
  names = [ex["denoiser"].decode() for ex in ul2r_examples]
  switches = sum(a != b for a, b in zip(names, names[1:]))
  # Independent draws with rates (.5, .25, .25) switch with probability 1 - .375 = .625.
  assert switches / (len(names) - 1) == pytest.approx(0.625, abs=0.05)


def test_same_seed_same_examples_other_seed_other_examples():
  mixture = denoisers.ul2r_preset(128, 128)
  a = examples_of(mixture, 50, seed=7)
  b = examples_of(mixture, 50, seed=7)
  c = examples_of(mixture, 50, seed=8)
  as_tuples = lambda exs: [(tuple(e["inputs"]), tuple(e["targets"]), e["denoiser"]) for e in exs]
  assert as_tuples(a) == as_tuples(b)
  assert as_tuples(a) != as_tuples(c)


def test_host_shards_read_disjoint_data_and_draw_independent_denoisers(vocabulary):
  mixture = single(denoisers.Denoiser("S", 1.0, "[S2S]", target_fraction=0.5), 128, 128)
  shards = [examples_of(mixture, 150, seed=1, shard_info=seqio.ShardInfo(i, 2)) for i in (0, 1)]
  texts = [{tuple(e["inputs"][6:-1]) + tuple(e["targets"][:-1]) for e in s} for s in shards]
  assert texts[0].isdisjoint(texts[1])
  ul2r = denoisers.ul2r_preset(128, 128)
  names = [[e["denoiser"] for e in examples_of(ul2r, 100, seed=1, shard_info=seqio.ShardInfo(i, 2))]
           for i in (0, 1)]
  assert names[0] != names[1]  # same seed stream, different data: choices are not copied


# ------------------------------------------------------------------------------------------------
# Configuration checks.

def test_more_spans_than_sentinels_is_rejected_at_definition_naming_the_limit(vocabulary):
  x = denoisers.Denoiser("X", 1.0, "[NLG]", 3, 0.5)
  with pytest.raises(ValueError, match=r"X\(mu=3,r=0.5\).*inputs_length=1024.*only 100"):
    ul2_tasks.register_ul2_task("test_too_many_spans", "demo", single(x, 1024, 1024),
                                     vocabulary, overwrite=True)
  assert "test_too_many_spans" not in seqio.TaskRegistry.names()
  with pytest.raises(ValueError, match="only 100"):
    ul2_lengths.compile_mixture(denoisers.ul2_preset(1024, 1024), vocabulary)


def test_cap_spans_uses_fewer_longer_spans_within_the_sentinels(vocabulary, corpus_tokens):
  x = denoisers.Denoiser("X", 1.0, "[NLG]", 3, 0.5)
  mixture = single(x, 1024, 1024, cap_spans=True)
  mode_len = len(vocabulary.encode("[NLG]"))
  examples = examples_of(mixture, 20)
  chunk_length = ul2_lengths.compile_mixture(mixture, vocabulary).max_segment_length
  for ex, chunk in zip(examples, reference_chunks(corpus_tokens, chunk_length)):
    segment, input_order, _, span_lengths = parse_span_example(ex, mode_len, vocabulary.vocab_size)
    assert segment == chunk
    assert len(input_order) <= 100
    assert fits(ex, 1024, 1024)
  assert np.mean(span_lengths) > 3  # longer spans than configured: the cap is in force


def test_vocabulary_without_extra_ids_uses_its_last_100_ids():
  plain = seqio.SentencePieceVocabulary(vocab_lib.DEMO_SPM_PATH)  # 668 ids, no extra ids
  compiled = ul2_lengths.compile_mixture(denoisers.ul2r_preset(128, 128), plain)
  assert compiled.num_sentinels == 100
  assert list(compiled.sentinel_ids)[:2] == [667, 666] and min(compiled.sentinel_ids) == 568
  compiled = ul2_lengths.compile_mixture(denoisers.ul2r_preset(128, 128, num_sentinels=20), plain)
  assert min(compiled.sentinel_ids) == 648


def test_runtime_sequence_length_replaces_the_registered_lengths(vocabulary):
  examples = examples_of(denoisers.ul2r_preset(128, 128), 200,
                         sequence_length={"inputs": 64, "targets": 32})
  assert {len(e["inputs"]) + len(e["targets"]) for e in examples} <= {94, 95, 96}  # full rows


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="Y", rate=1.0, mode_token=""), "kind"),
    (dict(kind="R", rate=1.0, mode_token="", mean_span_length=0.5), "mean_span_length"),
    (dict(kind="X", rate=1.0, mode_token="", corruption_rate=1.0), "corruption_rate"),
    (dict(kind="S", rate=1.0, mode_token="", target_fraction=1.5), "target_fraction"),
    (dict(kind="S", rate=0.0, mode_token=""), "rate"),
    (dict(kind="R", rate=1.0, mode_token="", sentinel=True), "sentinel"),
])
def test_bad_denoiser_configs_are_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message):
    denoisers.Denoiser(**kwargs)


def test_mode_token_that_leaves_no_room_is_rejected(vocabulary):
  d = denoisers.Denoiser("S", 1.0, "[S2S] " * 10)
  with pytest.raises(ValueError, match="mode token"):
    ul2_lengths.compile_mixture(single(d, 16, 16), vocabulary)


def test_presets_reproduce_the_papers():
  ul2r = denoisers.get_preset("UL2R")
  assert (ul2r.inputs_length, ul2r.targets_length) == (1024, 1024)
  assert {(d.kind, d.mean_span_length if d.kind != "S" else None,
           d.corruption_rate if d.kind != "S" else None, d.mode_token, r)
          for d, r in zip(ul2r.denoisers, ul2r.rates)} == {
              ("S", None, None, "[S2S]", 0.5), ("R", 3, 0.15, "[NLU]", 0.25),
              ("X", 32, 0.5, "[NLG]", 0.25)}
  ul2 = denoisers.get_preset("UL2")
  assert sorted((d.kind, d.mean_span_length, d.corruption_rate) for d in ul2.denoisers
                if d.kind != "S") == [("R", 3, 0.15), ("R", 8, 0.15), ("X", 3, 0.5), ("X", 8, 0.5),
                                      ("X", 64, 0.15), ("X", 64, 0.5)]
  s = [d for d in ul2.denoisers if d.kind == "S"]
  assert len(s) == 1 and s[0].target_fraction == 0.25 and s[0].mode_token == "[S2S]"
  assert [d.mode_token for d in ul2.denoisers].count("[NLG]") == 4
  assert ul2.rates == pytest.approx([1 / 7] * 7)
  with pytest.raises(ValueError, match="unknown denoiser preset"):
    denoisers.get_preset("UL3")
