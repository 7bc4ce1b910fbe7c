"""Everything a pipeline run needs, checked before its first training step.

For every stage still to train: its gin files and bindings parse and are all read, its settings
are valid, every dataset it reads (training, validation, held-out text) has its split and finds
its files, and the vocabulary builds (`trainer.train(..., check_only=True)`). Then each evaluator
checks its own inputs. A problem stops the run with the stage, the setting and the fix, instead
of after hours of training (a corpus without a validation split used to fail only when the UL2R
stage's first evaluation came).
"""

from __future__ import annotations

import logging
from typing import Sequence

from ul2flan import config as config_lib
from ul2flan.pipeline import evaluators as evaluators_lib
from ul2flan.pipeline import stages as stages_lib
from ul2flan.pipeline.settings import EvaluationSettings
from ul2flan.training import trainer


class PreflightError(ValueError):
  """A pipeline setting or input that would fail later; says which stage and what to fix."""


logger = logging.getLogger(__name__)


def check(plan: stages_lib.Plan, dirs: dict[str, str], seed: int, model_gin: Sequence[str],
          evaluators: Sequence[evaluators_lib.Evaluator], settings: EvaluationSettings) -> None:
  """Raises PreflightError naming the first stage (or evaluator) that could not run."""
  checked = []
  for spec in plan.stages:
    if stages_lib.is_done(dirs[spec.name]):
      continue
    gin_files, bindings = plan.stage_gin(spec, dirs, seed, model_gin)
    try:
      config_lib.parse_gin(gin_files, bindings, command="train",
                           optional_macros=plan.stage_macros)
      trainer.train(dirs[spec.name], stage_name=spec.name, check_only=True)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
      raise PreflightError(f"stage {spec.name} would fail (nothing was trained): {e}") from None
    finally:
      config_lib.parse_gin([])
    checked.append(spec.name)
  for evaluator in evaluators:
    try:
      evaluator.check(settings)
    except (ValueError, FileNotFoundError) as e:
      raise PreflightError(f"evaluator {evaluator.name!r} would fail: {e}") from None
  logger.info("preflight: %s and the evaluators (%s) are ready",
              ", ".join(f"stage {n}" for n in checked) or "no stage left to train",
              ", ".join(e.name for e in evaluators) or "none")
