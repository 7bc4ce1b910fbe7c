"""UL2 / UL2R denoisers: what each one is, how a mixture of them is defined, and the presets.

R / X denoisers are T5 span corruption (mean span length mu, corruption rate r); S is a prefix LM
(split a segment once: prefix -> inputs, rest -> targets). Each carries a mode token (ordinary
text, e.g. "[NLU]") that is prepended to its inputs. `ul2flan.ul2.lengths` turns a mixture into
per-denoiser segment lengths for a vocabulary; `ul2flan.ul2.preprocessors` applies it in tf.data.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import gin

SPAN_CORRUPTION_KINDS = ("R", "X")
PREFIX_LM_KIND = "S"
DEFAULT_DOCS_PER_GROUP = 512  # documents concatenated before cutting segments


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
    sentinel: S only: end the inputs and start the targets with sentinel 0 (`prefix <s0>` and
      `<s0> rest`: span corruption with one span, at the end), so that every denoiser's targets
      start with it. False (default): a plain prefix LM, as UL2 describes S (docs/ul2r.md,
      "The S layout").
  """
  kind: str
  rate: float
  mode_token: str
  mean_span_length: float = 3.0
  corruption_rate: float = 0.15
  target_fraction: float | None = None
  sentinel: bool = False

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
      if self.sentinel:
        raise ValueError(f"{self.name}: `sentinel` is for S; R and X spans always have theirs")
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
    split = "uniform" if self.target_fraction is None else f"frac={self.target_fraction:g}"
    return f"S({split},sentinel)" if self.sentinel else f"S({split})"


@dataclasses.dataclass(frozen=True)
class DenoiserMixture:
  """A mixture of denoisers and the lengths it is defined for.

  Attributes:
    name: label used in logs and error messages.
    denoisers: the denoisers; each example draws one with probability proportional to its rate.
    inputs_length: inputs length, EOS included. A `sequence_length` given to `get_dataset`
      replaces it (and the sentinel check is repeated for it).
    targets_length: targets length, EOS included; replaced the same way.
    num_sentinels: how many of the vocabulary's sentinels (`vocabularies.sentinel_ids`) to use. None:
      the vocabulary's extra ids, or the last 100 ids when it has none (U-PaLM).
    cap_spans: if a denoiser can need more spans than sentinels, use fewer, longer spans instead
      of raising an error.
    random_roll: rotate each noise mask by a random offset (later T5) so that the last span does
      not always end the segment; may split one span in two. Off by default, like the 2022 code.
    docs_per_group: documents tokenized and concatenated per step of the segment cutter (text
      left over after a group's last whole segment starts the next group's first).
    fill_rows: size every segment so that its inputs + targets (mode token and both EOS
      included) fill one decoder row of `inputs_length + targets_length` tokens, which is what a
      prefix LM trains on; either feature may then be longer than its own length. False: inputs
      and targets each fit their own length (T5's encoder-decoder sizing; ~25% of packed prefix-LM
      rows are padding at 1024 + 1024).
    inputs_eos: the inputs end with EOS, `inputs EOS targets` (the recipe's layout, and seqio's).
      False: `inputs targets`, the first target written from the last inputs token. With the
      EOS, S's first target token is written from a position a pre-trained model reads as the
      end of a text, and the demo's U-model learns to write it there very slowly (docs/ul2r.md,
      "The EOS after the inputs"). Lengths are budgeted as with the EOS (one row position is
      left unused).
  """
  name: str
  denoisers: tuple[Denoiser, ...]
  inputs_length: int = 1024
  targets_length: int = 1024
  num_sentinels: int | None = None
  cap_spans: bool = False
  random_roll: bool = False
  docs_per_group: int = DEFAULT_DOCS_PER_GROUP
  fill_rows: bool = True
  inputs_eos: bool = True

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
                rates: Sequence[float] = (0.50, 0.25, 0.25),
                s_sentinel: bool = False,
                **mixture_overrides) -> DenoiserMixture:
  """U-PaLM's UL2R: 50% S, 25% R(3, .15), 25% X (OPEN; default mu=32, r=.5), 1024 + 1024.

  `mode_tokens` are the R, X and S mode tokens in that order; `rates` the S, R and X shares
  (U-PaLM's by default); `s_sentinel` lays S out with sentinel 0 (`Denoiser.sentinel`).
  """
  nlu, nlg, s2s = mode_tokens
  s_rate, r_rate, x_rate = rates
  return DenoiserMixture(
      name="UL2R",
      denoisers=(Denoiser("S", s_rate, s2s, target_fraction=s_target_fraction,
                          sentinel=s_sentinel),
                 _span("R", r_rate, nlu, 3, 0.15),
                 _span("X", x_rate, nlg, x_mean_span_length, x_corruption_rate)),
      inputs_length=inputs_length, targets_length=targets_length, **mixture_overrides)


@gin.configurable
def ul2_preset(inputs_length: int = 1024, targets_length: int = 1024,
               s_target_fraction: float | None = 0.25,
               mode_tokens: Sequence[str] = ("[NLU]", "[NLG]", "[S2S]"),
               s_sentinel: bool = False,
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
                 Denoiser("S", rate, s2s, target_fraction=s_target_fraction,
                          sentinel=s_sentinel)),
      inputs_length=inputs_length, targets_length=targets_length, **mixture_overrides)


PRESETS = {"UL2R": ul2r_preset, "UL2": ul2_preset}
UL2R = ul2r_preset()
UL2 = ul2_preset()


@gin.configurable
def get_preset(name: str = "UL2R", **overrides) -> DenoiserMixture:
  """A preset by name ("UL2R" or "UL2"), with keyword overrides of its factory's arguments."""
  if name not in PRESETS:
    raise ValueError(f"unknown denoiser preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name](**overrides)
