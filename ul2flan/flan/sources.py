"""seqio tasks from instruction data: formatted in Python by the engine, or already formatted.

* `register_formatted_task`: raw examples (any Python callable per split) -> the formatting
  engine -> a seqio task. Used by the embedded demo and by the sources below.
* `raw_instruction_mixture` (gin): users' raw instruction data in JSONL (schema in
  docs/flan.md) -> one formatted task per `task` value plus a capped mixture.
* `register_tfds_task` / `register_hf_disk_task`: TFDS datasets prepared locally, or Hugging Face
  datasets saved with `save_to_disk` (needs the optional `datasets` package).
* Flan-collection exports (already formatted rows) live in `ul2flan.flan.exports`.

Formatted examples are computed once per split, lazily (when seqio first asks for the split or
its size), and kept in memory; every host computes the same list and takes its shard of it.
"""

from __future__ import annotations

import dataclasses
import logging
import functools
import os
import threading
from typing import Any, Callable, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from ul2flan import registration
from ul2flan import vocabularies
from ul2flan.flan import chat
from ul2flan.flan import files as files_lib
from ul2flan.flan import formatting
from ul2flan.flan import mixtures
from ul2flan.flan import templates as templates_lib

logger = logging.getLogger(__name__)

RawExample = Mapping[str, Any]
DEFAULT_FORMATS = ("zs_opt", "fs_opt", "zs_noopt", "fs_noopt")
MALFORMED_POLICIES = ("fail", "skip")
TEXT_FEATURES = ("inputs", "targets")


