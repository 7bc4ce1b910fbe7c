"""An orbax checkpoint item of files that each process writes itself (its data iterators' state).

Orbax's handlers save arrays (sharded across processes) and JSON (written by the primary process
only); a per-host input pipeline's position is neither. `ProcessFilesHandler` stores, for every
process, the named byte strings it was given, in the item directory of the step being saved, so
they are committed atomically with the train state and covered by the step's `checksums.json`.
The caller takes the snapshot when it calls `save` (later steps do not change it); the files are
written in the background with the rest of the step. Names must be unique across processes.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from etils import epath
import orbax.checkpoint as ocp
from orbax.checkpoint import future as ocp_future


class ProcessFilesHandler(ocp.AsyncCheckpointHandler):
  """Saves this process's {name: bytes}; restores the named files that exist."""

  @staticmethod
  def _write(directory: epath.Path, files: Mapping[str, bytes]) -> None:
    for name, content in files.items():
      (directory / name).write_bytes(content)

  async def _write_when_committing(self, directory: epath.Path,
                                   files: Mapping[str, bytes]) -> None:
    self._write(directory, files)  # runs in the commit's own background thread, like orbax's JSON

  async def async_save(self, directory: epath.Path, args: ProcessFilesSave):
    files = dict(args.files)  # a copy: the caller may reuse its dict
    return [ocp_future.CommitFutureAwaitingContractedSignals(
        self._write_when_committing(directory, files), name="process_files_save")]

  def save(self, directory: epath.Path, args: ProcessFilesSave) -> None:
    self._write(directory, args.files)

  def restore(self, directory: epath.Path, args: ProcessFilesRestore) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in args.names
            if (directory / name).exists()}


@ocp.args.register_with_handler(ProcessFilesHandler, for_save=True)
@dataclasses.dataclass
class ProcessFilesSave(ocp.args.CheckpointArgs):
  files: Mapping[str, bytes]


@ocp.args.register_with_handler(ProcessFilesHandler, for_restore=True)
@dataclasses.dataclass
class ProcessFilesRestore(ocp.args.CheckpointArgs):
  names: Sequence[str]
