"""Writing a model directory all at once: into `<dir>.partial`, renamed when complete.

Each directory written here carries `ul2flan.json`, which says what it was made from (a
fingerprint of the source). Asking again for the same output reuses it; an output dir that holds
anything else is refused, so a conversion never mixes two models or overwrites a user's files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from typing import Any, Iterator, Mapping

import jax
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

MARKER = "ul2flan.json"


class OutputDirError(ValueError):
  """The output dir holds something other than what was asked for."""


def read_marker(out_dir: str) -> dict[str, Any] | None:
  path = os.path.join(out_dir, MARKER)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def already_written(out_dir: str, fingerprint: Mapping[str, Any]) -> bool:
  """True when `out_dir` holds exactly this output; False when it is absent or empty; raises
  `OutputDirError` when it holds anything else."""
  if not os.path.isdir(out_dir):
    if os.path.exists(out_dir):
      raise OutputDirError(f"{out_dir} exists and is not a directory; choose another output path")
    return False
  if not os.listdir(out_dir):
    return False
  marker = read_marker(out_dir)
  if marker is None:
    raise OutputDirError(f"{out_dir} already exists and holds other files ("
                         f"{', '.join(sorted(os.listdir(out_dir))[:5])}); choose a new or empty "
                         f"directory")
  if marker.get("fingerprint") != dict(fingerprint):
    raise OutputDirError(
        f"{out_dir} already holds a different model (made from {marker.get('source')!r}, "
        f"asked for {fingerprint.get('source')!r} with other settings); choose another directory "
        f"or delete it")
  logger.info("%s already holds this model; reusing it", out_dir)
  return True


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def staging(out_dir: str, marker: Mapping[str, Any]) -> Iterator[str]:
  """Yields `<out_dir>.partial` to write into; on success writes the marker and renames it to
  `out_dir`; on failure removes it. Every process enters; process 0 does the file operations."""
  tmp = out_dir.rstrip("/") + ".partial"
  primary = jax.process_index() == 0
  if primary:
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
    os.makedirs(tmp)
  _sync("ul2flan_staging_start")
  try:
    yield tmp
    _sync("ul2flan_staging_written")
    if primary:
      with open(os.path.join(tmp, MARKER), "w") as f:
        json.dump(dict(marker), f, indent=1, sort_keys=True)
      if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty: already_written() checked
      os.rename(tmp, out_dir)
  except BaseException:
    if primary:
      shutil.rmtree(tmp, ignore_errors=True)
    raise
  _sync("ul2flan_staging_done")
