"""A tf.data iterator's position as bytes, saved with each checkpoint and restored in O(1).

tf.data iterators are checkpointable (`tf.train.Checkpoint(iterator=...)`): every stage writes its
state (file offsets, shuffle buffers, RNG counters, the segment cutter's leftover text, packed rows
in progress, prefetched elements), so its size and the time to restore it do not grow with the
number of batches consumed, unlike rebuilding the pipeline and skipping them.

One data shard's state is one zip file, `shard-<i>-of-<n>.zip`, holding the TF checkpoint files
and `meta.json`: the batches consumed, a fingerprint of the dataset config, and the sha256 of the
batch that comes next. A restore checks the position and fingerprint, restores the iterator, and
compares the batch it yields with the recorded sha256, so a state that does not reproduce the
straight run (a pipeline with state tf.data cannot save, such as a Python generator) is refused
instead of silently training on other data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
import zipfile
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

META = "meta.json"
_PREFIX = "iterator"


def shard_file(shard: int, num_shards: int) -> str:
  return f"shard-{shard:05d}-of-{num_shards:05d}.zip"


def config_fingerprint(cfg: Any) -> str:
  """What must not change for a saved position to mean the same data (a dataclass config)."""
  text = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def batch_digest(batch: Mapping[str, np.ndarray] | None) -> str | None:
  if batch is None:
    return None
  h = hashlib.sha256()
  for key in sorted(batch):
    value = np.ascontiguousarray(batch[key])
    h.update(f"{key}:{value.dtype.str}:{value.shape};".encode())
    h.update(value.tobytes())
  return h.hexdigest()


def capture(iterator) -> dict[str, bytes]:
  """The TF checkpoint files of `iterator`'s state now, by file name."""
  with tempfile.TemporaryDirectory(prefix="ul2flan_data_state_") as tmp:
    tf.train.Checkpoint(iterator=iterator).write(os.path.join(tmp, _PREFIX))
    return {name: open(os.path.join(tmp, name), "rb").read() for name in sorted(os.listdir(tmp))}


def restore(iterator, state: Mapping[str, bytes]) -> None:
  """Puts a saved state into `iterator`, built from the same pipeline."""
  with tempfile.TemporaryDirectory(prefix="ul2flan_data_state_") as tmp:
    for name, content in state.items():
      with open(os.path.join(tmp, os.path.basename(name)), "wb") as f:  # flat: stays in tmp
        f.write(content)
    tf.train.Checkpoint(iterator=iterator).read(
        os.path.join(tmp, _PREFIX)).assert_existing_objects_matched()


def pack(state: Mapping[str, bytes], meta: Mapping[str, Any]) -> bytes:
  """One zip file: the state's files and `meta` as meta.json."""
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
    z.writestr(META, json.dumps(dict(meta), sort_keys=True))
    for name, content in sorted(state.items()):
      z.writestr(name, content)
  return out.getvalue()


def unpack(blob: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
  """(meta, state files) of a `pack`ed file; ValueError if it is not one."""
  try:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
      files = {name: z.read(name) for name in z.namelist()}
    meta = json.loads(files.pop(META))
  except (zipfile.BadZipFile, KeyError, ValueError) as e:
    raise ValueError(f"not a saved iterator state ({e})") from None
  return meta, files
