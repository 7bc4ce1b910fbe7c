"""`ul2flan pipeline`: base -> UL2R -> Flan (+ Flan from base) -> evaluation -> report.

  ul2flan pipeline --gin_file=gin_configs/demo.gin --model_dir=DIR [--gin.NAME=VALUE ...]
"""

from __future__ import annotations

import argparse

from ul2flan import config as config_lib
from ul2flan import pipeline
from ul2flan.commands import configurables  # noqa: F401  pylint: disable=unused-import
from ul2flan.commands import distributed
from ul2flan.commands import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
  train.add_gin_arguments(parser)


def run(args: argparse.Namespace) -> int:
  distributed.initialize(args)
  config_lib.parse_gin(args.gin_file, args.gin, command="pipeline")
  return pipeline.run_pipeline(args.model_dir)
