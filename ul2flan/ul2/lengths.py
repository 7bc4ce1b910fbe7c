"""Length arithmetic of a denoiser mixture, and its compilation against a vocabulary.

Plain Python; the tf.data graph (`ul2flan.ul2.preprocessors`) uses the same float64 formulas.
With `fill_rows` (the default) a segment is the longest whose inputs + targets, mode token and both
EOS included, fit one decoder row of inputs_length + targets_length tokens; without it, inputs and
targets must each fit their own length. A mixture that can need more spans than there are
sentinels is rejected here, when its task is defined, unless `cap_spans=True` asks for fewer,
longer spans.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import seqio

from ul2flan import vocabularies
from ul2flan.ul2.denoisers import Denoiser, DenoiserMixture


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
                                   random_roll: bool = False, max_spans: int | None = None,
                                   row_budget: int | None = None) -> int:
  """Largest raw segment length whose corrupted inputs and targets fit their budgets.

  Budgets exclude EOS and the mode token. With `row_budget`, inputs + targets together must fit
  it (the per-feature budgets are then ignored). The needed lengths never decrease with the
  segment length, so any shorter segment fits too.
  """
  longest = row_budget if row_budget is not None else inputs_budget + targets_budget
  for length in range(longest, 1, -1):
    inputs, targets, _ = _span_corruption_lengths(length, d, random_roll, max_spans)
    fits = (inputs + targets <= row_budget if row_budget is not None
            else inputs <= inputs_budget and targets <= targets_budget)
    if fits:
      return length
  budgets = (f"a row budget of {row_budget}" if row_budget is not None
             else f"inputs budget {inputs_budget} and targets budget {targets_budget}")
  raise ValueError(f"{d.name}: {budgets} (after EOS and mode token) cannot hold even a 2-token "
                   f"segment")


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
  max_sentinels: int   # sentinels the longest segment needs (S: 1 with `sentinel`, else 0)
  fixed_length: bool   # every segment is `segment_length` long (S without fill_rows: it varies)


@dataclasses.dataclass(frozen=True)
class CompiledMixture:
  mixture: DenoiserMixture
  denoisers: tuple[CompiledDenoiser, ...]
  inputs_length: int
  targets_length: int
  sentinel_ids: tuple[int, ...]  # sentinel k at index k (`vocabularies.sentinel_ids`)

  @property
  def max_segment_length(self) -> int:
    return max(d.segment_length for d in self.denoisers)

  @property
  def min_segment_length(self) -> int:
    """A lower bound on any segment but a stream's last (S: T(f) >= min of its two budgets)."""
    return max(2, min(d.segment_length if d.fixed_length
                      else min(d.inputs_budget, d.targets_budget) for d in self.denoisers))

  @property
  def num_sentinels(self) -> int:
    return len(self.sentinel_ids)


def compile_mixture(mixture: DenoiserMixture, vocabulary: seqio.Vocabulary,
                    sequence_length: Mapping[str, int | None] | None = None) -> CompiledMixture:
  """Checks `mixture` against the vocabulary and lengths; raises ValueError on any misfit."""
  inputs_length, targets_length = mixture.inputs_length, mixture.targets_length
  if sequence_length and sequence_length.get("inputs") and sequence_length.get("targets"):
    inputs_length, targets_length = sequence_length["inputs"], sequence_length["targets"]
  sentinel_ids = vocabularies.sentinel_ids(vocabulary, mixture.num_sentinels)
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
    row_budget = inputs_budget + targets_budget if mixture.fill_rows else None
    if row_budget is not None:  # either side may take what the other leaves
      inputs_budget = targets_budget = row_budget
    if d.is_span_corruption:
      length, needed = _span_corruption_segment(d, mixture, sentinel_ids, where, inputs_budget,
                                                targets_budget, row_budget)
    else:
      if d.sentinel:  # `prefix <s0>` and `<s0> rest`: one sentinel on each side
        inputs_budget, targets_budget = inputs_budget - 1, targets_budget - 1
      longest = prefix_lm_max_segment_length(inputs_budget, targets_budget)  # checks them
      length = longest if row_budget is None else row_budget - 2 * d.sentinel
      needed = int(d.sentinel)
    compiled.append(CompiledDenoiser(d, mode_ids, inputs_budget, targets_budget, length, needed,
                                     fixed_length=d.is_span_corruption or mixture.fill_rows))
  return CompiledMixture(mixture, tuple(compiled), inputs_length, targets_length, sentinel_ids)


def _span_corruption_segment(d: Denoiser, mixture: DenoiserMixture, sentinel_ids, where: str,
                             inputs_budget: int, targets_budget: int,
                             row_budget: int | None) -> tuple[int, int]:
  """(segment length, sentinels it needs) of an R/X denoiser; more than exist is an error."""
  sentinels = len(sentinel_ids)
  max_spans = sentinels - (1 if mixture.random_roll else 0) if mixture.cap_spans else None
  if max_spans is not None and max_spans < 1:
    raise ValueError(f"{where}: {sentinels} sentinel(s) are too few for random_roll")
  length = span_corruption_segment_length(d, inputs_budget, targets_budget, mixture.random_roll,
                                          max_spans, row_budget)
  needed = _span_corruption_lengths(length, d, mixture.random_roll, max_spans)[2]
  if needed > sentinels:
    raise ValueError(
        f"{where}: {length}-token segments need up to {needed} sentinels but only {sentinels} "
        f"are available (ids {min(sentinel_ids)}..{max(sentinel_ids)}). "
        f"Lower inputs_length, raise the mean span length, provide more sentinels "
        f"(num_sentinels or a vocabulary with more extra_ids), or set cap_spans=True for "
        f"fewer, longer spans.")
  return length, needed
