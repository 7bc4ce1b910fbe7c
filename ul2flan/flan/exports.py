"""Flan-collection exports (already formatted rows) as seqio tasks and preset mixtures.

An export is a set of JSONL (optionally gzipped) or parquet files whose rows hold `inputs`,
`targets`, `_task_name`, `_task_source`, `_template_type` (and optionally `_template_idx`).
`flan_export_mixture` (gin-configurable) scans the files once, registers one task per
`_task_name` (per `_task_name` and `_template_type` when the preset splits by format), one
mixture per `_task_source`, and the preset's capped mixture; the trainer only needs its name:

    MIXTURE_OR_TASK_NAME = @flan_export_mixture()
    flan_export_mixture.file_pattern = "/data/flan/*.parquet"

Malformed rows (missing field, wrong type, empty text) are found by the registration scan,
before any training step. `on_malformed='fail'` (the default) stops with the file and line of
the first one; `'skip'` leaves them out, logs each with its file and line, and lists them in
`ExportIndex.skipped`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from typing import Any, Iterator, Mapping, Sequence

import gin
import seqio
import tensorflow as tf

from ul2flan import holdout
from ul2flan import vocabularies
from ul2flan.flan import files as files_lib
from ul2flan.flan import mixtures
from ul2flan.flan import sources

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("inputs", "targets")
META_FIELDS = ("_task_name", "_task_source", "_template_type")
REQUIRED_FIELDS = TEXT_FIELDS + META_FIELDS
OPTIONAL_FIELDS = ("_template_idx",)
_MAX_LOGGED_SKIPS = 20


class MalformedRowError(ValueError):
  """A row of an export lacks a field, has a wrong type, or has empty text."""


def export_row_problem(row: Any) -> str | None:
  """Why an export row is unusable, or None."""
  if not isinstance(row, Mapping):
    return f"expected an object, got {type(row).__name__}"
  for key in REQUIRED_FIELDS:
    if key not in row or row[key] is None:
      return f"missing field {key!r}"
    if not isinstance(row[key], str):
      return f"field {key!r} is {type(row[key]).__name__}, expected a string"
    if not row[key].strip():
      return f"field {key!r} is empty"
  idx = row.get("_template_idx")
  if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int)):
    return f"field '_template_idx' is {type(idx).__name__}, expected an integer"
  return None


@dataclasses.dataclass
class ExportTask:
  """What the scan learned about one `_task_name`."""
  name: str
  source: str
  first_seen: str
  counts: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)  # (split, type)
  files: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # split -> files

  def num_examples(self, split: str, template_type: str | None = None) -> int:
    return sum(n for (s, t), n in self.counts.items()
               if s == split and template_type in (None, t))

  @property
  def template_types(self) -> list[str]:
    return sorted({t for _, t in self.counts})


@dataclasses.dataclass
class ExportIndex:
  tasks: dict[str, ExportTask]
  files: dict[str, list[str]]  # split -> files
  skipped: list[str]  # "location: problem" of each malformed row left out


def _report(location: str, problem: str, on_malformed: str, skipped: list[str]) -> None:
  if on_malformed == "fail":
    raise MalformedRowError(
        f"{location}: malformed Flan export row: {problem}. Every row needs non-empty string "
        f"fields {list(REQUIRED_FIELDS)}. Fix or remove the row, or set "
        "flan_export_mixture.on_malformed='skip' to leave malformed rows out.")
  if len(skipped) < _MAX_LOGGED_SKIPS:
    logger.warning("%s: skipping malformed Flan export row: %s", location, problem)
  skipped.append(f"{location}: {problem}")


def _check_parquet_schema(path: str) -> None:
  missing = [c for c in REQUIRED_FIELDS if c not in files_lib.parquet_columns(path)]
  if missing:
    raise MalformedRowError(f"{path}: parquet file lacks column(s) {missing}; a Flan export "
                            f"needs {list(REQUIRED_FIELDS)}")


def scan_exports(file_patterns: Mapping[str, str | Sequence[str]],
                 on_malformed: str = "fail") -> ExportIndex:
  """Reads every row once: validates it and counts rows per task, template type and file."""
  sources.check_malformed_policy(on_malformed)
  tasks: dict[str, ExportTask] = {}
  skipped: list[str] = []
  files_by_split = {}
  for split, pattern in file_patterns.items():
    files_by_split[split] = files_lib.expand_patterns(pattern, f"Flan export ({split} split)")
    for path in files_by_split[split]:
      if files_lib.file_format(path) == "parquet":
        _check_parquet_schema(path)
      rows = 0
      for location, row, problem in files_lib.iter_rows(path, REQUIRED_FIELDS + OPTIONAL_FIELDS):
        rows += 1
        problem = problem or export_row_problem(row)
        if problem:
          _report(location, problem, on_malformed, skipped)
          continue
        name = row["_task_name"]
        task = tasks.setdefault(name, ExportTask(name, row["_task_source"], location))
        if task.source != row["_task_source"]:
          raise MalformedRowError(
              f"{location}: task {name!r} has _task_source {row['_task_source']!r} but "
              f"{task.source!r} at {task.first_seen}; a task must come from one source")
        key = (split, row["_template_type"])
        task.counts[key] = task.counts.get(key, 0) + 1
        split_files = task.files.setdefault(split, [])
        if not split_files or split_files[-1] != path:
          split_files.append(path)
      if rows == 0:
        raise ValueError(f"{path}: the Flan export file has no rows")
  if not tasks:
    raise ValueError(f"no usable rows in the Flan export files {dict(file_patterns)} "
                     f"({len(skipped)} malformed rows skipped)")
  if skipped:
    logger.warning("Flan export: skipped %d malformed rows (first: %s)", len(skipped), skipped[0])
  return ExportIndex(tasks, files_by_split, skipped)


def _plain_fragment(text: str) -> bool:
  # JSON writers leave such text unescaped, so it appears verbatim in its line.
  return re.fullmatch(r"[A-Za-z0-9_.:\- ]+", text) is not None


class ExportSource(seqio.DataSource):
  """The rows of one export task (optionally one template type), read from its files.

  With `holdout_every` and no validation files, a "validation" split is held out of train: the
  rows whose `inputs + "\n" + targets` hash to 0 modulo `holdout_every` (`ul2flan.holdout`, as
  corpus files do); train leaves them out. Row counts stay the scan's (the slice is
  ~1/`holdout_every` of them), which only the mixing rates read.
  """

  def __init__(self, task: ExportTask, template_type: str | None, on_malformed: str,
               holdout_every: int | None = None):
    splits = [s for s in task.files if task.num_examples(s, template_type) > 0]
    counts = {s: task.num_examples(s, template_type) for s in splits}
    self._holdout_every = None
    if holdout_every and splits == ["train"]:
      self._holdout_every = int(holdout_every)
      splits = ["train", "validation"]
      counts["validation"] = max(1, counts["train"] // self._holdout_every)
    super().__init__(splits=splits, num_input_examples=counts)
    self._task = task
    self._template_type = template_type
    self._on_malformed = on_malformed

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def _files(self, split: str) -> list[str]:
    return list(self._task.files.get("train" if self._holdout_every else split, []))

  def list_shards(self, split: str) -> Sequence[str]:
    return self._files(split)

  def _rows(self, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    equal = {"_task_name": self._task.name}
    if self._template_type is not None:
      equal["_template_type"] = self._template_type
    if files_lib.file_format(path) == "parquet":
      rows = files_lib.iter_matching_parquet_rows(path, REQUIRED_FIELDS + OPTIONAL_FIELDS, equal)
    else:
      # Skip lines that cannot hold the task before paying for their JSON parse.
      needle = self._task.name if _plain_fragment(self._task.name) else None
      rows = ((location, row)
              for location, row, problem in files_lib.iter_rows(path, must_contain=needle)
              if problem is None and all(row.get(k) == v for k, v in equal.items()))
    for location, row in rows:
      problem = export_row_problem(row)
      if problem is None:
        yield location, row
      elif self._on_malformed == "fail":  # the file changed since the scan
        _report(location, problem, "fail", [])

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # handled by the task
    files = self._files(split)
    if not files:
      raise ValueError(f"Flan export task {self._task.name!r} has no {split!r} rows")
    row_shard = None
    if shard_info and shard_info.num_shards > 1:
      if len(files) >= shard_info.num_shards:
        files = files[shard_info.index::shard_info.num_shards]
      else:  # fewer files than shards: every host reads all files and keeps every n-th row
        row_shard = shard_info
    if shuffle and row_shard is None:
      random.Random(seed).shuffle(files)

    def generate() -> Iterator[dict[str, str]]:
      k = 0
      for path in files:
        for _, row in self._rows(path):
          if row_shard is None or k % row_shard.num_shards == row_shard.index:
            yield {"inputs": row["inputs"], "targets": row["targets"]}
          k += 1

    signature = {k: tf.TensorSpec((), tf.string) for k in TEXT_FIELDS}
    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    if self._holdout_every:
      ds = holdout.keep_split(ds, split, self._holdout_every,
                              lambda ex: ex["inputs"] + "\n" + ex["targets"])
    return ds


def _unique_task_names(names: Sequence[str], prefix: str) -> dict[str, str]:
  """export task name -> seqio task name, disambiguating names that sanitize alike."""
  out, taken = {}, set()
  for name in sorted(names):
    base = f"{prefix}.{sources.sanitize_task_name(name)}"
    candidate, n = base, 2
    while candidate in taken:
      candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    out[name] = candidate
  return out


@dataclasses.dataclass
class RegisteredExport:
  mixture: str
  index: ExportIndex
  tasks: list[mixtures.TaskInfo]
  source_mixtures: dict[str, str]  # `_task_source` -> mixture name


_REGISTERED: dict[str, tuple[tuple[Any, ...], RegisteredExport]] = {}


def register_flan_exports(file_pattern: str | Sequence[str], name: str = "flan_export",
                          validation_file_pattern: str | Sequence[str] | None = None,
                          preset: str | mixtures.Preset = "proportion_b",
                          on_malformed: str = "fail", ignore_unknown_sources: bool = False,
                          vocabulary: seqio.Vocabulary | None = None,
                          holdout_every: int | None = holdout.DEFAULT_EVERY
                          ) -> RegisteredExport:
  """Scans the export files and registers its tasks, per-source mixtures and `name`.

  Without `validation_file_pattern`, each task's "validation" split is held out of its train
  rows (`ExportSource`; `holdout_every=None` gives no validation split instead).

  Tasks are `{name}.{task}` (`{name}.{task}.{template_type}` for presets that split by format);
  per-source mixtures `{name}_source_{source}`; the preset's submixtures `{name}_{group}`.
  """
  preset = mixtures.get_preset(preset)
  key = (repr(file_pattern), repr(validation_file_pattern), preset, on_malformed,
         ignore_unknown_sources, holdout_every)
  if name in _REGISTERED:
    previous_key, registered = _REGISTERED[name]
    if previous_key == key:
      return registered
    raise ValueError(f"Flan export mixture {name!r} was already registered with other settings; "
                     "choose another `name`")
  patterns = {"train": file_pattern}
  if validation_file_pattern:
    patterns["validation"] = validation_file_pattern
  elif holdout_every:
    holdout.announce(f"Flan export {file_pattern!r}", holdout_every)
  index = scan_exports(patterns, on_malformed)
  vocabulary = vocabulary or vocabularies.configured()
  seqio_names = _unique_task_names(list(index.tasks), name)
  infos = []
  for task_name, task in sorted(index.tasks.items()):
    types = task.template_types if preset.split_formats else [None]
    for template_type in types:
      seqio_name = seqio_names[task_name]
      if template_type is not None:
        seqio_name += f".{sources.sanitize_task_name(template_type)}"
      source = ExportSource(task, template_type, on_malformed,
                            None if validation_file_pattern else holdout_every)
      sources.add_task(seqio_name, source, vocabulary, replace=True)
      infos.append(mixtures.TaskInfo(seqio_name, task.source, template_type))
  submixtures = mixtures.preset_submixtures(preset, infos, ignore_unknown_sources)
  source_mixtures = {}
  for source in sorted({t.source for t in infos}):
    group = mixtures.group_of_source(preset, source)
    if group is None:
      continue
    mixture_name = f"{name}_source_{mixtures.normalize_source(source)}"
    mixtures.register_task_mixture(mixture_name, [t.name for t in infos if t.source == source],
                                   cap=group.cap, replace=True)
    source_mixtures[source] = mixture_name
  mixtures.register_capped_mixture(name, submixtures, replace=True)
  registered = RegisteredExport(name, index, infos, source_mixtures)
  _REGISTERED[name] = (key, registered)
  return registered


@gin.configurable
def flan_export_mixture(file_pattern: str = gin.REQUIRED, name: str = "flan_export",
                        validation_file_pattern: str | None = None,
                        preset: str = "proportion_b", on_malformed: str = "fail",
                        ignore_unknown_sources: bool = False,
                        holdout_every: int | None = holdout.DEFAULT_EVERY) -> str:
  """Gin entry point: registers a folder of Flan exports and returns the mixture name.

  `preset` is 'proportion_b' or 'flan2022_submix'; their weights and caps are gin-configurable
  (`proportion_b.niv2_cap = 5000`, `flan2022_submix.cot = 0.05`, ...). Without validation files,
  1 row in ~`holdout_every` of each task is held out of train as its validation split.
  """
  return register_flan_exports(file_pattern, name, validation_file_pattern, preset, on_malformed,
                               ignore_unknown_sources, holdout_every=holdout_every).mixture
