"""`ul2flan` command line: train, pipeline, inspect-task, infer, eval.

Gin handling follows t5x: `--gin_file=A.gin` (repeatable) and `--gin.NAME=VALUE` bindings, applied
in order, with `--model_dir` exposed to gin as the MODEL_DIR macro.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--gin.NAME=VALUE` bindings from the other arguments."""
  bindings, rest = [], []
  it = iter(argv)
  for arg in it:
    if arg.startswith("--gin."):
      body = arg[len("--gin."):]
      if "=" not in body:
        try:
          body = f"{body}={next(it)}"
        except StopIteration:
          raise SystemExit(f"error: {arg} needs a value (--gin.NAME=VALUE)") from None
      name, value = body.split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
  return bindings, rest


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str],
              extra_bindings: Sequence[str] = ()) -> None:
  """Parses gin files and bindings, turning gin's errors into ones that say what to fix."""
  import gin  # pylint: disable=g-import-not-at-top
  # Make every configurable importable before parsing (classic gin needs registration first).
  from ul2flan import register_configurables  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  gin.add_config_file_search_path(REPO_ROOT)
  gin.add_config_file_search_path(os.getcwd())
  for path in gin_files:
    if not os.path.exists(path) and not os.path.exists(os.path.join(REPO_ROOT, path)):
      raise SystemExit(f"error: gin file {path!r} not found (looked in {os.getcwd()} and "
                       f"{REPO_ROOT})")
  resolved = [p if os.path.exists(p) else os.path.join(REPO_ROOT, p) for p in gin_files]
  try:
    gin.parse_config_files_and_bindings(resolved, list(extra_bindings) + list(bindings),
                                        finalize_config=False)
  except (ValueError, KeyError, SyntaxError, NameError) as e:
    msg = str(e).splitlines()[0] if str(e) else repr(e)
    raise SystemExit(f"error: bad gin configuration: {msg}\n  (check the spelling of "
                     f"--gin.NAME=VALUE bindings and gin files; list configurables with "
                     f"`ul2flan train --help`)") from None


def maybe_initialize_distributed(args) -> None:
  if not args.coordinator_address:
    return
  import jax  # pylint: disable=g-import-not-at-top
  if args.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", args.cpu_collectives)
  jax.distributed.initialize(coordinator_address=args.coordinator_address,
                             num_processes=args.num_processes, process_id=args.process_id)


def _add_gin_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  p.add_argument("--model_dir", required=True)
  p.add_argument("--coordinator_address", default=None,
                 help="multi-host: host:port of process 0 (calls jax.distributed.initialize)")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  p.add_argument("--cpu_collectives", default=None, help="e.g. 'gloo' for multi-process CPU")


def cmd_train(args, bindings) -> int:
  maybe_initialize_distributed(args)
  parse_gin(args.gin_file, bindings, [f"MODEL_DIR = '{os.path.abspath(args.model_dir)}'"])
  from ul2flan import trainer  # pylint: disable=g-import-not-at-top
  result = trainer.train(os.path.abspath(args.model_dir))
  print(f"done: step {result.step}; last metrics {result.last_metrics}")
  return 0


def cmd_pipeline(args, bindings) -> int:
  maybe_initialize_distributed(args)
  parse_gin(args.gin_file, bindings, [f"MODEL_DIR = '{os.path.abspath(args.model_dir)}'"])
  from ul2flan import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.run_pipeline(os.path.abspath(args.model_dir))


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  bindings, argv = split_gin_args(argv)
  parser = argparse.ArgumentParser(prog="ul2flan", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  p_train = sub.add_parser("train", help="train one stage (t5x-style, gin-configured)")
  _add_gin_args(p_train)
  p_pipe = sub.add_parser("pipeline", help="base -> UL2R -> Flan (+ comparison) -> eval + report")
  _add_gin_args(p_pipe)
  optional = {}
  for name, module in (("inspect-task", "ul2flan.inspect_task"),
                       ("eval", "ul2flan.evaluation.cli"), ("infer", "ul2flan.infer")):
    try:
      mod = __import__(module, fromlist=["run"])
    except ImportError:
      continue
    p = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0]
                       if mod.__doc__ else None)
    mod.add_arguments(p)
    optional[name] = mod
  args = parser.parse_args(argv)
  verbose = bool(os.environ.get("UL2FLAN_VERBOSE"))
  logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
  try:
    if args.command == "train":
      return cmd_train(args, bindings)
    if args.command == "pipeline":
      return cmd_pipeline(args, bindings)
    args.gin = bindings
    return int(optional[args.command].run(args) or 0)
  except (ValueError, FileNotFoundError) as e:
    # Configuration and input errors: say what is wrong without a stack trace
    # (UL2FLAN_VERBOSE=1 shows it).
    if verbose:
      raise
    message = "\n".join(line for line in str(e).splitlines() if "In call to configurable" not in line)
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
