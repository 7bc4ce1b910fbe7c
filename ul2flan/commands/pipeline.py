"""`ul2flan pipeline`: base -> UL2R -> Flan (+ Flan from base) -> evaluation -> report.

  ul2flan pipeline --gin_file=gin_configs/demo.gin --model_dir=DIR [--gin.NAME=VALUE ...]
"""

from __future__ import annotations

import argparse

from ul2flan import config as config_lib
from ul2flan import gin_checks
from ul2flan.pipeline import runner
from ul2flan.commands import configurables  # noqa: F401  pylint: disable=unused-import
from ul2flan.commands import distributed
from ul2flan.commands import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
  train.add_gin_arguments(parser)
  names = gin_checks.PIPELINE_ONLY
  parser.epilog = (
      f"--gin.NAME=VALUE binds a parameter of {' or '.join(names)}: the only configurables "
      f"read at this level. Each stage parses its own gin files (run_pipeline.<stage>_gin_files)"
      f" and bindings (run_pipeline.model_bindings, run_pipeline.<stage>_bindings: strings "
      f"such as \"TRAIN_STEPS = 100\", checked like `ul2flan train`'s; see `ul2flan train "
      f"--help` for what they may bind). A binding that nothing reads is an error.\n\n"
      f"{config_lib.describe_configurables(only=names)}")


def run(args: argparse.Namespace) -> int:
  distributed.initialize(args)
  config_lib.parse_gin(args.gin_file, args.gin, command="pipeline")
  return runner.run_pipeline(args.model_dir)
