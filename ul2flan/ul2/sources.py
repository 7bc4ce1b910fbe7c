"""Corpus sources for UL2R (`ul2flan.ul2.tasks` registers UL2 tasks over them).

Source kinds (each yields examples with one string field, "text" unless said otherwise):

- TFDS, e.g. `tfds_source("c4/en:3.0.1")`, field `text_key`. Defining it touches no data; using it
  before the dataset is prepared fails with a message saying how to prepare it.
- Plain text files, `text_files_source(pattern, per="line")`: one document per non-blank line,
  or `per="file"`: one document per file.
- JSON Lines, `jsonl_source(pattern, text_field="text")`: one document per line.
- TFRecord files of tf.train.Example, `tfrecord_source(pattern, text_feature="text")`.
- Named sources registered by other packages (`register_named_source`): the demo registers its
  generated corpus as "demo" (`ul2flan.demo.corpus`), so this module never imports the demo.

File patterns are globs; `{split}` in a pattern is replaced by the split name. A pattern without
`{split}` is the "train" split, and a "validation" split is held out of it: the documents whose
text hashes to 0 modulo `holdout_every` (default 100, so ~1%; `ul2flan.holdout`), which
"train" then leaves out. The slice is the same on every run and host. Files are checked when a dataset is built (not when the source is
defined): a pattern that matches nothing, an empty file, or a first record without the text field
raises an error that names the file. Later malformed JSONL lines raise errors naming file and line.

`source_from_spec` builds any of them from one string (handy in gin and on command lines):
"demo", "tfds:c4/en:3.0.1", "text:/data/{split}-*.txt", "textfile:/docs/*.md",
"jsonl:/data/{split}.jsonl", "tfrecord:/data/{split}-*.tfrecord".
"""

from __future__ import annotations

import functools
import json
import os
from typing import Callable, Iterator, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from ul2flan import holdout

DEFAULT_SPLITS = ("train", "validation")
TEXT_KEY = "text"
HOLDOUT_EVERY = holdout.DEFAULT_EVERY  # no validation pattern: ~1% of train is held out


# ------------------------------------------------------------------------------------------------
# File sources.

def split_patterns(pattern: str | Mapping[str, str],
                   splits: Sequence[str] = DEFAULT_SPLITS) -> dict[str, str]:
  """{split: glob}. `{split}` in `pattern` is filled per split; otherwise `pattern` is "train"."""
  if isinstance(pattern, Mapping):
    return dict(pattern)
  if "{split}" in pattern:
    return {split: pattern.replace("{split}", split) for split in splits}
  return {"train": pattern}


class _CheckedFileSource(seqio.FileDataSource):
  """A FileDataSource that checks the files it is about to read and names any bad one; with
  only a train pattern, it holds a validation slice out of train (see the module docstring)."""

  def __init__(self, kind: str, read_file_fn, split_to_filepattern: Mapping[str, str],
               check_file_fn=None, holdout_every: int | None = HOLDOUT_EVERY):
    self.holdout_every = None
    if set(split_to_filepattern) == {"train"} and holdout_every:
      self.holdout_every = int(holdout_every)
      holdout.announce(f"{kind} corpus {split_to_filepattern['train']!r}", self.holdout_every)
      split_to_filepattern = {**split_to_filepattern, "validation": split_to_filepattern["train"]}
    super().__init__(read_file_fn=read_file_fn, split_to_filepattern=split_to_filepattern)
    self._kind = kind
    self._check_file = check_file_fn

  def list_shards(self, split: str) -> Sequence[str]:
    if split not in self._split_to_filepattern:
      raise ValueError(f"{self._kind} source has no split {split!r}; it has "
                       f"{sorted(self._split_to_filepattern)} (use '{{split}}' in the file "
                       f"pattern to define one pattern per split)")
    files = super().list_shards(split)
    if not files:
      raise FileNotFoundError(f"{self._kind} source: no file matches "
                              f"{self._split_to_filepattern[split]!r} (split {split!r})")
    return files

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, **kwargs) -> tf.data.Dataset:
    files = list(self.list_shards(split))
    if shard_info:
      files = files[shard_info.index::shard_info.num_shards]  # the files this shard will read
    for path in files:
      if tf.io.gfile.stat(path).length == 0:
        raise ValueError(f"{self._kind} source: file {path} is empty")
      if self._check_file:
        self._check_file(path)
    ds = super().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info,
                             **kwargs)
    if self.holdout_every:
      ds = holdout.keep_split(ds, split, self.holdout_every, lambda ex: ex[TEXT_KEY])
    return ds


