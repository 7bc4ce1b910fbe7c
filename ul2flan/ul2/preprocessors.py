"""The UL2 / UL2R mixture of denoisers as seqio preprocessors (tf.data, in-graph).

One preprocessor, `ul2_denoise`, turns a tokenized corpus into prefix-LM examples
`{"inputs", "targets", "denoiser"}` for a `DenoiserMixture`:

1. Documents are concatenated (T5 convention: no separator) in groups of `docs_per_group`.
2. The token stream is cut into consecutive segments; every segment draws ONE denoiser with the
   mixture's rates (per example, never by sharding the corpus per denoiser) and has the length
   that denoiser uses (`ul2flan.ul2.lengths`: by default inputs + targets fill one decoder row).
   Text after a group's last whole segment starts the next group's first: no text is dropped and
   no segment is short, except the very last of a finite dataset.
3. R / X denoisers: T5 span corruption (`random_spans_noise_mask`). Inputs `n0 <s0> n1 <s1> ...`,
   targets `<s0> z0 <s1> z1 ...`. S denoiser: split at one point; prefix -> inputs, rest -> targets
   (with `Denoiser.sentinel`: `prefix <s0>` -> inputs, `<s0> rest` -> targets).
4. The mode token (ordinary text, e.g. "[NLU]") is prepended to the inputs after corruption, so it
   is never masked; `append_eos` then appends EOS to the targets, and to the inputs unless the
   mixture says `inputs_eos=False` (nothing is trimmed: the lengths already include it).

Every random choice is a stateless op seeded by `seqio.map_over_dataset(num_seeds=1)` (so
`Task.get_dataset(seed=...)` fixes the examples) folded with a hash of the tokens at hand, so that
host shards, which read different data with the same seed stream, draw independent denoisers.

Sentinel ids come from `ul2flan.vocabularies.sentinel_ids` (T5: sentinel k is `vocab_size - 1 - k`).
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from ul2flan import gin_checks
from ul2flan.ul2.denoisers import DenoiserMixture
from ul2flan.ul2.lengths import CompiledDenoiser, CompiledMixture, compile_mixture

_MIN_FRACTION = 1e-6  # keeps floor(a / (1 - f)) and floor(b / f) finite
_NO_PENDING = -1  # no denoiser drawn yet for the text carried to the next stream


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
                     sentinel_ids: Sequence[int]) -> tuple[tf.Tensor, tf.Tensor]:
  """Inputs `n0 <s0> n1 <s1> ...` and targets `<s0> z0 <s1> z1 ...`; <sk> is sentinel_ids[k]."""
  previous_is_noise = tf.concat([[False], noise_mask[:-1]], axis=0)
  span_starts = tf.logical_and(noise_mask, tf.logical_not(previous_is_noise))
  span_index = tf.cumsum(tf.cast(span_starts, tf.int32)) - 1
  sentinels = tf.gather(tf.constant(sentinel_ids, tf.int32), tf.maximum(span_index, 0))
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


def _data_dependent_seed(seed: tf.Tensor, tokens: tf.Tensor) -> tf.Tensor:
  """seqio's per-element seed ([2]) folded with the data, so shards with equal seeds differ."""
  return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64),
                                                  _content_fingerprint(tokens))


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
def _with_seed(features: Mapping[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
  return {"targets": features["targets"], "seed": tf.stack(seed), "last": tf.constant(False)}


def _draw_denoisers(seed: tf.Tensor, count: tf.Tensor,
                    mixture: CompiledMixture) -> tuple[tf.Tensor, tf.Tensor]:
  """`count` independent draws of (denoiser index, S target fraction), with the mixture's rates."""
  choice_seed, fraction_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  cumulative_rates = tf.constant(np.cumsum(mixture.mixture.rates)[:-1], tf.float64)
  draws = tf.random.stateless_uniform([count], choice_seed, dtype=tf.float64)
  index = tf.searchsorted(cumulative_rates, draws, side="right", out_type=tf.int32)
  drawn_fraction = tf.random.stateless_uniform([count], fraction_seed, _MIN_FRACTION,
                                               1 - _MIN_FRACTION, dtype=tf.float64)
  fixed_fraction = tf.gather(tf.constant(
      [c.denoiser.target_fraction or -1.0 for c in mixture.denoisers], tf.float64), index)
  return index, tf.where(fixed_fraction > 0, fixed_fraction, drawn_fraction)


def _segment_lengths(index: tf.Tensor, fraction: tf.Tensor, mixture: CompiledMixture) -> tf.Tensor:
  """The length each drawn denoiser uses (S without fill_rows: the longest for its fraction)."""

  def per_denoiser(values, dtype):
    return tf.gather(tf.constant(values, dtype), index)

  varying = prefix_lm_segment_length(
      fraction, per_denoiser([c.inputs_budget for c in mixture.denoisers], tf.int32),
      per_denoiser([c.targets_budget for c in mixture.denoisers], tf.int32))
  return tf.where(per_denoiser([c.fixed_length for c in mixture.denoisers], tf.bool),
                  per_denoiser([c.segment_length for c in mixture.denoisers], tf.int32), varying)


def _cut_step(carry, features: Mapping[str, tf.Tensor], mixture: CompiledMixture):
  """One scan step: the text left over + the next stream -> whole segments, and a new leftover.

  The leftover's already drawn denoiser (pending) is kept for the segment it starts, so every
  segment's denoiser is one independent draw in stream order. The `last` element flushes the
  leftover as a shorter final segment.
  """
  leftover, pending_index, pending_fraction = carry
  stream = tf.concat([leftover, features["targets"]], axis=0)
  total = tf.size(stream)
  index, fraction = _draw_denoisers(_data_dependent_seed(features["seed"], features["targets"]),
                                    total // mixture.min_segment_length + 2, mixture)
  has_pending = pending_index >= 0
  index = tf.concat([tf.where(has_pending, pending_index, index[:1]), index[1:]], axis=0)
  fraction = tf.concat([tf.where(has_pending, pending_fraction, fraction[:1]), fraction[1:]],
                       axis=0)
  lengths = _segment_lengths(index, fraction, mixture)
  starts = tf.cumsum(lengths, exclusive=True)
  count = tf.where(features["last"], tf.reduce_sum(tf.cast(starts < total, tf.int32)),
                   tf.reduce_sum(tf.cast(starts + lengths <= total, tf.int32)))
  lengths = tf.minimum(lengths[:count], total - starts[:count])  # only a flushed last is cut
  used = tf.reduce_sum(lengths)
  next_index = tf.where(features["last"], _NO_PENDING, index[count])
  segments = {"targets": stream[:used], "lengths": lengths, "denoiser_index": index[:count],
              "target_fraction": fraction[:count]}
  return (stream[used:], next_index, fraction[count]), segments


def cut_segments(streams: tf.data.Dataset, mixture: CompiledMixture) -> tf.data.Dataset:
  """Token streams -> consecutive segments, each with its own denoiser drawn by rate.

  Every segment has the length its denoiser uses (for S without fill_rows, given its target
  fraction). Text after a stream's last whole segment starts the next stream's first, so no text
  is dropped and no segment is short, except the very last of a finite dataset.
  """
  streams = _with_seed(streams)
  flush = tf.data.Dataset.from_tensors(
      {"targets": tf.zeros([0], tf.int32), "seed": tf.zeros([2], tf.int64),
       "last": tf.constant(True)})
  start = (tf.zeros([0], tf.int32), tf.constant(_NO_PENDING), tf.constant(0.5, tf.float64))
  pieces = streams.concatenate(flush).scan(start, functools.partial(_cut_step, mixture=mixture))

  def split(piece):
    return {"targets": tf.RaggedTensor.from_row_lengths(piece["targets"], piece["lengths"]),
            "denoiser_index": piece["denoiser_index"],
            "target_fraction": piece["target_fraction"]}

  segments = pieces.map(split, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
  return segments.filter(lambda x: tf.size(x["targets"]) >= 2)


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
    inputs, targets = apply_noise_mask(tokens, mask, mixture.sentinel_ids)
  else:
    length = tf.size(tokens)
    prefix_length = length - prefix_lm_targets_length(
        length, target_fraction, compiled.inputs_budget, compiled.targets_budget)
    inputs, targets = tokens[:prefix_length], tokens[prefix_length:]
    if d.sentinel:  # T5's span layout with the one span at the end
      first = tf.constant(mixture.sentinel_ids[:1], tf.int32)
      inputs, targets = tf.concat([inputs, first], 0), tf.concat([first, targets], 0)
  mode_ids = tf.constant(compiled.mode_ids, tf.int32, [len(compiled.mode_ids)])
  inputs = tf.concat([mode_ids, inputs], axis=0)
  return inputs, targets


@seqio.map_over_dataset(num_seeds=1)
def _denoise_segment(features: Mapping[str, tf.Tensor], seed: tf.Tensor,
                     mixture: CompiledMixture) -> dict[str, tf.Tensor]:
  tokens, index = features["targets"], features["denoiser_index"]
  seed = _data_dependent_seed(tf.stack(seed), tokens)
  branches = [functools.partial(_apply_denoiser, tokens, seed, features["target_fraction"], c,
                                mixture) for c in mixture.denoisers]
  inputs, targets = tf.switch_case(index, branches)
  names = tf.constant([c.denoiser.name for c in mixture.denoisers])
  return {"inputs": inputs, "targets": targets, "denoiser": tf.gather(names, index)}


def ul2_denoise(dataset: tf.data.Dataset,
                sequence_length: Mapping[str, int | None] | None = None,
                output_features: Mapping[str, seqio.Feature] | None = None,
                *, mixture: DenoiserMixture | Callable[[], DenoiserMixture]) -> tf.data.Dataset:
  """seqio preprocessor: tokenized `targets` documents -> `{inputs, targets, denoiser}` examples.

  Place it after `seqio.preprocessors.tokenize` and before `append_eos`. Lengths come from
  `sequence_length` when both are given, else from the mixture.
  """
  if not output_features or "targets" not in output_features:
    raise ValueError("ul2_denoise needs output_features with a 'targets' feature (its vocabulary "
                     "defines the mode-token ids and the sentinels)")
  if callable(mixture):  # built now, when the dataset is: see ul2flan.ul2.tasks
    mixture = mixture()
  if mixture.fill_rows:
    check_t5x_consumer_takes_full_rows()
  compiled = compile_mixture(mixture, output_features["targets"].vocabulary, sequence_length)
  streams = group_token_streams(dataset, mixture.docs_per_group)
  return _denoise_segment(cut_segments(streams, compiled), mixture=compiled)


T5X_CONVERTER_PARAMETER = "DecoderOnlyModel.feature_converter_cls"
FULL_ROW_CONVERTER = "FullRowDecoderFeatureConverter"  # registered by ul2flan_tasks


def check_t5x_consumer_takes_full_rows() -> None:
  """Upstream t5x's route: a model left with seqio's stock converter cannot take full rows (it
  checks each feature against its own length and fails at the first batch, inside tf.data).

  When t5x's `DecoderOnlyModel` is in the gin registry, its `feature_converter_cls` binding must
  name ul2flan's converter; say so now, at dataset construction. ul2flan's own trainer (no t5x)
  is not affected."""
  if not any(n.endswith("DecoderOnlyModel") for n in gin_checks.configurable_names()):
    return
  try:
    bound = gin.query_parameter(T5X_CONVERTER_PARAMETER)
  except ValueError:
    bound = None
  name = getattr(getattr(bound, "configurable", None), "name", "") or ""
  if not name.endswith(FULL_ROW_CONVERTER):
    raise ValueError(
        f"UL2R examples fill the decoder row (inputs + targets fit the row, either alone may be "
        f"longer than its own length), and this t5x model's feature converter ("
        f"{name or 'the default, seqio.DecoderFeatureConverter'}) checks each feature on its "
        f"own. Add to the gin file: models.DecoderOnlyModel.feature_converter_cls = "
        f"@ul2flan_tasks.{FULL_ROW_CONVERTER} (README, \"Using the tasks from upstream t5x\"), "
        f"or give the task a mixture with fill_rows=False.")


def ul2_preprocessors(mixture: DenoiserMixture | Callable[[], DenoiserMixture],
                      text_key: str = "text") -> list:
  """The full seqio preprocessor list for a `{text_key: string}` source."""
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={"targets": text_key}),
      functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
      functools.partial(ul2_denoise, mixture=mixture),
      functools.partial(append_eos, mixture=mixture),
  ]


def append_eos(dataset: tf.data.Dataset,
               output_features: Mapping[str, seqio.Feature] | None = None,
               *, mixture: DenoiserMixture | Callable[[], DenoiserMixture]) -> tf.data.Dataset:
  """seqio's `append_eos`, with the inputs' EOS only where the mixture lays its rows out with one
  (`DenoiserMixture.inputs_eos`; targets always end with EOS)."""
  if callable(mixture):
    mixture = mixture()
  features = {k: f for k, f in (output_features or {}).items()
              if k != "inputs" or mixture.inputs_eos}
  return seqio.preprocessors.append_eos(dataset, features)


def ul2_output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """Prefix-LM features (for `ul2flan.row_layout.PrefixLMFeatureConverter`); `denoiser` rides
  along."""
  return {"inputs": seqio.Feature(vocabulary, add_eos=True),
          "targets": seqio.Feature(vocabulary, add_eos=True)}
