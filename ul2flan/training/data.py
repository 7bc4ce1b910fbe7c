"""Training/eval data: seqio task -> feature converter -> per-host numpy batches.

The global batch is defined by `num_data_shards` seqio shards, not by the number of processes:
each process reads the shards assigned to it and concatenates their per-shard batches. With the
default (one shard per process) every process reads only its own data; a single process can also
read all shards, which reproduces a multi-host run's global batch exactly (used in tests).

Resuming: each checkpoint holds, besides the number of batches consumed, every process's tf.data
iterator states (`HostIterator.snapshot`, `ul2flan.training.iterator_state`), so a resume restores
the position in O(1) instead of rebuilding the pipeline and skipping the consumed batches (the
fallback, kept for checkpoints without them).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import re
from typing import Iterator, Mapping

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from ul2flan import row_layout
from ul2flan.training import iterator_state
from ul2flan.ul2 import denoisers as ul2_denoisers
from ul2flan.ul2 import tasks as ul2_tasks

logger = logging.getLogger(__name__)


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
  feature_converter: str = "lm"  # a `row_layout` kind: "lm", "prefix_lm", "prefix_lm_causal"
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


def _task_names(cfg: DatasetConfig) -> list[str]:
  """The task, or a mixture's tasks, that `cfg` trains on."""
  task = get_task(cfg.mixture_or_task_name, cfg.module)
  return [t.name for t in task.tasks] if isinstance(task, seqio.Mixture) else [task.name]


def denoiser_groups(cfg: DatasetConfig) -> dict[str, tuple[int, ...]]:
  """{denoiser kind: its mode token's ids} of a UL2 task (or of a mixture's UL2 tasks); {} for
  any other task. The train and eval steps sum loss and accuracy per group, each packed segment
  in the group of the mode token it begins with (`steps.segment_group_ids`). Kinds that share a
  mode token form one group ("R+X"); a mode token of "" marks no group."""
  kinds: dict[tuple[int, ...], set[str]] = {}
  for name in _task_names(cfg):
    mixture = ul2_tasks.task_mixture(name)
    if mixture is None:
      continue
    vocabulary = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
    for d in mixture.denoisers:
      if d.mode_token:
        ids = tuple(int(i) for i in vocabulary.encode(d.mode_token))
        kinds.setdefault(ids, set()).add(d.kind)
  order = ul2_denoisers.SPAN_CORRUPTION_KINDS + (ul2_denoisers.PREFIX_LM_KIND,)
  groups = {"+".join(sorted(k, key=order.index)): ids for ids, k in kinds.items()}
  if len(groups) < len(kinds):  # one kind under several mode tokens: name groups by the ids
    groups = {"+".join(sorted(k, key=order.index)) + "_" + "_".join(map(str, ids)): ids
              for ids, k in kinds.items()}
  return dict(sorted(groups.items(), key=lambda g: order.index(g[0][0])))  # R, X, S


def inputs_end_with_eos(cfg: DatasetConfig) -> bool:
  """Whether the task's rows are `inputs EOS targets`: True except for UL2 tasks whose mixture
  says `inputs_eos=False` (`ul2r_preset.inputs_eos`). A mixture of tasks must agree."""
  found = {name: getattr(ul2_tasks.task_mixture(name), "inputs_eos", True)
           for name in _task_names(cfg)}
  if len(set(found.values())) > 1:
    raise ValueError(f"the tasks of {cfg.mixture_or_task_name!r} lay out their inputs "
                     f"differently (inputs end with EOS: {found}); train them in separate runs, "
                     f"or give every UL2 mixture the same inputs_eos")
  return all(found.values())