def _read_lines(path: tf.Tensor) -> tf.data.Dataset:
  lines = tf.data.TextLineDataset(path)
  lines = lines.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
  return lines.map(lambda line: {TEXT_KEY: line})


def _read_whole_file(path: tf.Tensor) -> tf.data.Dataset:
  return tf.data.Dataset.from_tensors({TEXT_KEY: tf.io.read_file(path)})


@gin.configurable
def text_files_source(pattern: str | Mapping[str, str], per: str = "line",
                      holdout_every: int | None = HOLDOUT_EVERY) -> seqio.DataSource:
  """Plain text: one document per non-blank line (`per="line"`) or per file (`per="file"`)."""
  readers = {"line": _read_lines, "file": _read_whole_file}
  if per not in readers:
    raise ValueError(f"text_files_source: per must be 'line' or 'file', got {per!r}")
  return _CheckedFileSource(f"text ({per} per document)", readers[per], split_patterns(pattern),
                            holdout_every=holdout_every)


def _jsonl_text(line: str, text_field: str, where: str) -> str:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
  if not isinstance(record, dict) or text_field not in record:
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise ValueError(f"{where}: no text field {text_field!r} (found {keys}); set text_field")
  if not isinstance(record[text_field], str):
    raise ValueError(f"{where}: field {text_field!r} is not a string")
  return record[text_field]


def _jsonl_documents(path: str, text_field: str) -> Iterator[str]:
  with tf.io.gfile.GFile(path, "r") as f:
    for number, line in enumerate(f, start=1):
      if line.strip():
        yield _jsonl_text(line, text_field, f"{path}:{number}")


def _read_jsonl(path: tf.Tensor, text_field: str) -> tf.data.Dataset:
  """Lines of one JSONL file -> {"text"}; a bad line fails with its file and line number.

  In-graph line reading (no Python generator): the reader is checkpointable (O(1) resume) and has
  no generator thread to hang at interpreter exit. Only the JSON decoding of a line runs Python,
  as a stateless function.
  """

  def parse(path_bytes: bytes, number: np.int64, line: bytes) -> bytes:
    return _jsonl_text(line.decode("utf-8"), text_field,
                       f"{path_bytes.decode()}:{int(number)}").encode("utf-8")

  def to_text(number: tf.Tensor, line: tf.Tensor) -> dict[str, tf.Tensor]:
    text = tf.numpy_function(parse, [path, number, line], tf.string, stateful=False)
    return {TEXT_KEY: tf.ensure_shape(text, [])}

  lines = tf.data.TextLineDataset(path).enumerate(start=1)
  lines = lines.filter(lambda number, line: tf.strings.length(tf.strings.strip(line)) > 0)
  return lines.map(to_text)


@gin.configurable
def jsonl_source(pattern: str | Mapping[str, str], text_field: str = "text",
                 holdout_every: int | None = HOLDOUT_EVERY) -> seqio.DataSource:
  """JSON Lines: one JSON object per line; the document is `record[text_field]`."""

  def check_first_record(path: str) -> None:
    next(_jsonl_documents(path, text_field), None)

  return _CheckedFileSource("jsonl", functools.partial(_read_jsonl, text_field=text_field),
                            split_patterns(pattern), check_first_record, holdout_every)


@gin.configurable
def tfrecord_source(pattern: str | Mapping[str, str], text_feature: str = "text",
                    holdout_every: int | None = HOLDOUT_EVERY) -> seqio.DataSource:
  """TFRecord files of tf.train.Example with a bytes feature `text_feature`."""
  description = {text_feature: tf.io.FixedLenFeature([], tf.string)}

  def read(path: tf.Tensor) -> tf.data.Dataset:
    records = tf.data.TFRecordDataset(path)
    return records.map(
        lambda r: {TEXT_KEY: tf.io.parse_single_example(r, description)[text_feature]})

  def check_first_record(path: str) -> None:
    try:
      first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.OpError as e:
      raise ValueError(f"tfrecord source: {path} is not a readable TFRecord file ({e.message})"
                       ) from None
    if first is None:
      raise ValueError(f"tfrecord source: file {path} holds no record")
    try:
      example = tf.train.Example.FromString(first.numpy())
    except Exception:  # pylint: disable=broad-except  # protobuf raises DecodeError variants
      raise ValueError(f"tfrecord source: the first record of {path} is not a tf.train.Example"
                       ) from None
    feature = example.features.feature.get(text_feature)
    if feature is None or feature.WhichOneof("kind") != "bytes_list":
      raise ValueError(f"tfrecord source: {path} has no bytes feature {text_feature!r} (features: "
                       f"{sorted(example.features.feature)}); set text_feature")

  return _CheckedFileSource("tfrecord", read, split_patterns(pattern), check_first_record,
                            holdout_every)


