"""Capped, examples-proportional Flan mixtures on top of `seqio.Mixture`.

Flan mixes in two levels. Within a submixture (Muffin, T0-SF, NIV2, CoT, ...) each task's rate is
its number of examples, capped per task (so one huge task cannot swamp the others). Across
submixtures the proportions are fixed. Both levels are plain `seqio.Mixture`s: the inner rates
are `CappedRate` callables (seqio calls them with the task), the outer rates are the weights.
`ul2flan.flan.rates.rates_table` reads the same objects back to print the effective shares.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Iterable, Mapping, Sequence

import gin
import seqio

from ul2flan import registration

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CappedRate:
  """Examples-proportional rate with a per-task cap: `min(examples in split, cap)`."""
  cap: int | None = None
  split: str = "train"

  def __post_init__(self):
    if self.cap is not None and self.cap <= 0:
      raise ValueError(f"a task cap must be positive or None, got {self.cap}")

  def examples(self, task: seqio.Task, split: str | None = None) -> int:
    split = split or self.split
    if split not in task.splits:
      return 0
    n = task.num_input_examples(split)
    if n is None:
      raise ValueError(f"task {task.name!r} does not report its number of {split!r} examples, "
                       "so an examples-proportional rate cannot be computed; give the source "
                       "`num_input_examples` or use a fixed rate")
    return int(n)

  def value(self, task: seqio.Task, split: str | None = None) -> float:
    n = self.examples(task, split)
    return float(n if self.cap is None else min(n, self.cap))

  def __call__(self, task: seqio.Task) -> float:
    return self.value(task)


@dataclasses.dataclass(frozen=True)
class Submixture:
  """A named group of tasks with a fixed weight across groups and a per-task cap within.

  `tasks` is either a sequence of task names (mixed examples-proportionally with the cap) or a
  mapping from a format name to task names: then every format gets an equal share of the
  submixture and the tasks of a format are mixed examples-proportionally with the cap.
  """
  name: str
  weight: float
  tasks: Sequence[str] | Mapping[str, Sequence[str]]
  cap: int | None = None

  def __post_init__(self):
    if self.weight < 0:
      raise ValueError(f"submixture {self.name!r}: weight must be >= 0, got {self.weight}")


def _check_tasks(mixture: str, names: Iterable[str]) -> list[str]:
  names = list(names)
  missing = [n for n in names if n not in seqio.TaskRegistry.names()]
  if missing:
    raise ValueError(f"mixture {mixture!r} refers to unregistered tasks {missing}; register "
                     "them first (e.g. import ul2flan_tasks)")
  return names


def _add_mixture(name: str, entries: Sequence[tuple[str, object]], replace: bool) -> seqio.Mixture:
  if name in seqio.MixtureRegistry.names():
    if not replace:
      raise ValueError(f"mixture {name!r} is already registered; pass replace=True to rebuild it")
  return registration.add_mixture(name, list(entries), replace=replace)


def register_task_mixture(name: str, tasks: Sequence[str], cap: int | None = None,
                          split: str = "train", replace: bool = False) -> seqio.Mixture:
  """Examples-proportional mixture of `tasks`, each capped at `cap` examples."""
  tasks = _check_tasks(name, tasks)
  if not tasks:
    raise ValueError(f"mixture {name!r} has no tasks")
  return _add_mixture(name, [(t, CappedRate(cap, split)) for t in tasks], replace)


def register_capped_mixture(name: str, submixtures: Sequence[Submixture], split: str = "train",
                            replace: bool = False) -> seqio.Mixture:
  """Registers `name` = weighted mixture of one capped mixture per submixture.

  Submixture `s` is registered as `{name}_{s.name}` (and its formats, if any, as
  `{name}_{s.name}_{format}`). Submixtures with weight 0 or no tasks are left out with a warning.
  """
  entries = []
  for sub in submixtures:
    sub_name = f"{name}_{sub.name}"
    if sub.weight == 0:
      logger.warning("mixture %s: submixture %s has weight 0; left out", name, sub.name)
      continue
    if isinstance(sub.tasks, Mapping):
      groups = [(f"{sub_name}_{fmt}", tasks) for fmt, tasks in sorted(sub.tasks.items()) if tasks]
      if not groups:
        logger.warning("mixture %s: submixture %s has no tasks; left out", name, sub.name)
        continue
      for group_name, tasks in groups:
        register_task_mixture(group_name, tasks, sub.cap, split, replace)
      _add_mixture(sub_name, [(g, 1.0) for g, _ in groups], replace)
    else:
      if not sub.tasks:
        logger.warning("mixture %s: submixture %s has no tasks; left out", name, sub.name)
        continue
      register_task_mixture(sub_name, sub.tasks, sub.cap, split, replace)
    entries.append((sub_name, float(sub.weight)))
  if not entries:
    raise ValueError(f"mixture {name!r}: every submixture is empty or has weight 0")
  return _add_mixture(name, entries, replace)


# --------------------------------------------------------------------------------------------
# Presets: which `_task_source` goes to which submixture, with weights and caps.

@dataclasses.dataclass(frozen=True)
class SourceGroup:
  name: str
  weight: float
  cap: int | None
  sources: tuple[str, ...]  # normalized `_task_source` names (see normalize_source)


@dataclasses.dataclass(frozen=True)
class Preset:
  name: str
  groups: tuple[SourceGroup, ...]
  split_formats: bool  # whether each group is split evenly over its template types


def normalize_source(source: str) -> str:
  """'NIv2' -> 'niv2', 'T0-SF' -> 't0sf': the key used to match `_task_source` to a group."""
  return re.sub(r"[^a-z0-9]", "", source.lower())


@gin.configurable
def proportion_b(muffin: float = 46.0, t0_sf: float = 27.9, niv2: float = 24.2,
                 cot: float = 1.8, muffin_cap: int | None = 30_000,
                 t0_sf_cap: int | None = 20_000, niv2_cap: int | None = 5_000,
                 cot_cap: int | None = 100_000) -> Preset:
  """The Flan 2022 paper's final mixture. Muffin takes Flan 2021 and dialog sources."""
  return Preset("proportion_b", (
      SourceGroup("muffin", muffin, muffin_cap, ("muffin", "flan2021", "flan", "dialog")),
      SourceGroup("t0_sf", t0_sf, t0_sf_cap, ("t0sf", "t0")),
      SourceGroup("niv2", niv2, niv2_cap, ("niv2",)),
      SourceGroup("cot", cot, cot_cap, ("cot",)),
  ), split_formats=False)


