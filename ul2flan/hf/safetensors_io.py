"""Safetensors files, tensor by tensor: a Hugging Face dir's weights in, sharded files out.

The format (https://huggingface.co/docs/safetensors) is an 8-byte little-endian header size, a
JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}} and the raw
little-endian bytes. It is read and written here with plain file reads and writes rather than
`safetensors.safe_open(framework="numpy")`, for two reasons: NumPy has no bfloat16 (that reader
refuses BF16 tensors; ml_dtypes provides the type), and reading into our own arrays instead of a
memory map keeps the resident memory of an import at the converted model plus one tensor
(a mapped shard stays resident while it is open). Tests check both directions against the
safetensors library.

Files may be local or in a bucket (`gs://...`, through `ul2flan.paths`): a tensor is read with a
seek and ranged reads of at most 64 MB (no local copy of the shard); a shard is written through
one epath file (gcsfs uploads as it is written, tf.io.gfile when it is closed).
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Callable, Iterable, Mapping, Sequence

import ml_dtypes
import numpy as np

from ul2flan import paths

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024 ** 3  # what transformers' save_pretrained uses
URL_READ_BYTES = 64 * 1024 ** 2  # one ranged read from a bucket; bounds the transient buffer

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
  """A weights file or index that cannot be read as the config describes."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  name: str
  path: str  # the file holding it
  dtype: np.dtype
  shape: tuple[int, ...]
  offset: int  # absolute byte offset in the file
  nbytes: int


def _open(path: str, mode: str):
  """A local file through `open` (unbuffered for reading, so reads land straight in the array);
  a URL through epath."""
  if paths.is_url(path):
    return paths.resolve(path).open(mode)
  return open(path, mode, buffering=0) if mode == "rb" else open(path, mode)


def read_header(path: str) -> dict[str, TensorInfo]:
  """The tensors of one safetensors file (no data is read)."""
  try:
    with _open(path, "rb") as f:
      size_bytes = f.read(8)
      if len(size_bytes) < 8:
        raise SafetensorsError(f"{path} is not a safetensors file (shorter than its header)")
      (size,) = struct.unpack("<Q", size_bytes)
      if size > 100 * 1024 ** 2:
        raise SafetensorsError(f"{path} is not a safetensors file (header of {size} bytes)")
      header = json.loads(_read_exactly(f, size, path))
    file_size = paths.file_size(path)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise SafetensorsError(f"{path} has an unreadable safetensors header ({e})") from None
  out = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if entry["dtype"] not in DTYPES:
      raise SafetensorsError(f"{path}: tensor {name} has dtype {entry['dtype']}, which is not "
                             f"supported (supported: {sorted(DTYPES)})")
    begin, end = entry["data_offsets"]
    info = TensorInfo(name, path, DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + size + begin,
                      end - begin)
    expected = int(np.prod(info.shape, dtype=np.int64)) * info.dtype.itemsize
    if info.nbytes != expected or info.offset + info.nbytes > file_size:
      raise SafetensorsError(f"{path}: tensor {name} is truncated or malformed (the file may be "
                             f"incomplete; download it again)")
    out[name] = info
  return out


def read_tensor(info: TensorInfo, rows: slice | None = None, out: np.ndarray | None = None
                ) -> np.ndarray:
  """A tensor (or a range of its first axis) read straight into `out` (or a new array)."""
  shape, offset = info.shape, info.offset
  if rows is not None and shape:
    start, stop, _ = rows.indices(shape[0])
    row_bytes = info.nbytes // max(shape[0], 1)
    shape, offset = (stop - start,) + shape[1:], offset + start * row_bytes
  if out is None:
    out = np.empty(shape, info.dtype)
  elif out.shape != shape or out.dtype != info.dtype or not out.flags.c_contiguous:
    raise ValueError(f"cannot read {info.name} {shape} {info.dtype} into {out.shape} {out.dtype}")
  view = memoryview(out.reshape(-1).view(np.uint8))
  in_bucket = paths.is_url(info.path)
  with _open(info.path, "rb") as f:
    f.seek(offset)
    done = 0
    while done < len(view):
      if in_bucket:  # ranged reads of bounded size; a local file is read straight into place
        chunk = f.read(min(len(view) - done, URL_READ_BYTES))
        view[done:done + len(chunk)] = chunk
        n = len(chunk)
      else:
        n = f.readinto(view[done:])
      if not n:
        raise SafetensorsError(f"{info.path}: unexpected end of file reading {info.name}")
      done += n
  return out


def _read_exactly(f, size: int, path: str) -> bytes:
  data = b""
  while len(data) < size:
    chunk = f.read(size - len(data))
    if not chunk:
      raise SafetensorsError(f"{path} is not a safetensors file (shorter than its header)")
    data += chunk
  return data


