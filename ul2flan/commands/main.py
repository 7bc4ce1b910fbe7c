"""`ul2flan` command line: train, pipeline, infer, eval, inspect-task, import-hf, export-hf.

Gin handling follows t5x: `--gin_file=A.gin` (repeatable) and `--gin.NAME=VALUE` bindings, applied
in order. Configuration and input errors (ValueError; OSError for paths) print `error: ...` and
exit 2, without a traceback unless UL2FLAN_VERBOSE=1. A run stopped cleanly says why and how to
go on, with its own exit status: 75 after a SIGTERM / SIGINT (checkpoint committed: re-run to resume), 3 on divergence.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from typing import Sequence

from ul2flan import config as config_lib
from ul2flan import logs
from ul2flan.commands import eval as eval_command
from ul2flan.commands import export_hf
from ul2flan.commands import import_hf
from ul2flan.commands import infer
from ul2flan.commands import inspect_task
from ul2flan.commands import pipeline
from ul2flan.commands import train
from ul2flan.training import data
from ul2flan.training import guards

COMMANDS = {
    "train": train,
    "pipeline": pipeline,
    "infer": infer,
    "eval": eval_command,
    "inspect-task": inspect_task,
    "import-hf": import_hf,
    "export-hf": export_hf,
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="ul2flan", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for name, module in COMMANDS.items():
    summary = (module.__doc__ or "").strip().splitlines()[0]
    module.add_arguments(sub.add_parser(name, help=summary, description=module.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter))
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one command. As the process's command (`argv` None), a data error exits immediately."""
  is_process_command = argv is None
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  try:
    bindings, argv = config_lib.split_gin_args(argv)
  except ValueError as e:
    parser.error(str(e))  # exits 2 with the usage line, like any other argument error
  args = parser.parse_args(argv)
  args.gin = bindings
  logs.setup()
  try:
    return int(COMMANDS[args.command].run(args) or 0)
  except guards.RunStopped as e:
    print(f"{type(e).__name__.lower()}: {_without_gin_context(e)}", file=sys.stderr)
    return e.exit_code
  except (ValueError, OSError) as e:  # OSError: a path that is missing, a file, not writable
    if logs.verbose():
      raise
    print(f"error: {_without_gin_context(e)}", file=sys.stderr)
    if isinstance(e, data.InputPipelineError):
      _end_after_pipeline_error(is_process_command)
    return 2


def _without_gin_context(e: Exception) -> str:
  """The message, less the line gin appends ("In call to configurable ...")."""
  return "\n".join(line for line in str(e).splitlines() if "In call to configurable" not in line)


def _end_after_pipeline_error(is_process_command: bool) -> None:
  """Frees the failed pipeline's iterators now; as the process's command, exits 2 at once.

  The run's own cleanup (checkpoint commit, metric files) already ran while the error unwound.
  A tf.data thread that is inside Python when the interpreter finalizes never returns, and the
  iterator's destructor waits for it forever, so the process must not reach finalization with a
  live pipeline.
  """
  gc.collect()
  if is_process_command:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)  # pylint: disable=protected-access


if __name__ == "__main__":
  sys.exit(main())
