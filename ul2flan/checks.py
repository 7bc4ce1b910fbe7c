"""Value checks shared by the configuration dataclasses and the trainer: one message style.

A leaf module (imports nothing of ul2flan), so every stage may use it.
"""

from __future__ import annotations

import numbers
from typing import Any, Collection


def is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, name: str, minimum: int = 1, *, allow_none: bool = False) -> None:
  """`value` must be an int >= `minimum` (or None when allowed); ValueError naming `name`."""
  if allow_none and value is None:
    return
  if not is_int(value) or value < minimum:
    need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise ValueError(f"{name} must be {need}{' or None' if allow_none else ''}, got {value!r}")


def check_number(value: Any, name: str, low: float, high: float | None = None) -> None:
  """`value` must be a real number in [low, high) (high: no upper bound when None)."""
  if (not isinstance(value, numbers.Real) or isinstance(value, bool) or value < low
      or (high is not None and value >= high)):
    bound = f">= {low}" if high is None else f"in [{low}, {high})"
    raise ValueError(f"{name} must be a number {bound}, got {value!r}")


def check_choice(value: Any, choices: Collection[Any], name: str) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