class WeightsReader:
  """The weights of a Hugging Face model dir: one model.safetensors, or shards listed in
  model.safetensors.index.json. Headers are read up front; tensors on demand."""

  def __init__(self, hf_dir: str):
    self.hf_dir = hf_dir
    index_path = paths.join(hf_dir, INDEX_FILE)
    single = paths.join(hf_dir, SINGLE_FILE)
    self.index: dict[str, str] = {}  # tensor -> shard, as the index lists it
    if paths.resolve(index_path).exists():
      files = self._files_from_index(index_path)
    elif paths.resolve(single).exists():
      files = [SINGLE_FILE]
    else:
      others = [p.name for p in paths.resolve(hf_dir).iterdir()
                if p.name.endswith((".bin", ".pt", ".pth", ".h5"))]
      hint = (f" (found {sorted(others)[:3]}: re-save the model with "
              f"`save_pretrained(dir, safe_serialization=True)` to get safetensors)"
              if others else "")
      raise FileNotFoundError(f"{hf_dir} has neither {SINGLE_FILE} nor {INDEX_FILE}{hint}")
    self.tensors: dict[str, TensorInfo] = {}
    for name in files:
      for tensor, info in read_header(paths.join(hf_dir, name)).items():
        if tensor in self.tensors:
          raise SafetensorsError(f"tensor {tensor} appears in both {self.tensors[tensor].path} "
                                 f"and {info.path}")
        self.tensors[tensor] = info

  def _files_from_index(self, index_path: str) -> list[str]:
    try:
      weight_map = json.loads(paths.resolve(index_path).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise SafetensorsError(f"{index_path} is not a safetensors index (needs a 'weight_map'): "
                             f"{e}") from None
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not paths.resolve(self.hf_dir).joinpath(f).exists()]
    if missing:
      raise FileNotFoundError(
          f"{index_path} lists {len(missing)} shard(s) that are not in {self.hf_dir}: "
          f"{missing[:5]}; copy the missing files (or the whole model dir) again")
    self.index = dict(weight_map)
    return files

  def where(self, name: str) -> str:
    """The file that holds (or, per the index, should hold) a tensor, for error messages."""
    if name in self.tensors:
      return self.tensors[name].path
    if name in self.index:
      return paths.join(self.hf_dir, self.index[name])
    return paths.join(self.hf_dir, INDEX_FILE if self.index else SINGLE_FILE)

  def __contains__(self, name: str) -> bool:
    return name in self.tensors

  def read(self, name: str, rows: slice | None = None, out: np.ndarray | None = None
           ) -> np.ndarray:
    return read_tensor(self.tensors[name], rows, out)


# ---- writing ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TensorToWrite:
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  produce: Callable[[], np.ndarray]  # called once, when the tensor is written

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def plan_shards(tensors: Sequence[TensorToWrite], max_shard_bytes: int
                ) -> list[list[TensorToWrite]]:
  """Greedy split in order: a shard closes before the tensor that would push it past the size."""
  shards: list[list[TensorToWrite]] = [[]]
  size = 0
  for t in tensors:
    if shards[-1] and size + t.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += t.nbytes
  return shards


def _write_file(path: str, tensors: Sequence[TensorToWrite], metadata: Mapping[str, str]) -> None:
  header: dict = {"__metadata__": dict(metadata)}
  offset = 0
  for t in tensors:
    header[t.name] = {"dtype": DTYPE_NAMES[np.dtype(t.dtype)], "shape": list(t.shape),
                      "data_offsets": [offset, offset + t.nbytes]}
    offset += t.nbytes
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the reference writer does
  with _open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for t in tensors:
      array = np.ascontiguousarray(t.produce(), dtype=t.dtype)
      if array.shape != tuple(t.shape):
        raise ValueError(f"tensor {t.name}: produced {array.shape}, planned {t.shape}")
      f.write(memoryview(array.reshape(-1).view(np.uint8)))


def write_weights(out_dir: str, tensors: Iterable[TensorToWrite],
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                  metadata: Mapping[str, str] | None = None) -> list[str]:
  """Writes model.safetensors, or shards + model.safetensors.index.json above the size.

  Returns the files written. `metadata` defaults to {"format": "pt"}, which transformers expects.
  """
  tensors = list(tensors)
  metadata = dict(metadata or {"format": "pt"})
  shards = plan_shards(tensors, max_shard_bytes)
  if len(shards) == 1:
    _write_file(paths.join(out_dir, SINGLE_FILE), shards[0], metadata)
    return [SINGLE_FILE]
  names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  for name, shard in zip(names, shards):
    _write_file(paths.join(out_dir, name), shard, metadata)
  index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)},
           "weight_map": {t.name: name for name, shard in zip(names, shards) for t in shard}}
  paths.resolve(out_dir).joinpath(INDEX_FILE).write_text(
      json.dumps(index, indent=2, sort_keys=True))
  return names + [INDEX_FILE]
