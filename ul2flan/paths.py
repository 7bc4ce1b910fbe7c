"""Paths of model dirs, checkpoints, metrics, configs and reports: local, or any URL epath reaches.

One abstraction everywhere: `etils.epath.Path`. A local path is made absolute (orbax wants
absolute paths, and a run's files must not depend on the working directory); a URL such as
`gs://bucket/run` is kept as it is. Never `os.path.abspath` a URL: it turns `gs://b/run` into a
local folder `./gs:/b/run`.

Backends: epath reaches `gs://` through tf.io.gfile when TensorFlow is installed, or through fsspec
(gcsfs) with `EPATH_USE_TF=false`; orbax writes array data through TensorStore's own drivers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Sequence

from etils import epath

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """`path` as an epath.Path: absolute if local, untouched if a URL."""
  text = os.fspath(path)
  return epath.Path(text if is_url(text) else os.path.abspath(text))


def join(path: PathLike, *parts: str) -> str:
  """`path/part/...` as a string, for APIs that take strings (a URL stays a URL)."""
  return os.fspath(resolve(path).joinpath(*parts))


def make_writable_dir(path: PathLike, what: str) -> epath.Path:
  """Creates `path` (and its parents) if needed; ValueError saying what is wrong otherwise."""
  target = resolve(path)
  if target.exists() and not target.is_dir():
    raise ValueError(f"{what} {target} is a file, not a directory; pass a directory")
  try:
    target.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create {what} {target}: {e.strerror or e}") from None
  if not is_url(target) and not os.access(target, os.W_OK | os.X_OK):
    raise ValueError(f"{what} {target} is not writable by this user; pass a directory you can "
                     f"write to, or fix its permissions")
  return target


def _scheme(path: PathLike) -> str:
  text = os.fspath(path)
  return text.split("://", 1)[0] if "://" in text else ""


def _without_scheme(text: str) -> str:
  return text.split("://", 1)[1] if "://" in text else text


def list_files(root: PathLike) -> list[str]:
  """Every file under `root` (recursively), as sorted `/`-separated names relative to it; [] when
  there is none."""
  top = resolve(root)
  if not top.is_dir():
    return []
  # fsspec's walk names directories without the `gs://` its top had: compare scheme-less.
  base = _without_scheme(os.fspath(top)).rstrip("/")
  names = []
  for where, _, files in top.walk():
    rel = _without_scheme(os.fspath(where)).rstrip("/")[len(base):].lstrip("/")
    names += [f"{rel}/{name}" if rel else name for name in files]
  return sorted(names)


def file_size(path: PathLike) -> int:
  return os.path.getsize(path) if not is_url(path) else int(resolve(path).stat().length)


def copy_file(src: PathLike, dst: PathLike) -> None:
  """Copies one file from anywhere to anywhere (a local destination's folders are created).

  Within one store the backend copies (tf.io.gfile copies GCS objects server-side); between
  stores the bytes are streamed through this process."""
  source, target = resolve(src), resolve(dst)
  if not is_url(target):
    target.parent.mkdir(parents=True, exist_ok=True)
  if not is_url(source) and not is_url(target):
    shutil.copy2(source, target)
  elif _scheme(source) == _scheme(target):
    source.copy(target, overwrite=True)
  else:
    with source.open("rb") as reader, target.open("wb") as writer:
      shutil.copyfileobj(reader, writer, 16 * 1024 ** 2)


@contextlib.contextmanager
def local_copy(src_dir: PathLike, names: Sequence[str]) -> Iterator[str]:
  """`src_dir` as a local directory, for libraries that read only local files: itself when it is
  local; otherwise a temporary directory holding those of `names` that exist in it (removed on
  exit)."""
  if not is_url(src_dir):
    yield os.fspath(resolve(src_dir))
    return
  with tempfile.TemporaryDirectory(prefix="ul2flan_copy_") as scratch:
    for name in names:
      if resolve(src_dir).joinpath(name).exists():
        copy_file(join(src_dir, name), os.path.join(scratch, name))
    yield scratch
