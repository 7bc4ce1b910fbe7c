"""Effective task shares of a mixture, and what each per-task cap discarded.

`rates_table("demo_flan")` walks the seqio mixture tree the way seqio samples it: at every level
an entry's share is its rate divided by the sum of the rates at that level (a task's rate is
`CappedRate` = min(examples, cap), or any number / callable; a sub-mixture's rate is its
weight), and a task's effective share is the product down its path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import seqio

from ul2flan.flan import mixtures


@dataclasses.dataclass(frozen=True)
class RateRow:
  task: str
  path: str  # the mixtures from the root down to the task, joined by " > "
  examples: int | None  # in the split, before the cap
  cap: int | None
  used: int | None  # min(examples, cap)
  discarded: int | None  # examples - used
  share: float  # effective fraction of sampled examples


def _provider(name: str) -> Any:
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  return None


def _lookup(name: str) -> Any:
  provider = _provider(name)
  if provider is None:
    close = sorted(n for n in list(seqio.MixtureRegistry.names()) + list(seqio.TaskRegistry.names())
                   if name.split("_")[0] in n)[:10]
    raise ValueError(f"no task or mixture named {name!r}; similar names: {close}")
  return provider


def _num_examples(task: seqio.Task, split: str) -> int | None:
  return task.num_input_examples(split) if split in task.splits else 0


def _task_row(task: seqio.Task, rate: Any, share: float, path: str, split: str) -> RateRow:
  if isinstance(rate, mixtures.CappedRate):
    n = rate.examples(task, split)
    used = int(rate.value(task, split))
    return RateRow(task.name, path, n, rate.cap, used, n - used, share)
  return RateRow(task.name, path, _num_examples(task, split), None, None, None, share)


def _rate_value(rate: Any, provider: Any, split: str) -> float:
  if isinstance(rate, mixtures.CappedRate):
    return rate.value(provider, split)
  return float(rate(provider) if callable(rate) else rate)


def _walk(mixture: seqio.Mixture, share: float, path: str, split: str) -> list[RateRow]:
  entries = []
  for name, rate in mixture.rate_per_task_name.items():
    provider = _lookup(name)
    entries.append((provider, rate, _rate_value(rate, provider, split)))
  total = sum(value for _, _, value in entries)
  rows = []
  for provider, rate, value in entries:
    sub_share = share * value / total if total > 0 else 0.0
    if isinstance(provider, seqio.Mixture):
      rows.extend(_walk(provider, sub_share, f"{path} > {provider.name}", split))
    else:
      rows.append(_task_row(provider, rate, sub_share, path, split))
  return rows


def compute_rates(mixture_name: str, split: str = "train") -> list[RateRow]:
  """One row per (task, path) of the mixture (or a single row for a task)."""
  provider = _lookup(mixture_name)
  if isinstance(provider, seqio.Task):
    return [RateRow(provider.name, provider.name, _num_examples(provider, split), None, None,
                    None, 1.0)]
  return _walk(provider, 1.0, provider.name, split)


def _fmt(value: int | None) -> str:
  return "-" if value is None else f"{value:,}"


def rates_table(mixture_name: str, split: str = "train") -> str:
  """A text table of each task's effective share and the examples its cap discarded."""
  rows = sorted(compute_rates(mixture_name, split), key=lambda r: (-r.share, r.task))
  header = ("task", "submixture", "examples", "cap", "used", "discarded", "share")
  lines = [(r.task, r.path.split(" > ", 1)[-1] if " > " in r.path else "-", _fmt(r.examples),
            _fmt(r.cap), _fmt(r.used), _fmt(r.discarded), f"{100 * r.share:.2f}%") for r in rows]

  def total(field: str) -> str:
    values = [getattr(r, field) for r in rows]
    return "-" if any(v is None for v in values) else f"{sum(values):,}"

  lines.append(("total", "", total("examples"), "", total("used"), total("discarded"),
                f"{100 * sum(r.share for r in rows):.2f}%"))
  widths = [max(len(str(line[i])) for line in [header] + lines) for i in range(len(header))]

  def render(cells) -> str:
    return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

  title = f"mixture {mixture_name!r}, split {split!r}: {len(rows)} task rows"
  return "\n".join([title, render(header)] + [render(line) for line in lines])
