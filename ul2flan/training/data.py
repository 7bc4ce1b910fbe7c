"""Training/eval data: seqio task -> feature converter -> per-host numpy batches.

The global batch is defined by `num_data_shards` seqio shards, not by the number of processes:
each process reads the shards assigned to it and concatenates their per-shard batches. With the
default (one shard per process) every process reads only its own data; a single process can also
read all shards, which reproduces a multi-host run's global batch exactly (used in tests).

Resuming: pipelines are deterministic given the seed, so the iterator position is the number of
batches consumed; a restored iterator rebuilds the pipeline and skips that many batches.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Iterator, Mapping

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf


class PrefixLMFeatureConverter(seqio.PrefixLMFeatureConverter):
  """seqio's prefix LM (inputs + targets concatenated, then packed), checked per decoder row.

  `task_feature_lengths` {"inputs": I, "targets": T} means rows of I + T tokens. seqio's check
  wants each feature within its own length; here an example passes when its inputs and targets
  together fit the row, as UL2 examples sized with `fill_rows` do (an R example at 1024 + 1024
  has ~1680 inputs and ~370 targets tokens). An example longer than the row is an error, never
  silently cut.
  """

  def __init__(self, *args, **kwargs):
    kwargs["apply_length_check"] = False  # seqio's per-feature check; the row is checked below
    super().__init__(*args, **kwargs)

  def _convert_features(self, ds, task_feature_lengths):
    row = sum(task_feature_lengths.values())

    def check_row(ex):
      length = tf.size(ex["inputs"]) + tf.size(ex["targets"])
      fits = tf.debugging.assert_less_equal(
          length, row, message=f"an example's inputs + targets exceed the {row}-token row of "
                               f"task_feature_lengths {dict(task_feature_lengths)}")
      with tf.control_dependencies([fits]):
        return {k: tf.identity(v) for k, v in ex.items()}

    ds = ds.map(check_row, num_parallel_calls=tf.data.AUTOTUNE)
    return super()._convert_features(ds, task_feature_lengths)


class CausalPrefixLMFeatureConverter(PrefixLMFeatureConverter):
  """PrefixLM layout (inputs + targets concatenated, loss on targets only) with causal attention.

  For instruction-tuning a model that stays a causal LM (Flan-PaLM from PaLM, as opposed to
  Flan-U-PaLM, which keeps UL2R's bidirectional prefix).
  """
  MODEL_FEATURES = {k: v for k, v in seqio.PrefixLMFeatureConverter.MODEL_FEATURES.items()
                    if k != "decoder_causal_attention"}

  def _convert_features(self, ds, task_feature_lengths):
    ds = super()._convert_features(ds, task_feature_lengths)
    return ds.map(lambda ex: {k: v for k, v in ex.items() if k != "decoder_causal_attention"},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    lengths = super().get_model_feature_lengths(task_feature_lengths)
    lengths.pop("decoder_causal_attention", None)
    return lengths


FEATURE_CONVERTERS = {
    "lm": seqio.DecoderFeatureConverter,  # causal LM on `targets`
    "prefix_lm": PrefixLMFeatureConverter,  # inputs bidirectional, loss on targets
    "prefix_lm_causal": CausalPrefixLMFeatureConverter,  # same layout, causal attention
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """What t5x's DatasetConfig says: which task, how long, how many, in what order."""
  mixture_or_task_name: str = gin.REQUIRED
  task_feature_lengths: Mapping[str, int] = gin.REQUIRED
  split: str = "train"
  batch_size: int = 8  # global, in sequences
  shuffle: bool = True
  seed: int = 0
  pack: bool = True
  feature_converter: str = "lm"  # "lm" (causal) or "prefix_lm" (inputs bidirectional)
  use_cached: bool = False
  module: str | None = None  # imported before the task is looked up (MIXTURE_OR_TASK_MODULE)
  num_data_shards: int | None = None  # default: one per process
  repeat: bool = True


class InputPipelineError(ValueError):
  """The input pipeline failed while producing a batch (malformed data, unreadable file, ...)."""


def pipeline_error_message(error: tf.errors.OpError) -> str:
  """The useful line of a tf.data error: the Python error raised in the pipeline, if any."""
  first = re.split(r"\nTraceback|\n\s*\[\[|\s\[Op:", error.message)[0]
  raised = re.search(r"(?:^|[\s:}])([\w.]*(?:Error|Exception): .*)", first, re.S)
  text = raised.group(1) if raised else re.sub(r"\{\{[^}]*\}\}\s*", "", first)
  return text.strip() or type(error).__name__


def import_task_module(module: str | None) -> None:
  if module:
    importlib.import_module(module)


def get_task(name: str, module: str | None = None):
  import_task_module(module)
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    known = sorted(seqio.TaskRegistry.names() | seqio.MixtureRegistry.names())
    raise ValueError(
        f"No seqio task or mixture named {name!r}. Registered: {', '.join(known)}. "
        f"Check MIXTURE_OR_TASK_NAME, or the module that registers it "
        f"(MIXTURE_OR_TASK_MODULE, now {module!r}).") from None


def _shard_dataset(cfg: DatasetConfig, shard_index: int, num_shards: int) -> tf.data.Dataset:
  get_task(cfg.mixture_or_task_name, cfg.module)  # registers it, or says what is registered
  converter_cls = FEATURE_CONVERTERS.get(cfg.feature_converter)
  if converter_cls is None:
    raise ValueError(f"feature_converter must be one of {sorted(FEATURE_CONVERTERS)}, "
                     f"got {cfg.feature_converter!r}")
  if cfg.batch_size % num_shards:
    raise ValueError(f"batch size {cfg.batch_size} is not divisible by {num_shards} data shards")
  ds = seqio.get_dataset(
      cfg.mixture_or_task_name, task_feature_lengths=dict(cfg.task_feature_lengths),
      dataset_split=cfg.split, shuffle=cfg.shuffle, num_epochs=None if cfg.repeat else 1,
      feature_converter=converter_cls(pack=cfg.pack), shard_info=seqio.ShardInfo(
          shard_index, num_shards), use_cached=cfg.use_cached, seed=cfg.seed)
  return ds.batch(cfg.batch_size // num_shards, drop_remainder=True)


class HostIterator:
  """Iterates this process's part of the global batch and knows its position."""

  def __init__(self, cfg: DatasetConfig, process_index: int | None = None,
               process_count: int | None = None, start_batch: int = 0):
    self.cfg = cfg
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    num_shards = cfg.num_data_shards or process_count
    if num_shards % process_count:
      raise ValueError(f"num_data_shards={num_shards} must be a multiple of the "
                       f"{process_count} processes")
    per_process = num_shards // process_count
    shards = range(process_index * per_process, (process_index + 1) * per_process)
    options = tf.data.Options()
    options.deterministic = True
    self._datasets = [
        _shard_dataset(cfg, s, num_shards).skip(start_batch).prefetch(2).with_options(options)
        for s in shards]
    self._iters = [d.as_numpy_iterator() for d in self._datasets]
    self.position = start_batch

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    failure = None
    try:
      parts = [next(it) for it in self._iters]  # StopIteration ends a finite (eval) pass
    except tf.errors.OpError as e:  # bad data; OutOfRange arrives as StopIteration
      failure = pipeline_error_message(e)
    if failure is not None:  # raised here, not in `except`: nothing keeps the iterators alive
      self.close()
      raise InputPipelineError(
          f"the input pipeline of {self.cfg.mixture_or_task_name!r} (split {self.cfg.split!r}) "
          f"failed at batch {self.position + 1}: {failure}")
    self.position += 1
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

  def state(self) -> dict[str, int]:
    return {"batches_consumed": self.position}

  def close(self) -> None:
    """Drops the tf.data iterators now (their threads end while the interpreter is alive)."""
    self._iters, self._datasets = [], []
