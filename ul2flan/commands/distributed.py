"""Multi-host flags (`--coordinator_address`, ...) and `jax.distributed.initialize`."""

from __future__ import annotations

import argparse

import jax


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--coordinator_address", default=None,
                      help="multi-host: host:port of process 0 (calls jax.distributed.initialize)")
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--cpu_collectives", default=None, help="e.g. 'gloo' for multi-process CPU")


def initialize(args: argparse.Namespace) -> None:
  if not args.coordinator_address:
    return
  if args.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", args.cpu_collectives)
  jax.distributed.initialize(coordinator_address=args.coordinator_address,
                             num_processes=args.num_processes, process_id=args.process_id)
