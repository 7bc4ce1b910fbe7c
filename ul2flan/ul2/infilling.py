"""Infilling prompts in the R denoiser's layout, and reading a model's answer from them.

U-PaLM's infilling ability: a text with one span replaced by sentinel 0, given as the R
denoiser's inputs (its mode token, then the text's tokens with the span cut out); a model trained
with UL2R writes the span as the R targets lay it out, `<extra_id_0> span EOS`. Used by the demo's
probes (`ul2flan.demo.probes`) and by the pipeline's held-out-text probe
(`ul2flan.pipeline.text_infilling`).
"""

from __future__ import annotations

from typing import Sequence

from ul2flan import vocabularies
from ul2flan.ul2 import denoisers


def mode_token(kind: str) -> str:
  """The UL2R preset's mode token of a denoiser kind ("R", "X" or "S")."""
  return next(d.mode_token for d in denoisers.UL2R.denoisers if d.kind == kind)


def masked_span_layout(vocabulary, prefix: str, value: str,
                       suffix: str) -> tuple[list[int], list[int], list[int]]:
  """(head, span, tail) ids of `prefix + value + suffix`, cut from the text's own tokenization
  (no re-tokenization at the span's edges): a word's "▁" goes with the word, and where the value
  merges with the prefix's last piece the span starts at that piece."""
  head = list(vocabulary.encode(prefix.rstrip()))
  full = list(vocabulary.encode(prefix + value + suffix))
  span = len(vocabulary.encode(prefix + value)) - len(head)
  if full[:len(head)] != head:
    head = head[:-1]
    span += 1
  return head, full[len(head):len(head) + span], full[len(head) + span:]


def prompt_ids(vocabulary, prefix: str, value: str, suffix: str) -> list[int]:
  """R-denoiser inputs: its mode token encoded on its own, then the text's own tokens with the
  span's tokens replaced by sentinel 0."""
  head, _, tail = masked_span_layout(vocabulary, prefix, value, suffix)
  sentinel = vocabularies.sentinel_ids(vocabulary)[0]
  return list(vocabulary.encode(mode_token("R"))) + head + [sentinel] + tail


def candidate_span_ids(vocabulary, prefix: str, gold: str, suffix: str,
                       candidates: Sequence[str]) -> list[list[int]]:
  """The ids each candidate value takes in the gap of `prompt_ids(prefix, gold, suffix)`: the
  tokens of the text with that value filled in that lie between the prompt's head and tail (the
  gold's own span for the gold)."""
  head, _, tail = masked_span_layout(vocabulary, prefix, gold, suffix)
  spans = []
  for value in candidates:
    full = list(vocabulary.encode(prefix + value + suffix))
    if (full[:len(head)] == head and full[len(full) - len(tail):] == tail
        and len(full) > len(head) + len(tail)):
      spans.append(full[len(head):len(full) - len(tail)])
    else:
      spans.append(masked_span_layout(vocabulary, prefix, value, suffix)[1])
  return spans


def target_ids(vocabulary, span: Sequence[int]) -> list[int]:
  """The R target that fills the one gap with `span`: `<extra_id_0> span EOS`."""
  return [vocabularies.sentinel_ids(vocabulary)[0], *span, vocabulary.eos_id]


def written_span(vocabulary, tokens: Sequence[int]) -> str:
  """The text a model wrote for sentinel 0: after it (if written), up to the next sentinel or
  EOS, as R-denoiser targets `<extra_id_0> span <extra_id_1> ...` lay it out."""
  sentinels = vocabularies.sentinel_ids(vocabulary)
  toks = list(tokens)
  if toks and toks[0] == sentinels[0]:
    toks = toks[1:]
  span = []
  for t in toks:
    if t == vocabulary.eos_id or t in set(sentinels):
      break
    span.append(t)
  return vocabulary.decode(span)