def output_features(vocabulary: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
  """`inputs` and `targets`, both ending in EOS, as the prefix-LM feature converter expects."""
  vocabulary = vocabulary or vocabularies.configured()
  return {k: seqio.Feature(vocabulary, add_eos=True) for k in TEXT_FEATURES}


def token_counter(vocabulary: seqio.Vocabulary) -> formatting.TokenCounter:
  return lambda text: len(vocabulary.encode(text))


def check_malformed_policy(on_malformed: str) -> None:
  if on_malformed not in MALFORMED_POLICIES:
    raise ValueError(f"on_malformed must be one of {MALFORMED_POLICIES}, got {on_malformed!r}")


class InMemorySource(seqio.DataSource):
  """`inputs`/`targets` string rows computed in Python, per split, on first use."""

  def __init__(self, name: str, rows_fn: Callable[[str], Sequence[Mapping[str, str]]],
               splits: Sequence[str]):
    super().__init__(splits=splits, num_input_examples=None, caching_permitted=True)
    self._name = name
    self._rows_fn = rows_fn
    self._rows: dict[str, list[Mapping[str, str]]] = {}
    self._lock = threading.Lock()

  def rows(self, split: str) -> list[Mapping[str, str]]:
    if split not in self.splits:
      raise ValueError(f"task {self._name!r} has no split {split!r}; it has {list(self.splits)}")
    with self._lock:
      if split not in self._rows:
        self._rows[split] = list(self._rows_fn(split))
      return self._rows[split]

  def num_input_examples(self, split: str) -> int:
    return len(self.rows(split))

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [f"{self._name}:{split}"]

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # handled by the task
    rows = self.rows(split)
    if not rows:
      raise ValueError(f"task {self._name!r} has no {split!r} examples")
    ds = tf.data.Dataset.from_tensor_slices(
        {k: np.array([r[k] for r in rows], dtype=object) for k in TEXT_FEATURES})
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    if shuffle:
      ds = ds.shuffle(len(rows), seed=seed)
    return ds


def add_task(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary | None,
             metric_fns: Sequence[Callable[..., Any]] = (), replace: bool = False) -> seqio.Task:
  """Registers a text-to-text task: the chat template when switched on (`chat.ChatFormat`),
  tokenize both features, then append EOS after trimming."""
  if name in seqio.TaskRegistry.names() and not replace:
    raise ValueError(f"task {name!r} is already registered; pass replace=True to rebuild it")
  return registration.add_task(
      name, replace=replace, source=source,
      preprocessors=[chat.apply_chat_template, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=output_features(vocabulary), metric_fns=list(metric_fns))


# --------------------------------------------------------------------------------------------
# Formatted tasks.

@gin.configurable
@dataclasses.dataclass(frozen=True)
class Rendering:
  """How raw rows become prompts: a template family (a name in the default template registry, or
  the family itself), the formats drawn (names with equal weights, or format -> weight), the seed
  of every per-example choice, and how few-shot prompts are built. In gin:
  `raw_instruction_mixture.rendering = @Rendering()`, `Rendering.family = "generic_qa"`."""
  family: str | templates_lib.Family = "generic_qa"
  formats: Sequence[str] | Mapping[str | formatting.Format, float] = DEFAULT_FORMATS
  seed: int = 0
  few_shot: formatting.FewShotConfig = formatting.FewShotConfig()


@dataclasses.dataclass
class FormattedTaskSpec:
  """How a formatted task gets its examples; `examples(split)` is cached."""
  formatter: formatting.Formatter
  raw_fn: Callable[[str], Sequence[RawExample]]
  exemplar_splits: Mapping[str, str]

  def __post_init__(self):
    self.raw = functools.lru_cache(maxsize=None)(self.raw_fn)
    self.examples = functools.lru_cache(maxsize=None)(self._format)

  def _format(self, split: str) -> list[formatting.FormattedExample]:
    raw = self.raw(split)
    pool_split = self.exemplar_splits.get(split)
    pool = None if pool_split is None else self.raw(pool_split)
    return self.formatter.format_all(raw, split, exemplar_pool=pool)


_FORMATTED_TASKS: dict[str, FormattedTaskSpec] = {}


def formatted_examples(task_name: str, split: str) -> list[formatting.FormattedExample]:
  """The Python-side formatted examples of a task registered by `register_formatted_task`."""
  if task_name not in _FORMATTED_TASKS:
    raise KeyError(f"{task_name!r} is not a formatted task; known: {sorted(_FORMATTED_TASKS)}")
  return _FORMATTED_TASKS[task_name].examples(split)


def register_formatted_task(
    name: str,
    raw_examples: Callable[[str], Sequence[RawExample]],
    splits: Sequence[str],
    rendering: Rendering,
    *,
    vocabulary: seqio.Vocabulary | None = None,
    exemplar_splits: Mapping[str, str] | None = None,
    metric_fns: Sequence[Callable[..., Any]] = (),
    replace: bool = False) -> seqio.Task:
  """Registers a task whose examples are `raw_examples(split)` rendered by the engine.

  Args:
    name: the seqio task name (also the seed key of the per-example choices).
    raw_examples: split -> raw example dicts (see `ul2flan.flan.formatting`).
    splits: the task's splits.
    rendering: the template family, formats (one per example), seed and few-shot settings.
    vocabulary: the task vocabulary (default `vocabularies.configured()`, the run's vocabulary); also counts
      the few-shot budget.
    exemplar_splits: split -> the split its few-shot exemplars come from (default: its own,
      never the query itself).
    metric_fns: seqio metric functions (for evaluation tasks).
    replace: rebuild the task if the name is taken.
  """
  vocabulary = vocabulary or vocabularies.configured()
  family = rendering.family
  if isinstance(family, str):
    family = templates_lib.default_registry().family(family)
  formatter = formatting.Formatter(name, family, rendering.formats, seed=rendering.seed,
                                   few_shot=rendering.few_shot,
                                   count_tokens=token_counter(vocabulary))
  spec = FormattedTaskSpec(formatter, raw_examples, dict(exemplar_splits or {}))
  source = InMemorySource(
      name, lambda split: [{"inputs": e.inputs, "targets": e.targets}
                           for e in spec.examples(split)], splits)
  task = add_task(name, source, vocabulary, metric_fns, replace)
  _FORMATTED_TASKS[name] = spec
  return task


def register_preformatted_task(name: str, rows_fn: Callable[[str], Sequence[RawExample]],
                               splits: Sequence[str], vocabulary: seqio.Vocabulary | None = None,
                               replace: bool = False) -> seqio.Task:
  """Registers a task over rows that already hold `inputs` and `targets` text."""

  def checked_rows(split: str) -> list[dict[str, str]]:
    rows = []
    for i, row in enumerate(rows_fn(split)):
      for key in TEXT_FEATURES:
        if not isinstance(row.get(key), str) or not row[key].strip():
          raise ValueError(f"task {name!r} split {split!r} row {i}: `{key}` must be non-empty "
                           f"text, got {row.get(key)!r}")
      rows.append({k: row[k] for k in TEXT_FEATURES})
    return rows

  return add_task(name, InMemorySource(name, checked_rows, splits), vocabulary, replace=replace)


# --------------------------------------------------------------------------------------------
# (b) Users' raw instruction data in JSONL (or parquet).

RAW_REQUIRED_FIELDS = ("question", "answer")
RAW_TEXT_FIELDS = ("rationale", "context", "task")


def raw_row_problem(row: Any) -> str | None:
  """Why a raw instruction row is unusable, or None. Schema: see docs/flan.md."""
  if not isinstance(row, Mapping):
    return f"expected an object, got {type(row).__name__}"
  for key in RAW_REQUIRED_FIELDS:
    if key not in row:
      return f"missing field {key!r}"
    if not isinstance(row[key], str):
      return f"field {key!r} is {type(row[key]).__name__}, expected a string"
    if not row[key].strip():
      return f"field {key!r} is empty"
  for key in RAW_TEXT_FIELDS:
    if row.get(key) is not None and not isinstance(row[key], str):
      return f"field {key!r} is {type(row[key]).__name__}, expected a string"
  options = row.get("options")
  if options is not None:
    if (not isinstance(options, (list, tuple))
        or not all(isinstance(o, str) and o.strip() for o in options)):
      return "field 'options' must be a list of non-empty strings"
    if options and row["answer"] not in options:
      return f"answer {row['answer']!r} is not one of the options {list(options)}"
  return None


def _default_task_name(path: str) -> str:
  return os.path.basename(path).split(".")[0]


def read_raw_instructions(file_pattern: str | Sequence[str], on_malformed: str = "fail"
                          ) -> dict[str, list[dict[str, Any]]]:
  """Raw rows grouped by their `task` field (default: the file name up to its first dot)."""
  check_malformed_policy(on_malformed)
  by_task: dict[str, list[dict[str, Any]]] = {}
  skipped = 0
  for path in files_lib.expand_patterns(file_pattern, "raw instruction data"):
    for location, row, problem in files_lib.iter_rows(path):
      problem = problem or raw_row_problem(row)
      if problem:
        if on_malformed == "fail":
          raise ValueError(f"{location}: malformed raw instruction row: {problem}. Fix the row, "
                           "or set on_malformed='skip' to leave such rows out.")
        logger.warning("%s: skipping malformed raw instruction row: %s", location, problem)
        skipped += 1
        continue
      by_task.setdefault(row.get("task") or _default_task_name(path), []).append(row)
  if not by_task:
    raise ValueError(f"no usable raw instruction rows in {file_pattern!r} ({skipped} skipped)")
  return by_task


def sanitize_task_name(name: str) -> str:
  """Maps any text to a valid seqio task-name fragment."""
  cleaned = "".join(c if c.isalnum() or c in "_.:#" else "_" for c in name)
  return cleaned or "_"


_MEMO: dict[tuple[Any, ...], str] = {}


@gin.configurable
def raw_instruction_mixture(
    train_file_pattern: str = gin.REQUIRED,
    validation_file_pattern: str | None = None,
    name: str = "raw_instructions",
    rendering: Rendering | None = None,
    templates_file: str | None = None,
    cap: int | None = None,
    on_malformed: str = "fail") -> str:
  """Registers one formatted task per raw `task` and a capped mixture `name`; returns `name`.

  Meant for gin: `MIXTURE_OR_TASK_NAME = @raw_instruction_mixture()`; a repeated call with the
  same settings returns the already registered mixture. `rendering` (default `Rendering()`, as
  gin binds it) says how the rows become prompts.
  """
  rendering = rendering or Rendering()
  key = ("raw", train_file_pattern, validation_file_pattern, name, repr(rendering),
         templates_file, cap, on_malformed)
  if key in _MEMO:
    return _MEMO[key]
  if templates_file:
    templates_lib.load_templates(templates_file, replace=True)
  patterns = {"train": train_file_pattern}
  if validation_file_pattern:
    patterns["validation"] = validation_file_pattern
  rows = {split: read_raw_instructions(p, on_malformed) for split, p in patterns.items()}
  task_names = []
  for task in sorted(rows["train"]):
    task_name = f"{name}.{sanitize_task_name(task)}"
    splits = [s for s in patterns if task in rows[s]]
    register_formatted_task(task_name, lambda split, task=task: rows[split][task], splits,
                            rendering, replace=True)
    task_names.append(task_name)
  mixtures.register_task_mixture(name, task_names, cap=cap, replace=True)
  _MEMO[key] = name
  return name


# --------------------------------------------------------------------------------------------
# (c) TFDS datasets and Hugging Face datasets saved to disk.

def _to_python(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_to_python(v) for v in value.tolist()]
  if isinstance(value, (list, tuple)):
    return [_to_python(v) for v in value]
  if isinstance(value, dict):
    return {k: _to_python(v) for k, v in value.items()}
  if isinstance(value, np.generic):
    return value.item()
  return value


def _lookup(row: Mapping[str, Any], path: str, where: str) -> Any:
  value: Any = row
  for part in path.split("/"):
    if not isinstance(value, Mapping) or part not in value:
      raise KeyError(f"{where}: no field {path!r} (fields: {sorted(row)})")
    value = value[part]
  return value


def apply_field_map(row: Mapping[str, Any], field_map: Mapping[str, str] | None,
                    where: str) -> dict[str, Any]:
  """Copies `row` and adds `our_name: row[their/path]` for each field_map entry."""
  out = dict(row)
  for ours, theirs in (field_map or {}).items():
    out[ours] = _lookup(row, theirs, where)
  return out


def tfds_examples(name: str, split: str, data_dir: str | None = None,
                  field_map: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
  """Rows of a locally prepared TFDS dataset (never downloads), renamed by `field_map`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"TFDS dataset {name!r} is unknown to tensorflow_datasets ({first_line})"
                     ) from None
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared under data_dir {builder.data_dir!r}. ul2flan never "
        "downloads data: prepare it first (e.g. `tfds build`) or pass the right data_dir.")
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return [apply_field_map(_to_python(ex), field_map, f"TFDS {name} {split} row {i}")
          for i, ex in enumerate(tfds.as_numpy(ds))]


def _import_hf_datasets() -> Any:
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        "reading a saved Hugging Face dataset needs the `datasets` package, which ul2flan does "
        "not install. Install it (pip install datasets), or export the data to JSONL / parquet "
        "and use raw_instruction_mixture or flan_export_mixture.") from None
  return datasets


def hf_disk_examples(path: str, split: str,
                     field_map: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
  """Rows of a Hugging Face dataset saved with `save_to_disk`, renamed by `field_map`."""
  datasets = _import_hf_datasets()
  loaded = datasets.load_from_disk(path)
  if isinstance(loaded, datasets.DatasetDict):
    if split not in loaded:
      raise ValueError(f"{path}: no split {split!r}; it has {sorted(loaded)}")
    loaded = loaded[split]
  return [apply_field_map(dict(row), field_map, f"{path} {split} row {i}")
          for i, row in enumerate(loaded)]


def _register_rows_task(task_name: str, rows_fn: Callable[[str], list[dict[str, Any]]],
                        splits: Sequence[str], rendering: Rendering | None,
                        replace: bool) -> seqio.Task:
  """Rows rendered by the engine (`rendering`), or already holding inputs / targets (None)."""
  cached = functools.lru_cache(maxsize=None)(rows_fn)
  if rendering is None:
    return register_preformatted_task(task_name, cached, splits, replace=replace)
  return register_formatted_task(task_name, cached, splits, rendering, replace=replace)


@gin.configurable
def register_tfds_task(task_name: str, tfds_name: str,
                       splits: Sequence[str] = ("train", "validation"),
                       field_map: Mapping[str, str] | None = None,
                       data_dir: str | None = None, preformatted: bool = False,
                       rendering: Rendering | None = None, replace: bool = False) -> str:
  """Task over a prepared TFDS dataset: `preformatted` rows have `inputs`/`targets`, others are
  raw examples (`question`, `answer`, ...) rendered by the engine as `rendering` says (default
  `Rendering()`). `field_map` renames fields (`{"question": "query", "answer": "answers/text"}`).
  Returns the task name."""
  _register_rows_task(
      task_name, lambda split: tfds_examples(tfds_name, split, data_dir, field_map), splits,
      None if preformatted else rendering or Rendering(), replace)
  return task_name


@gin.configurable
def register_hf_disk_task(task_name: str, path: str,
                          splits: Sequence[str] = ("train", "validation"),
                          field_map: Mapping[str, str] | None = None, preformatted: bool = False,
                          rendering: Rendering | None = None, replace: bool = False) -> str:
  """Like `register_tfds_task`, over `datasets.load_from_disk(path)`. Returns the task name."""
  _import_hf_datasets()  # fail at registration, not at the first batch
  _register_rows_task(task_name, lambda split: hf_disk_examples(path, split, field_map), splits,
                      None if preformatted else rendering or Rendering(), replace)
  return task_name