def _shard_dataset(cfg: DatasetConfig, shard_index: int, num_shards: int) -> tf.data.Dataset:
  get_task(cfg.mixture_or_task_name, cfg.module)  # registers it, or says what is registered
  converter_cls = row_layout.FEATURE_CONVERTERS.get(cfg.feature_converter)
  if converter_cls is None:
    raise ValueError(f"feature_converter must be one of {list(row_layout.KINDS)}, "
                     f"got {cfg.feature_converter!r}")
  if cfg.batch_size % num_shards:
    raise ValueError(f"batch size {cfg.batch_size} is not divisible by {num_shards} data shards")
  ds = seqio.get_dataset(
      cfg.mixture_or_task_name, task_feature_lengths=dict(cfg.task_feature_lengths),
      dataset_split=cfg.split, shuffle=cfg.shuffle, num_epochs=None if cfg.repeat else 1,
      feature_converter=converter_cls(pack=cfg.pack), shard_info=seqio.ShardInfo(
          shard_index, num_shards), use_cached=cfg.use_cached, seed=cfg.seed)
  # A finite pass (evaluation) keeps its short last batch; the evaluator pads it with zero-weight
  # rows. Training batches are always full.
  return ds.batch(cfg.batch_size // num_shards, drop_remainder=cfg.repeat)


def local_shards(cfg: DatasetConfig, process_index: int | None = None,
                 process_count: int | None = None) -> tuple[list[int], int]:
  """(the data shards this process reads, the number of shards)."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  num_shards = cfg.num_data_shards or process_count
  if num_shards % process_count:
    raise ValueError(f"num_data_shards={num_shards} must be a multiple of the "
                     f"{process_count} processes")
  per_process = num_shards // process_count
  return list(range(process_index * per_process, (process_index + 1) * per_process)), num_shards


def state_files(cfg: DatasetConfig, process_index: int | None = None,
                process_count: int | None = None) -> list[str]:
  """The checkpoint files that hold this process's iterator states (`HostIterator.snapshot`)."""
  shards, num_shards = local_shards(cfg, process_index, process_count)
  return [iterator_state.shard_file(s, num_shards) for s in shards]


_END = object()  # a peeked "no more data"


class HostIterator:
  """Iterates this process's part of the global batch; saves and restores its position.

  `snapshot()` returns the iterators' states (one file per shard) for the checkpoint; a
  HostIterator given `resume` (the checkpoint's data state) restores them in O(1). If they are
  missing or do not reproduce the saved position, it says why and replays the consumed batches
  (exact, but O(steps)); `restored` tells which happened.
  """

  def __init__(self, cfg: DatasetConfig, process_index: int | None = None,
               process_count: int | None = None, start_batch: int = 0,
               resume: Mapping | None = None):
    self.cfg = cfg
    self._shards, self._num_shards = local_shards(cfg, process_index, process_count)
    self._fingerprint = iterator_state.config_fingerprint(cfg)
    self._snapshot: tuple[int, dict[str, bytes]] | None = None
    self._unsaveable: str | None = None  # why the pipeline's state cannot be saved
    self.position = int(resume["batches_consumed"]) if resume else start_batch
    self.restored = False
    self._build()
    if resume and self.position:
      problem = self._restore(resume.get("files") or {})
      self.restored = problem is None
      if problem:
        logger.warning("data position %d: %s; replaying the %d consumed batches instead (exact, "
                       "but rebuilds and skips them)", self.position, problem, self.position)
        self._build()
    if self.position and not self.restored:
      self._replay(self.position)

  def _build(self) -> None:
    options = tf.data.Options()
    options.deterministic = True
    self._datasets = [
        _shard_dataset(self.cfg, s, self._num_shards).prefetch(2).with_options(options)
        for s in self._shards]
    self._iters = [d.as_numpy_iterator() for d in self._datasets]
    self._lookahead: list = [None] * len(self._shards)

  def _replay(self, batches: int) -> None:
    """Skips `batches` batches by producing them (the pipeline keeps one structure, so a state
    saved after a replay restores into a fresh pipeline)."""
    for i in range(len(self._shards)):
      for _ in range(batches):
        self._pull(i)

  def _pull(self, i: int) -> dict[str, np.ndarray]:
    """Shard i's next batch part (a peeked one first); a data error ends the pipeline."""
    if self._lookahead[i] is not None:
      part, self._lookahead[i] = self._lookahead[i], None
      if part is _END:
        raise StopIteration
      return part
    try:
      return next(self._iters[i])  # StopIteration ends a finite (eval) pass
    except tf.errors.OpError as e:  # bad data; OutOfRange arrives as StopIteration
      failure = pipeline_error_message(e)
    self.close()  # raised here, not in `except`: nothing keeps the iterators alive
    raise InputPipelineError(
        f"the input pipeline of {self.cfg.mixture_or_task_name!r} (split {self.cfg.split!r}) "
        f"failed at batch {self.position + 1}: {failure}")

  def _peek(self, i: int) -> dict[str, np.ndarray] | None:
    try:
      self._lookahead[i] = self._pull(i)
    except StopIteration:
      self._lookahead[i] = _END
    return None if self._lookahead[i] is _END else self._lookahead[i]

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [self._pull(i) for i in range(len(self._shards))]
    self.position += 1
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

  def state(self) -> dict[str, int]:
    return {"batches_consumed": self.position}

  def snapshot(self) -> dict[str, bytes]:
    """Each shard's iterator state at this position, and the digest of the batch that follows.

    {} when the pipeline has state tf.data cannot save (a Python generator, a stateful
    py_function): the checkpoint then keeps the position only, and a resume replays.
    """
    if self._snapshot and self._snapshot[0] == self.position:
      return self._snapshot[1]
    if self._unsaveable:
      return {}
    files = {}
    for i, shard in enumerate(self._shards):
      if self._lookahead[i] is not None:
        raise RuntimeError("HostIterator.snapshot: a batch was peeked past this position")
      try:
        state = iterator_state.capture(self._iters[i])
      except tf.errors.OpError as e:
        self._unsaveable = pipeline_error_message(e)
        logger.warning("the input pipeline of %r cannot save its state (%s); checkpoints keep the "
                       "data position only, and a resume replays the consumed batches",
                       self.cfg.mixture_or_task_name, self._unsaveable)
        return {}
      meta = {"batches_consumed": self.position, "config": self._fingerprint,
              "next_batch_sha256": iterator_state.batch_digest(self._peek(i))}
      files[iterator_state.shard_file(shard, self._num_shards)] = iterator_state.pack(state, meta)
    self._snapshot = (self.position, files)
    return files

  def _restore(self, files: Mapping[str, bytes]) -> str | None:
    """Restores every shard's saved state; returns why not, if it cannot."""
    mine = {}
    for i, shard in enumerate(self._shards):
      name = iterator_state.shard_file(shard, self._num_shards)
      if name not in files:
        return f"the checkpoint holds no iterator state {name}"
      try:
        meta, state = iterator_state.unpack(files[name])
      except ValueError as e:
        return f"{name}: {e}"
      if meta.get("batches_consumed") != self.position:
        return f"{name} is at batch {meta.get('batches_consumed')}, not {self.position}"
      if meta.get("config") != self._fingerprint:
        return "the dataset config differs from the one the iterator state was saved with"
      try:
        iterator_state.restore(self._iters[i], state)
      except (tf.errors.OpError, AssertionError, ValueError) as e:
        return f"tf.data cannot restore {name} into this pipeline ({str(e).splitlines()[0]})"
      if iterator_state.batch_digest(self._peek(i)) != meta.get("next_batch_sha256"):
        return (f"the restored {name} does not yield the batch saved as next (a pipeline stage "
                f"whose state tf.data cannot save, such as a Python generator?)")
      mine[name] = files[name]
    self._snapshot = (self.position, mine)
    logger.info("data: restored the iterator state at batch %d (no replay)", self.position)
    return None

  def close(self) -> None:
    """Drops the tf.data iterators now (their threads end while the interpreter is alive)."""
    self._iters, self._datasets = [], []
