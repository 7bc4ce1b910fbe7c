"""The UL2 / UL2R mixture of denoisers as seqio preprocessors.

One preprocessor, `ul2_denoise`, turns a tokenized corpus into prefix-LM examples
`{"inputs", "targets", "denoiser"}` for a `DenoiserMixture`:

1. Documents are concatenated (T5 convention: no separator) in groups of `docs_per_group`.
2. Each group's token stream is cut into consecutive segments; every segment draws ONE denoiser
   with the mixture's rates (per example, never by sharding the corpus per denoiser) and has the
   length that denoiser uses, so no text is dropped (only a group's last segment may be shorter).
3. R / X denoisers: T5 span corruption (`random_spans_noise_mask`). Inputs `n0 <s0> n1 <s1> ...`,
   targets `<s0> z0 <s1> z1 ...`. S denoiser: split at one point; prefix -> inputs, rest -> targets.
4. The mode token (ordinary text, e.g. "[NLU]") is prepended to the inputs after corruption, so it
   is never masked; `seqio.preprocessors.append_eos_after_trim` then appends EOS.

Every random choice is a stateless op seeded by `seqio.map_over_dataset(num_seeds=1)` (so
`Task.get_dataset(seed=...)` fixes the examples) folded with a hash of the tokens at hand, so that
host shards, which read different data with the same seed stream, draw independent denoisers.

Sentinel k has id `vocab_size - 1 - k`: the vocabulary's extra ids when it has them, otherwise the
last 100 ids of the vocabulary (U-PaLM), or `DenoiserMixture.num_sentinels` of them. A mixture that
can need more spans than there are sentinels is rejected when its task is defined, unless
`cap_spans=True` asks for fewer, longer spans.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

SPAN_CORRUPTION_KINDS = ("R", "X")
PREFIX_LM_KIND = "S"
DEFAULT_NUM_SENTINELS_WITHOUT_EXTRA_IDS = 100  # U-PaLM reused the last 100 ids of PaLM's vocab
DEFAULT_DOCS_PER_GROUP = 512  # documents concatenated before cutting segments
_MIN_FRACTION = 1e-6  # keeps floor(a / (1 - f)) and floor(b / f) finite


# ------------------------------------------------------------------------------------------------
# Configuration.

@dataclasses.dataclass(frozen=True)
class Denoiser:
  """One denoiser of a mixture.

  Attributes:
    kind: "R" or "X" (span corruption; the letters only name regular vs. extreme settings) or
      "S" (prefix LM).
    rate: sampling weight of this denoiser in its mixture (normalised over the mixture).
    mode_token: text prepended to the inputs, e.g. "[NLU]"; "" for none.
    mean_span_length: R/X only: mean noise span length (mu).
    corruption_rate: R/X only: fraction of the segment's tokens that are noise (r).
    target_fraction: S only: fraction of the segment that goes to the targets; None draws it
      uniformly from (0, 1) per example (a uniform split point, as in the 2022 UL2 code).
  """
  kind: str
  rate: float
  mode_token: str
  mean_span_length: float = 3.0
  corruption_rate: float = 0.15
  target_fraction: float | None = None

  def __post_init__(self):
    if self.kind not in SPAN_CORRUPTION_KINDS + (PREFIX_LM_KIND,):
      raise ValueError(f"denoiser kind must be 'R', 'X' or 'S', got {self.kind!r}")
    if not self.rate > 0:
      raise ValueError(f"{self.name}: rate must be > 0, got {self.rate}")
    if self.is_span_corruption:
      if not self.mean_span_length >= 1:
        raise ValueError(f"{self.name}: mean_span_length must be >= 1, got {self.mean_span_length}")
      if not 0 < self.corruption_rate < 1:
        raise ValueError(f"{self.name}: corruption_rate must be in (0, 1), got "
                         f"{self.corruption_rate}")
    elif self.target_fraction is not None and not 0 < self.target_fraction < 1:
      raise ValueError(f"{self.name}: target_fraction must be in (0, 1) or None (uniform), got "
                       f"{self.target_fraction}")

  @property
  def is_span_corruption(self) -> bool:
    return self.kind in SPAN_CORRUPTION_KINDS

  @property
  def name(self) -> str:
    if self.is_span_corruption:
      return f"{self.kind}(mu={self.mean_span_length:g},r={self.corruption_rate:g})"
    if self.target_fraction is None:
      return "S(uniform)"
    return f"S(frac={self.target_fraction:g})"


@dataclasses.dataclass(frozen=True)
class DenoiserMixture:
  """A mixture of denoisers and the lengths it is defined for.

  Attributes:
    name: label used in logs and error messages.
    denoisers: the denoisers; each example draws one with probability proportional to its rate.
    inputs_length: inputs budget, EOS included. A `sequence_length` given to `get_dataset`
      replaces it (and the sentinel check is repeated for it).
    targets_length: targets budget, EOS included; replaced the same way.
    num_sentinels: how many ids, counted down from `vocab_size - 1`, serve as sentinels. None:
      the vocabulary's extra ids, or the last 100 ids when it has none (U-PaLM).
    cap_spans: if a denoiser can need more spans than sentinels, use fewer, longer spans instead
      of raising an error.
    random_roll: rotate each noise mask by a random offset (later T5) so that the last span does
      not always end the segment; may split one span in two. Off by default, like the 2022 code.
    docs_per_group: documents concatenated before cutting segments (fewer short last segments
      when larger).
  """
  name: str
  denoisers: tuple[Denoiser, ...]
  inputs_length: int = 1024
  targets_length: int = 1024
  num_sentinels: int | None = None
  cap_spans: bool = False
  random_roll: bool = False
  docs_per_group: int = DEFAULT_DOCS_PER_GROUP

  def __post_init__(self):
    object.__setattr__(self, "denoisers", tuple(self.denoisers))
    if not self.denoisers:
      raise ValueError(f"mixture {self.name!r} has no denoisers")
    names = [d.name for d in self.denoisers]
    if len(set(names)) != len(names):
      raise ValueError(f"mixture {self.name!r} lists a denoiser twice: {names}; merge their rates")
    if self.num_sentinels is not None and self.num_sentinels < 1:
      raise ValueError(f"mixture {self.name!r}: num_sentinels must be >= 1 or None")
    if self.docs_per_group < 1:
      raise ValueError(f"mixture {self.name!r}: docs_per_group must be >= 1")

  @property
  def rates(self) -> tuple[float, ...]:
    total = sum(d.rate for d in self.denoisers)
    return tuple(d.rate / total for d in self.denoisers)


def _span(kind: str, rate: float, mode_token: str, mu: float, r: float) -> Denoiser:
  return Denoiser(kind, rate, mode_token, mean_span_length=mu, corruption_rate=r)


@gin.configurable
def ul2r_preset(inputs_length: int = 1024, targets_length: int = 1024,
                x_mean_span_length: float = 32.0, x_corruption_rate: float = 0.5,
                s_target_fraction: float | None = None,
                mode_tokens: Sequence[str] = ("[NLU]", "[NLG]", "[S2S]"),
                **mixture_overrides) -> DenoiserMixture:
  """U-PaLM's UL2R: 50% S, 25% R(3, .15), 25% X (OPEN; default mu=32, r=.5), 1024 + 1024.

  `mode_tokens` are the R, X and S mode tokens in that order.
  """
  nlu, nlg, s2s = mode_tokens
  return DenoiserMixture(
      name="UL2R",
      denoisers=(Denoiser("S", 0.50, s2s, target_fraction=s_target_fraction),
                 _span("R", 0.25, nlu, 3, 0.15),
                 _span("X", 0.25, nlg, x_mean_span_length, x_corruption_rate)),
      inputs_length=inputs_length, targets_length=targets_length, **mixture_overrides)


@gin.configurable
def ul2_preset(inputs_length: int = 1024, targets_length: int = 1024,
               s_target_fraction: float | None = 0.25,
               mode_tokens: Sequence[str] = ("[NLU]", "[NLG]", "[S2S]"),
               **mixture_overrides) -> DenoiserMixture:
  """UL2's 7 denoisers, mixed uniformly. X(3, .5) and X(8, .5) need more than 100 sentinels
  beyond ~380 inputs tokens: use more sentinels or `cap_spans=True` there."""
  nlu, nlg, s2s = mode_tokens
  rate = 1.0 / 7
  return DenoiserMixture(
      name="UL2",
      denoisers=(_span("R", rate, nlu, 3, 0.15), _span("R", rate, nlu, 8, 0.15),
                 _span("X", rate, nlg, 3, 0.5), _span("X", rate, nlg, 8, 0.5),
                 _span("X", rate, nlg, 64, 0.15), _span("X", rate, nlg, 64, 0.5),
                 Denoiser("S", rate, s2s, target_fraction=s_target_fraction)),
      inputs_length=inputs_length, targets_length=targets_length, **mixture_overrides)


PRESETS = {"UL2R": ul2r_preset, "UL2": ul2_preset}
UL2R = ul2r_preset()
UL2 = ul2_preset()


@gin.configurable
def demo_task_lengths(inputs_length: int = 128, targets_length: int = 128) -> dict[str, int]:
  """Registered lengths of the demo UL2 tasks (tasks/ul2r.py), sized for a tiny CPU model.

  Defined here rather than in the task module so that gin can bind it before the tasks register.
  """
  return {"inputs_length": inputs_length, "targets_length": targets_length}


@gin.configurable
def get_preset(name: str = "UL2R", **overrides) -> DenoiserMixture:
  """A preset by name ("UL2R" or "UL2"), with keyword overrides of its factory's arguments."""
  if name not in PRESETS:
    raise ValueError(f"unknown denoiser preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name](**overrides)


# ------------------------------------------------------------------------------------------------
# Length arithmetic (plain Python; the graph below uses the same float64 formulas).

def num_noise_tokens(length: int, corruption_rate: float) -> int:
  """T5: round(L * r), clipped to [1, L - 1]."""
  return int(min(max(round(length * corruption_rate), 1), length - 1))


def num_noise_spans(num_noise: int, mean_span_length: float, max_spans: int | None = None) -> int:
  """T5: max(1, round(num_noise / mu)), optionally capped at `max_spans`."""
  spans = max(1, round(num_noise / mean_span_length))
  return spans if max_spans is None else min(spans, max_spans)


def _span_corruption_lengths(length: int, d: Denoiser, random_roll: bool,
                             max_spans: int | None) -> tuple[int, int, int]:
  """(inputs tokens, targets tokens, sentinels) for a segment of `length`, no mode token / EOS."""
  noise = num_noise_tokens(length, d.corruption_rate)
  spans = min(num_noise_spans(noise, d.mean_span_length, max_spans), noise, length - noise)
  sentinels = spans + (1 if random_roll else 0)  # a roll can cut one span in two
  return length - noise + sentinels, noise + sentinels, sentinels


def span_corruption_segment_length(d: Denoiser, inputs_budget: int, targets_budget: int,
                                   random_roll: bool = False,
                                   max_spans: int | None = None) -> int:
  """Largest raw segment length whose corrupted inputs and targets fit their budgets.

  Budgets exclude EOS and the mode token. The needed lengths never decrease with the segment
  length, so any shorter segment fits too.
  """
  for length in range(inputs_budget + targets_budget, 1, -1):
    inputs, targets, _ = _span_corruption_lengths(length, d, random_roll, max_spans)
    if inputs <= inputs_budget and targets <= targets_budget:
      return length
  raise ValueError(f"{d.name}: inputs budget {inputs_budget} and targets budget {targets_budget} "
                   f"(after EOS and mode token) cannot hold even a 2-token segment")


def prefix_lm_max_segment_length(inputs_budget: int, targets_budget: int) -> int:
  if inputs_budget < 1 or targets_budget < 1:
    raise ValueError(f"S denoiser needs at least one inputs and one targets token, got budgets "
                     f"{inputs_budget} / {targets_budget} after EOS and mode token")
  return inputs_budget + targets_budget


# ------------------------------------------------------------------------------------------------
# Compilation of a mixture against a vocabulary and lengths.

@dataclasses.dataclass(frozen=True)
class CompiledDenoiser:
  denoiser: Denoiser
  mode_ids: tuple[int, ...]
  inputs_budget: int   # raw inputs tokens (sentinels included), without mode token and EOS
  targets_budget: int  # raw targets tokens, without EOS
  segment_length: int  # the longest raw segment this denoiser uses
  max_sentinels: int   # sentinels the longest segment needs (0 for S)


@dataclasses.dataclass(frozen=True)
class CompiledMixture:
  mixture: DenoiserMixture
  denoisers: tuple[CompiledDenoiser, ...]
  inputs_length: int
  targets_length: int
  first_sentinel_id: int  # sentinel k is first_sentinel_id - k
  num_sentinels: int

  @property
  def max_segment_length(self) -> int:
    return max(d.segment_length for d in self.denoisers)

  @property
  def min_segment_length(self) -> int:
    """A lower bound on any segment but a stream's last (S: T(f) >= min of its two budgets)."""
    return max(2, min(d.segment_length if d.denoiser.is_span_corruption
                      else min(d.inputs_budget, d.targets_budget) for d in self.denoisers))

  @property
  def sentinel_ids(self) -> range:
    return range(self.first_sentinel_id, self.first_sentinel_id - self.num_sentinels, -1)


def available_sentinels(vocabulary: seqio.Vocabulary, num_sentinels: int | None = None) -> int:
  """How many ids, counted down from `vocab_size - 1`, are sentinels."""
  if num_sentinels is None:
    extra_ids = getattr(vocabulary, "extra_ids", 0) or 0
    num_sentinels = extra_ids if extra_ids > 0 else DEFAULT_NUM_SENTINELS_WITHOUT_EXTRA_IDS
  if num_sentinels >= vocabulary.vocab_size:
    raise ValueError(f"num_sentinels={num_sentinels} leaves no ordinary token in a vocabulary of "
                     f"{vocabulary.vocab_size} ids")
  return num_sentinels


def compile_mixture(mixture: DenoiserMixture, vocabulary: seqio.Vocabulary,
                    sequence_length: Mapping[str, int | None] | None = None) -> CompiledMixture:
  """Checks `mixture` against the vocabulary and lengths; raises ValueError on any misfit."""
  inputs_length, targets_length = mixture.inputs_length, mixture.targets_length
  if sequence_length and sequence_length.get("inputs") and sequence_length.get("targets"):
    inputs_length, targets_length = sequence_length["inputs"], sequence_length["targets"]
  sentinels = available_sentinels(vocabulary, mixture.num_sentinels)
  compiled = []
  for d in mixture.denoisers:
    mode_ids = tuple(int(i) for i in vocabulary.encode(d.mode_token)) if d.mode_token else ()
    inputs_budget = inputs_length - 1 - len(mode_ids)
    targets_budget = targets_length - 1
    where = (f"mixture {mixture.name!r}, denoiser {d.name} at inputs_length={inputs_length}, "
             f"targets_length={targets_length}")
    if inputs_budget < 1 or targets_budget < 1:
      raise ValueError(f"{where}: the mode token {d.mode_token!r} ({len(mode_ids)} tokens) and EOS "
                       f"leave no room for text; raise the lengths")
    if d.is_span_corruption:
      max_spans = sentinels - (1 if mixture.random_roll else 0) if mixture.cap_spans else None
      if max_spans is not None and max_spans < 1:
        raise ValueError(f"{where}: {sentinels} sentinel(s) are too few for random_roll")
      length = span_corruption_segment_length(d, inputs_budget, targets_budget,
                                              mixture.random_roll, max_spans)
      needed = _span_corruption_lengths(length, d, mixture.random_roll, max_spans)[2]
      if needed > sentinels:
        raise ValueError(
            f"{where}: {length}-token segments need up to {needed} sentinels but only {sentinels} "
            f"are available (ids {vocabulary.vocab_size - sentinels}.."
            f"{vocabulary.vocab_size - 1}). "
            f"Lower inputs_length, raise the mean span length, provide more sentinels "
            f"(num_sentinels or a vocabulary with more extra_ids), or set cap_spans=True for "
            f"fewer, longer spans.")
    else:
      length, needed = prefix_lm_max_segment_length(inputs_budget, targets_budget), 0
    compiled.append(CompiledDenoiser(d, mode_ids, inputs_budget, targets_budget, length, needed))
  return CompiledMixture(mixture, tuple(compiled), inputs_length, targets_length,
                         first_sentinel_id=vocabulary.vocab_size - 1, num_sentinels=sentinels)


# ------------------------------------------------------------------------------------------------
# In-graph building blocks.

def random_composition(total: tf.Tensor, num_parts: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Uniformly random split of `total` into `num_parts` positive int32 parts (in order)."""
  cut_candidates = tf.range(1, total, dtype=tf.int32)
  cuts = tf.sort(tf.random.experimental.stateless_shuffle(cut_candidates, seed)[:num_parts - 1])
  bounds = tf.concat([[0], cuts, [total]], axis=0)
  return bounds[1:] - bounds[:-1]


def _round_half_even(x: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.math.round(x), tf.int32)  # tf.math.round is half-to-even, like Python round


def random_spans_noise_mask(length: tf.Tensor, corruption_rate: float, mean_span_length: float,
                            seed: tf.Tensor, max_spans: int | None = None,
                            random_roll: bool = False) -> tf.Tensor:
  """T5's span noise mask: bool[length], True on noise; starts with non-noise unless rolled."""
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  length = tf.cast(length, tf.int32)
  length_f = tf.cast(length, tf.float64)
  num_noise = tf.clip_by_value(_round_half_even(length_f * corruption_rate), 1, length - 1)
  num_spans = tf.maximum(
      1, _round_half_even(tf.cast(num_noise, tf.float64) / mean_span_length))
  if max_spans is not None:
    num_spans = tf.minimum(num_spans, max_spans)
  num_spans = tf.minimum(num_spans, tf.minimum(num_noise, length - num_noise))
  noise_lengths = random_composition(num_noise, num_spans, seeds[0])
  nonnoise_lengths = random_composition(length - num_noise, num_spans, seeds[1])
  run_lengths = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
  run_is_noise = tf.tile([False, True], [num_spans])
  mask = tf.repeat(run_is_noise, run_lengths)
  if random_roll:
    offset = tf.random.stateless_uniform([], seeds[2], minval=0, maxval=length, dtype=tf.int32)
    mask = tf.roll(mask, offset, axis=0)
  return mask


def apply_noise_mask(tokens: tf.Tensor, noise_mask: tf.Tensor,
                     first_sentinel_id: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Inputs `n0 <s0> n1 <s1> ...` and targets `<s0> z0 <s1> z1 ...`; sentinel k = first - k."""
  previous_is_noise = tf.concat([[False], noise_mask[:-1]], axis=0)
  span_starts = tf.logical_and(noise_mask, tf.logical_not(previous_is_noise))
  span_index = tf.cumsum(tf.cast(span_starts, tf.int32)) - 1
  sentinels = first_sentinel_id - span_index
  # Each position contributes up to two tokens: a sentinel (if a span starts there) and itself.
  pairs = tf.reshape(tf.stack([sentinels, tokens], axis=1), [-1])
  keep_in_inputs = tf.reshape(tf.stack([span_starts, tf.logical_not(noise_mask)], axis=1), [-1])
  keep_in_targets = tf.reshape(tf.stack([span_starts, noise_mask], axis=1), [-1])
  return tf.boolean_mask(pairs, keep_in_inputs), tf.boolean_mask(pairs, keep_in_targets)


def prefix_lm_segment_length(fraction: tf.Tensor, inputs_budget: tf.Tensor | int,
                             targets_budget: tf.Tensor | int) -> tf.Tensor:
  """Longest S segment whose prefix round((1 - f) T) and rest round(f T) fit their budgets."""
  fraction = tf.cast(fraction, tf.float64)
  longest = tf.minimum(tf.floor(tf.cast(inputs_budget, tf.float64) / (1 - fraction)),
                       tf.floor(tf.cast(targets_budget, tf.float64) / fraction))
  return tf.maximum(tf.cast(tf.minimum(longest, 1e9), tf.int32), 2)


def prefix_lm_targets_length(length: tf.Tensor, fraction: tf.Tensor, inputs_budget: int,
                             targets_budget: int) -> tf.Tensor:
  """round(f L) target tokens, kept within the budgets and leaving both sides non-empty."""
  targets = _round_half_even(tf.cast(fraction, tf.float64) * tf.cast(length, tf.float64))
  return tf.clip_by_value(targets, tf.maximum(1, length - inputs_budget),
                          tf.minimum(targets_budget, length - 1))


def _content_fingerprint(tokens: tf.Tensor) -> tf.Tensor:
  return tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(tokens), 2**31 - 1)


def _data_dependent_seed(seed, tokens: tf.Tensor) -> tf.Tensor:
  """seqio's per-element seed folded with the data, so shards with equal seeds still differ."""
  return tf.random.experimental.stateless_fold_in(
      tf.cast(tf.stack(seed), tf.int64), _content_fingerprint(tokens))


# ------------------------------------------------------------------------------------------------
# The preprocessor.

def group_token_streams(dataset: tf.data.Dataset, docs_per_group: int,
                        key: str = "targets") -> tf.data.Dataset:
  """{key: tokens} documents -> 1-D streams, each the concatenation of `docs_per_group` of them."""
  tokens = dataset.map(lambda x: x[key], num_parallel_calls=tf.data.AUTOTUNE)
  tokens = tokens.filter(lambda t: tf.size(t) > 0)

  def flatten(group: tf.RaggedTensor | tf.Tensor) -> dict[str, tf.Tensor]:
    # Dense when every sequence has the same static length.
    stream = group.flat_values if isinstance(group, tf.RaggedTensor) else tf.reshape(group, [-1])
    return {key: stream}

  return tokens.ragged_batch(docs_per_group).map(flatten, num_parallel_calls=tf.data.AUTOTUNE)


def concatenate_and_chunk(dataset: tf.data.Dataset, chunk_length: int, docs_per_group: int,
                          key: str = "targets") -> tf.data.Dataset:
  """Concatenates groups of token sequences and cuts them into chunks (>= 2 tokens) of a length."""

  def cut(group: Mapping[str, tf.Tensor]) -> tf.RaggedTensor:
    total = tf.size(group[key])
    remainder = total % chunk_length
    row_lengths = tf.concat([tf.fill([total // chunk_length], chunk_length),
                             tf.boolean_mask([remainder], [remainder > 0])], axis=0)
    return tf.RaggedTensor.from_row_lengths(group[key], row_lengths)

  streams = group_token_streams(dataset, docs_per_group, key)
  chunks = streams.map(cut, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
  chunks = chunks.filter(lambda t: tf.size(t) >= 2)
  return chunks.map(lambda t: {key: t})


@seqio.map_over_dataset(num_seeds=1)
def _draw_segments(features: Mapping[str, tf.Tensor], seed: tf.Tensor,
                   mixture: CompiledMixture) -> dict[str, tf.Tensor]:
  """Cuts a token stream into consecutive segments, each with its own denoiser drawn by rate.

  Every segment's length is the one its denoiser uses (for S, given its target fraction), so no
  text is dropped; only the stream's last segment may be shorter.
  """
  stream = features["targets"]
  choice_seed, fraction_seed = tf.unstack(
      tf.random.experimental.stateless_split(_data_dependent_seed(seed, stream), 2))
  total = tf.size(stream)
  max_segments = total // mixture.min_segment_length + 1
  cumulative_rates = tf.constant(np.cumsum(mixture.mixture.rates)[:-1], tf.float64)
  draws = tf.random.stateless_uniform([max_segments], choice_seed, dtype=tf.float64)
  index = tf.searchsorted(cumulative_rates, draws, side="right", out_type=tf.int32)

  def per_denoiser(values, dtype):
    return tf.gather(tf.constant(values, dtype), index)

  drawn_fraction = tf.random.stateless_uniform([max_segments], fraction_seed, _MIN_FRACTION,
                                               1 - _MIN_FRACTION, dtype=tf.float64)
  fixed_fraction = per_denoiser([c.denoiser.target_fraction or -1.0 for c in mixture.denoisers],
                                tf.float64)
  fraction = tf.where(fixed_fraction > 0, fixed_fraction, drawn_fraction)
  prefix_lm_length = prefix_lm_segment_length(
      fraction, per_denoiser([c.inputs_budget for c in mixture.denoisers], tf.int32),
      per_denoiser([c.targets_budget for c in mixture.denoisers], tf.int32))
  lengths = tf.where(per_denoiser([c.denoiser.is_span_corruption for c in mixture.denoisers],
                                  tf.bool),
                     per_denoiser([c.segment_length for c in mixture.denoisers], tf.int32),
                     prefix_lm_length)
  starts = tf.cumsum(lengths, exclusive=True)
  count = tf.reduce_sum(tf.cast(starts < total, tf.int32))
  lengths = tf.minimum(lengths[:count], total - starts[:count])  # only the last one is cut
  return {"targets": tf.RaggedTensor.from_row_lengths(stream, lengths),
          "denoiser_index": index[:count], "target_fraction": fraction[:count]}


def _apply_denoiser(tokens: tf.Tensor, seed: tf.Tensor, target_fraction: tf.Tensor,
                    compiled: CompiledDenoiser,
                    mixture: CompiledMixture) -> tuple[tf.Tensor, tf.Tensor]:
  d = compiled.denoiser
  if d.is_span_corruption:
    max_spans = None
    if mixture.mixture.cap_spans:
      max_spans = mixture.num_sentinels - (1 if mixture.mixture.random_roll else 0)
    mask = random_spans_noise_mask(tf.size(tokens), d.corruption_rate, d.mean_span_length, seed,
                                   max_spans, mixture.mixture.random_roll)
    inputs, targets = apply_noise_mask(tokens, mask, mixture.first_sentinel_id)
  else:
    length = tf.size(tokens)
    prefix_length = length - prefix_lm_targets_length(
        length, target_fraction, compiled.inputs_budget, compiled.targets_budget)
    inputs, targets = tokens[:prefix_length], tokens[prefix_length:]
  mode_ids = tf.constant(compiled.mode_ids, tf.int32, [len(compiled.mode_ids)])
  inputs = tf.concat([mode_ids, inputs], axis=0)
  return inputs, targets


@seqio.map_over_dataset(num_seeds=1)
def _denoise_segment(features: Mapping[str, tf.Tensor], seed: tf.Tensor,
                     mixture: CompiledMixture) -> dict[str, tf.Tensor]:
  tokens, index = features["targets"], features["denoiser_index"]
  seed = _data_dependent_seed(seed, tokens)
  branches = [functools.partial(_apply_denoiser, tokens, seed, features["target_fraction"], c,
                                mixture) for c in mixture.denoisers]
  inputs, targets = tf.switch_case(index, branches)
  names = tf.constant([c.denoiser.name for c in mixture.denoisers])
  return {"inputs": inputs, "targets": targets, "denoiser": tf.gather(names, index)}


def ul2_denoise(dataset: tf.data.Dataset,
                sequence_length: Mapping[str, int | None] | None = None,
                output_features: Mapping[str, seqio.Feature] | None = None,
                *, mixture: DenoiserMixture) -> tf.data.Dataset:
  """seqio preprocessor: tokenized `targets` documents -> `{inputs, targets, denoiser}` examples.

  Place it after `seqio.preprocessors.tokenize` and before `append_eos_after_trim`. Lengths come
  from `sequence_length` when both are given, else from the mixture.
  """
  if not output_features or "targets" not in output_features:
    raise ValueError("ul2_denoise needs output_features with a 'targets' feature (its vocabulary "
                     "defines the mode-token ids and the sentinels)")
  compiled = compile_mixture(mixture, output_features["targets"].vocabulary, sequence_length)
  streams = group_token_streams(dataset, mixture.docs_per_group)
  segments = _draw_segments(streams, mixture=compiled).unbatch()
  segments = segments.filter(lambda x: tf.size(x["targets"]) >= 2)
  return _denoise_segment(segments, mixture=compiled)


def ul2_preprocessors(mixture: DenoiserMixture, text_key: str = "text") -> list:
  """The full seqio preprocessor list for a `{text_key: string}` source."""
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_key}),
      functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
      functools.partial(ul2_denoise, mixture=mixture),
      seqio.preprocessors.append_eos_after_trim,
  ]


def ul2_output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """Prefix-LM features for `seqio.PrefixLMFeatureConverter(pack=True)`; `denoiser` rides along."""
  return {"inputs": seqio.Feature(vocabulary, add_eos=True),
          "targets": seqio.Feature(vocabulary, add_eos=True)}


# ------------------------------------------------------------------------------------------------
# Task bookkeeping, so tools (inspect-task) can find a task's mixture.

_TASK_MIXTURES: dict[str, DenoiserMixture] = {}


def remember_task_mixture(task_name: str, mixture: DenoiserMixture) -> None:
  _TASK_MIXTURES[task_name] = mixture


def task_mixture(task_name: str) -> DenoiserMixture | None:
  return _TASK_MIXTURES.get(task_name)

