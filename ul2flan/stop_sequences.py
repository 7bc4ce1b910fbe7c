"""Where a continuation ends: before the first stop sequence it contains (lm-eval-harness's
`until`). One rule for the generator, which cuts what it returns, and the evaluation harness,
which cuts what any generator returns. A leaf module: every stage may use it."""

from __future__ import annotations

from typing import Iterable


def truncate(text: str, stop_sequences: Iterable[str]) -> str:
  """`text` up to the earliest occurrence of any (non-empty) stop sequence."""
  positions = [text.find(stop) for stop in stop_sequences if stop]
  return text[:min([p for p in positions if p != -1], default=len(text))]
