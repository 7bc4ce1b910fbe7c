"""Paths of model dirs, checkpoints, metrics, configs and reports: local, or any URL epath reaches.

One abstraction everywhere: `etils.epath.Path`. A local path is made absolute (orbax wants
absolute paths, and a run's files must not depend on the working directory); a URL such as
`gs://bucket/run` is kept as it is. Never `os.path.abspath` a URL: it turns `gs://b/run` into a
local folder `./gs:/b/run`.

Backends: epath reaches `gs://` through tf.io.gfile when TensorFlow is installed, or through fsspec
(gcsfs) with `EPATH_USE_TF=false`; orbax writes array data through TensorStore's own drivers.
"""

from __future__ import annotations

import os

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