# ------------------------------------------------------------------------------------------------
# TFDS and the demo corpus.

def tfds_data_dirs(data_dir: str | None = None) -> list[str]:
  """Where TFDS looks: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if data_dir:
    return [data_dir]
  return [os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")]


class _PreparedTfdsSource(seqio.TfdsDataSource):
  """A TfdsDataSource that refuses, with instructions, to use a dataset that is not prepared.

  The check looks for the prepared directory itself instead of asking TFDS, which could try to
  reach the network.
  """

  def __init__(self, tfds_name: str, data_dir: str | None, splits: Sequence[str]):
    super().__init__(tfds_name=tfds_name, tfds_data_dir=data_dir, splits=splits)
    self._tfds_name = tfds_name
    self._data_dir = data_dir

  def _require_prepared(self) -> None:
    name, _, version = self._tfds_name.partition(":")
    for root in tfds_data_dirs(self._data_dir):
      pattern = os.path.join(root, name, version or "*", "dataset_info.json")
      if tf.io.gfile.glob(pattern):
        return
    dirs = tfds_data_dirs(self._data_dir)
    catalog = name.split("/")[0]
    raise FileNotFoundError(
        f"TFDS dataset {self._tfds_name!r} is not prepared under {dirs}. Prepare it once where "
        f"the network is reachable: python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{self._tfds_name}', data_dir='DIR').download_and_prepare()\" (C4 needs "
        f"Apache Beam and many hours; see https://www.tensorflow.org/datasets/catalog/{catalog}), "
        f"or copy a prepared copy; then pass data_dir=DIR or set TFDS_DATA_DIR=DIR.")

  def get_dataset(self, *args, **kwargs) -> tf.data.Dataset:
    self._require_prepared()
    return super().get_dataset(*args, **kwargs)

  def list_shards(self, split: str) -> Sequence[str]:
    self._require_prepared()
    return super().list_shards(split)

  def num_input_examples(self, split: str) -> int | None:
    self._require_prepared()
    return super().num_input_examples(split)


@gin.configurable
def tfds_source(name: str, data_dir: str | None = None,
                splits: Sequence[str] = DEFAULT_SPLITS) -> seqio.DataSource:
  """A TFDS dataset such as "c4/en:3.0.1". Defining the source reads nothing."""
  return _PreparedTfdsSource(name, data_dir, splits)


# Sources known by a bare name ("demo"): registered by the package that owns them.
_NAMED_SOURCES: dict[str, Callable[[], seqio.DataSource]] = {}


def register_named_source(name: str, make_source: Callable[[], seqio.DataSource]) -> None:
  """Makes `name` a corpus spec of its own (the demo registers "demo")."""
  if ":" in name:
    raise ValueError(f"a named corpus source cannot contain ':' ({name!r})")
  _NAMED_SOURCES[name] = make_source


_SPEC_KINDS = {
    "text": lambda arg: text_files_source(arg, per="line"),
    "textfile": lambda arg: text_files_source(arg, per="file"),
    "jsonl": jsonl_source,
    "tfrecord": tfrecord_source,
    "tfds": tfds_source,
}


@gin.configurable
def source_from_spec(spec: str) -> seqio.DataSource:
  """A registered name ("demo") or "tfds:NAME", "text:GLOB", "textfile:GLOB", "jsonl:GLOB",
  "tfrecord:GLOB"."""
  if spec in _NAMED_SOURCES:
    return _NAMED_SOURCES[spec]()
  kind, sep, arg = spec.partition(":")
  if not sep or kind not in _SPEC_KINDS or not arg:
    named = " or ".join(repr(n) for n in sorted(_NAMED_SOURCES)) or "a registered name"
    raise ValueError(f"bad corpus spec {spec!r}; use {named}, or KIND:ARG with KIND one of "
                     f"{sorted(_SPEC_KINDS)}, e.g. 'jsonl:/data/{{split}}.jsonl'")
  return _SPEC_KINDS[kind](arg)
