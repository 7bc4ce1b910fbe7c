"""Checkpoint integrity: a `checksums.json` of every file of a step, committed with the step.

Orbax has no content checksums for array data (TensorStore's zarr3 chunks carry none), so 4 KB of
flipped bytes restore silently. Here the step's temporary directory is hashed (sha256 and size of
each file) just before orbax commits it, by a `TemporaryPath` subclass whose `finalize` writes
`checksums.json` first: a committed step always has its checksums, and a kill between the two is
impossible. `verify()` re-hashes and names every file that is missing, truncated or different.

Orbax's own bookkeeping files, rewritten during the commit itself, are not hashed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json

from etils import epath
from orbax.checkpoint import path as ocp_path

CHECKSUMS_FILE = "checksums.json"
# Written by orbax during or after the commit, so not stable when the checksums are taken.
NOT_HASHED = frozenset({CHECKSUMS_FILE, "_CHECKPOINT_METADATA", "commit_success.txt"})
_CHUNK = 1 << 22


def _files(root: epath.Path) -> dict[str, epath.Path]:
  """Every file under `root`, by its path relative to `root`."""
  out, stack = {}, [(root, "")]
  while stack:
    directory, prefix = stack.pop()
    for child in directory.iterdir():
      rel = f"{prefix}{child.name}"
      if child.is_dir():
        stack.append((child, rel + "/"))
      elif child.name not in NOT_HASHED:
        out[rel] = child
  return out


def _digest(path: epath.Path) -> tuple[int, str]:
  h, size = hashlib.sha256(), 0
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
      size += len(chunk)
  return size, h.hexdigest()


def _digests(files: dict[str, epath.Path]) -> dict[str, tuple[int, str]]:
  with concurrent.futures.ThreadPoolExecutor(8) as pool:  # remote stores: overlap the latency
    return dict(zip(files, pool.map(_digest, files.values())))


def write(step_dir: epath.Path) -> None:
  digests = _digests(_files(step_dir))
  table = {rel: {"size": size, "sha256": h} for rel, (size, h) in sorted(digests.items())}
  (step_dir / CHECKSUMS_FILE).write_text(json.dumps({"algorithm": "sha256", "files": table},
                                                    indent=0))


def has_checksums(step_dir: epath.Path) -> bool:
  return (step_dir / CHECKSUMS_FILE).exists()


def verify(step_dir: epath.Path) -> list[str]:
  """What is wrong with the step's files ([] if they match, or if it has no checksums)."""
  if not step_dir.is_dir():
    return [f"{step_dir}: the step directory is missing"]
  if not has_checksums(step_dir):
    return []
  try:
    expected = json.loads((step_dir / CHECKSUMS_FILE).read_text())["files"]
  except (ValueError, KeyError, TypeError) as e:
    return [f"{CHECKSUMS_FILE}: unreadable ({e})"]
  present = _files(step_dir)
  problems = [f"{rel}: missing" for rel in sorted(expected) if rel not in present]
  problems += [f"{rel}: not part of the saved step" for rel in sorted(set(present) - set(expected))]
  digests = _digests({rel: present[rel] for rel in expected if rel in present})
  for rel, (size, h) in sorted(digests.items()):
    want = expected[rel]
    if size != want["size"]:
      what = "truncated" if size < want["size"] else "longer than saved"
      problems.append(f"{rel}: {what} ({size} bytes, saved {want['size']})")
    elif h != want["sha256"]:
      problems.append(f"{rel}: contents differ from the saved sha256 (corrupt)")
  return problems


class _ChecksumBeforeCommit:
  """Writes checksums.json into a step's temporary dir, then commits as the base class does."""

  async def finalize(self, *args, **kwargs):
    if self.get_final().name.isdigit():  # the step dir, not one of its items
      await asyncio.to_thread(write, self.get())
    await super().finalize(*args, **kwargs)


class ChecksummedRenamePath(_ChecksumBeforeCommit, ocp_path.atomicity.AtomicRenameTemporaryPath):
  pass


class ChecksummedCommitFilePath(_ChecksumBeforeCommit, ocp_path.atomicity.CommitFileTemporaryPath):
  pass


def checksummed_path_class(directory: epath.Path):
  """The temporary-path class orbax would pick for `directory`, writing checksums first."""
  default = ocp_path.atomicity_defaults.get_default_temporary_path_class(directory)
  if issubclass(default, ocp_path.atomicity.CommitFileTemporaryPath):
    return ChecksummedCommitFilePath
  return ChecksummedRenamePath
