"""`ul2flan train`: train one stage (t5x-style, gin-configured).

  ul2flan train --gin_file=MODEL.gin --gin_file=RUN.gin --model_dir=DIR [--gin.NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import logging

from ul2flan import config as config_lib
from ul2flan import gin_checks
from ul2flan.commands import configurables  # noqa: F401  pylint: disable=unused-import
from ul2flan.commands import distributed
from ul2flan.training import trainer

logger = logging.getLogger(__name__)


def add_gin_arguments(parser: argparse.ArgumentParser) -> None:
  parser.epilog = (
      f"--gin.NAME=VALUE binds a macro or a configurable's parameter (a string value needs its "
      f"own quotes: --gin.MIXTURE_OR_TASK_NAME=\"'c4_ul2r'\"). A binding that nothing reads is "
      f"an error.\n\nMacros (gin_configs/runs/base.gin; the run files override them):\n"
      f"{config_lib.describe_macros()}\n\nConfigurables (REQUIRED: no default):\n"
      f"{config_lib.describe_configurables(exclude=gin_checks.PIPELINE_ONLY)}")
  parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  parser.add_argument("--model_dir", required=True)
  distributed.add_arguments(parser)


add_arguments = add_gin_arguments


def run(args: argparse.Namespace) -> int:
  distributed.initialize(args)
  config_lib.parse_gin(args.gin_file, args.gin, command="train")
  result = trainer.train(args.model_dir)
  logger.info("done: step %d; last metrics %s", result.step, result.last_metrics)
  return 0