@gin.configurable
def flan2022_submix(flan2021: float = 0.40, t0: float = 0.32, niv2: float = 0.20,
                    cot: float = 0.05, dialog: float = 0.03,
                    flan2021_cap: int | None = 30_000, t0_cap: int | None = 20_000,
                    niv2_cap: int | None = 5_000, cot_cap: int | None = 100_000,
                    dialog_cap: int | None = 200_000) -> Preset:
  """The public Flan collection's recommended mix; each source split evenly over its formats."""
  return Preset("flan2022_submix", (
      SourceGroup("flan2021", flan2021, flan2021_cap, ("flan2021", "flan", "muffin")),
      SourceGroup("t0", t0, t0_cap, ("t0", "t0sf")),
      SourceGroup("niv2", niv2, niv2_cap, ("niv2",)),
      SourceGroup("cot", cot, cot_cap, ("cot",)),
      SourceGroup("dialog", dialog, dialog_cap, ("dialog",)),
  ), split_formats=True)


PRESETS = {"proportion_b": proportion_b, "flan2022_submix": flan2022_submix}


def get_preset(preset: str | Preset) -> Preset:
  if isinstance(preset, Preset):
    return preset
  if preset not in PRESETS:
    raise ValueError(f"unknown mixture preset {preset!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[preset]()


def group_of_source(preset: Preset, source: str) -> SourceGroup | None:
  key = normalize_source(source)
  for group in preset.groups:
    if key in group.sources:
      return group
  return None


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """A registered task as a preset sees it."""
  name: str  # seqio task name
  source: str  # `_task_source`
  template_type: str | None = None  # set when the task holds a single format


def preset_submixtures(preset: Preset, tasks: Sequence[TaskInfo],
                       ignore_unknown_sources: bool = False) -> list[Submixture]:
  """Assigns tasks to the preset's groups (by `_task_source`) and returns the submixtures."""
  unknown = sorted({t.source for t in tasks if group_of_source(preset, t.source) is None})
  if unknown and not ignore_unknown_sources:
    known = sorted({s for g in preset.groups for s in g.sources})
    raise ValueError(f"task sources {unknown} belong to no group of preset {preset.name!r} "
                     f"(it knows {known}); fix `_task_source`, pick another preset, or set "
                     "ignore_unknown_sources=True to leave those tasks out")
  submixtures = []
  for group in preset.groups:
    members = [t for t in tasks if group_of_source(preset, t.source) is group]
    if preset.split_formats:
      untyped = [t.name for t in members if t.template_type is None]
      if untyped:
        raise ValueError(f"preset {preset.name!r} splits by format but tasks {untyped[:5]} hold "
                         "several formats; register one task per template type")
      by_format: dict[str, list[str]] = {}
      for t in members:
        by_format.setdefault(t.template_type, []).append(t.name)
      submixtures.append(Submixture(group.name, group.weight, by_format, group.cap))
    else:
      submixtures.append(Submixture(group.name, group.weight, [t.name for t in members],
                                    group.cap))
  return submixtures
