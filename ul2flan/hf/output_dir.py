"""Writing a model directory all at once, locally or in a bucket (`gs://`).

Each directory written here carries `ul2flan.json`, which says what it was made from (a
fingerprint of the source). Asking again for the same output reuses it; an output dir that holds
anything else is refused, so a conversion never mixes two models or overwrites a user's files.

Everything is first written into `<dir>.partial`, whose `ul2flan.json` is written last. Then:

* Locally, `<dir>.partial` is renamed to `<dir>`: atomic, so `<dir>` is absent or complete.
* In a bucket there is no rename (renaming a prefix copies every object, one by one), so the
  staged objects are copied into `<dir>` (`paths.copy_file`: server-side with tf.io.gfile) with
  `ul2flan.json` copied last, and `<dir>.partial` is deleted after it. GCS object writes are
  atomic and reads after them consistent, so `ul2flan.json` in `<dir>` means every other file is
  there. A `<dir>` that has files but no `ul2flan.json` is either someone else's (refused) or a
  copy that was interrupted: then `<dir>.partial` still holds the complete output, staged
  `ul2flan.json` included, and the next run with the same fingerprint finishes the copy instead
  of converting again. Tools that do not look at `ul2flan.json` (a training run pointed at the
  dir) can see a partly copied dir only while that copy runs or after it crashed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from typing import Any, Iterator, Mapping

import jax
from etils import epath
from jax.experimental import multihost_utils

from ul2flan import paths

logger = logging.getLogger(__name__)

MARKER = "ul2flan.json"
STAGING_SUFFIX = ".partial"


class OutputDirError(ValueError):
  """The output dir holds something other than what was asked for."""


def staging_dir(out_dir: paths.PathLike) -> epath.Path:
  out = paths.resolve(out_dir)
  return out.parent / (out.name + STAGING_SUFFIX)


def read_marker(out_dir: paths.PathLike) -> dict[str, Any] | None:
  path = paths.resolve(out_dir) / MARKER
  if not path.exists():
    return None
  return json.loads(path.read_text())


def _made_from(marker: Mapping[str, Any] | None, fingerprint: Mapping[str, Any]) -> bool:
  return marker is not None and marker.get("fingerprint") == dict(fingerprint)


def already_written(out_dir: str, fingerprint: Mapping[str, Any]) -> bool:
  """True when `out_dir` holds exactly this output; False when it is absent or empty; raises
  `OutputDirError` when it holds anything else. In a bucket, first finishes an interrupted copy
  of this very output (see the module docstring)."""
  out = paths.resolve(out_dir)
  if paths.is_url(out):
    _finish_interrupted_publish(out, fingerprint)
  if not out.is_dir():
    if out.exists():
      raise OutputDirError(f"{out_dir} exists and is not a directory; choose another output path")
    return False
  contents = sorted(p.name for p in out.iterdir())
  if not contents:
    return False
  marker = read_marker(out)
  if marker is None:
    raise OutputDirError(f"{out_dir} already exists and holds other files ("
                         f"{', '.join(contents[:5])}); choose a new or empty directory")
  if not _made_from(marker, fingerprint):
    raise OutputDirError(
        f"{out_dir} already holds a different model (made from {marker.get('source')!r}, "
        f"asked for {fingerprint.get('source')!r} with other settings); choose another directory "
        f"or delete it")
  logger.info("%s already holds this model; reusing it", out_dir)
  return True


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _publish(staged: epath.Path, out: epath.Path) -> None:
  """Copies a complete staging dir into `out` in a bucket, the marker last, then deletes it.
  Idempotent: a run interrupted anywhere in here is finished by calling it again."""
  for name in paths.list_files(staged):
    if name != MARKER:
      paths.copy_file(staged / name, out / name)
  paths.copy_file(staged / MARKER, out / MARKER)  # from here on `out` counts as written
  staged.rmtree(missing_ok=True)


def _finish_interrupted_publish(out: epath.Path, fingerprint: Mapping[str, Any]) -> None:
  staged = staging_dir(out)
  out_marker = read_marker(out)
  unfinished = out_marker is None and _made_from(read_marker(staged), fingerprint)
  leftover = _made_from(out_marker, fingerprint) and staged.exists()
  _sync("ul2flan_publish_checked")  # every process has looked before process 0 changes anything
  if jax.process_index() == 0:
    if unfinished:
      logger.warning("%s: finishing the copy from %s that an earlier run began", out, staged)
      _publish(staged, out)
    elif leftover:  # the earlier run stopped while deleting it
      staged.rmtree(missing_ok=True)
  _sync("ul2flan_publish_finished")


def _remove_quietly(path: epath.Path) -> None:
  if not paths.is_url(path):
    shutil.rmtree(path, ignore_errors=True)
    return
  try:
    path.rmtree(missing_ok=True)
  except OSError as e:
    logger.warning("could not remove %s (%s); the next run removes it", path, e)


@contextlib.contextmanager
def staging(out_dir: str, marker: Mapping[str, Any]) -> Iterator[str]:
  """Yields `<out_dir>.partial` to write into; on success writes the marker and publishes it as
  `out_dir` (a rename locally, a copy in a bucket); on failure removes it. Every process
  enters; process 0 does the file operations."""
  out = paths.resolve(out_dir)
  tmp = staging_dir(out)
  in_bucket = paths.is_url(out)
  primary = jax.process_index() == 0
  if primary:
    _remove_quietly(tmp)  # left by an interrupted run
    if not in_bucket:  # an object store has no directories to make
      tmp.mkdir(parents=True)
  _sync("ul2flan_staging_start")
  publishing = False
  try:
    yield os.fspath(tmp)
    _sync("ul2flan_staging_written")
    if primary:
      (tmp / MARKER).write_text(json.dumps(dict(marker), indent=1, sort_keys=True))
      publishing = True
      if in_bucket:
        _publish(tmp, out)
      else:
        if out.is_dir():
          os.rmdir(out)  # empty: already_written() checked
        os.rename(tmp, out)
  except BaseException:
    # A complete staging dir whose copy into the bucket failed stays: the next run finishes it.
    if primary and not (publishing and in_bucket):
      _remove_quietly(tmp)
    raise
  _sync("ul2flan_staging_done")
