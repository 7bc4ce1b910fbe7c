"""Claim-by-claim verdicts over the seeds: "model A beats model B on metric M".

A claim is "shown" only when the mean difference reaches its target, every seed agrees, and the
difference is larger than the seeds' spread; with one seed there is no spread, so the difference
must instead exceed a stated threshold (`ONE_SEED_THRESHOLD` points unless the claim says
otherwise). Everything else reads "NOT shown at this scale", with the figures.
"""

from __future__ import annotations

from typing import Mapping

ONE_SEED_THRESHOLD = 5.0  # points (accuracy %, or normalized score) a single seed must clear


def compare(summary: Mapping, a: str, b: str, key: str) -> tuple[float, bool, bool] | None:
  """(mean of a - b, every seed has a > b, the mean difference exceeds both seed spreads)."""
  if a not in summary or b not in summary or key not in summary[a] or key not in summary[b]:
    return None
  sa, sb = summary[a][key], summary[b][key]
  diffs = [x - y for x, y in zip(sa["values"], sb["values"])]
  spread = max(sa["max"] - sa["min"], sb["max"] - sb["min"])
  mean = sum(diffs) / len(diffs)
  return mean, all(d > 0 for d in diffs), abs(mean) > spread


def claim(summary: Mapping, text: str, a: str, b: str, key: str, margin: float = 0.0,
          one_seed_threshold: float = ONE_SEED_THRESHOLD) -> str:
  """One markdown line: the claim, its figures and the verdict."""
  found = compare(summary, a, b, key)
  if found is None:
    return f"- {text}: not measured."
  mean, every_seed, beyond_spread = found
  seeds = len(summary[a][key]["values"])
  if seeds > 1:
    holds = mean >= margin and every_seed and beyond_spread
    evidence = (f"; {'every' if every_seed else 'not every'} seed, "
                f"{'larger' if beyond_spread else 'not larger'} than the spread")
  else:
    needed = max(margin, one_seed_threshold)
    holds = mean > needed
    evidence = f"; one seed: must exceed +{needed:.0f}"
  detail = (f"{summary[a][key]['mean']:.1f} vs {summary[b][key]['mean']:.1f} "
            f"(difference {mean:+.1f}" + (f", target +{margin:.0f}" if margin else "")
            + evidence + ")")
  return f"- {text}: {detail} -> " + ("shown." if holds else "NOT shown at this scale.")


def at_least(summary: Mapping, text: str, a: str, b: str, key: str, fraction: float,
             chance: float = 0.0) -> str:
  """A claim that a's metric is at least `fraction` of b's on every seed. Keeping what b has
  means something only where b is clearly above `chance` (by `ONE_SEED_THRESHOLD` points) on
  every seed; otherwise it is not shown. (`chance` 0: no floor.)"""
  if a not in summary or b not in summary or key not in summary[a] or key not in summary[b]:
    return f"- {text}: not measured."
  ratios = [x / y if y else float("inf") for x, y in zip(summary[a][key]["values"],
                                                          summary[b][key]["values"])]
  floor_at = chance + ONE_SEED_THRESHOLD if chance else 0.0
  above_chance = all(y > floor_at for y in summary[b][key]["values"])
  holds = above_chance and all(r >= fraction for r in ratios)
  floor = "" if above_chance else (f"; {b} is not {ONE_SEED_THRESHOLD:.0f} points above chance "
                                   f"({chance:.1f}) on every seed")
  return (f"- {text}: {summary[a][key]['mean']:.1f} vs {summary[b][key]['mean']:.1f} (ratio "
          f"{min(ratios):.2f} at worst, target {fraction:.2f} on every seed{floor}) -> "
          + ("shown." if holds else "NOT shown at this scale."))
