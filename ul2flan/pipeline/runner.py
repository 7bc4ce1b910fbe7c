"""`ul2flan pipeline`: base -> UL2R -> Flan (and Flan directly from base) -> evaluation -> report.

Everything a run needs is checked before the first step (`preflight`): every stage's gin, data,
splits, lengths and vocabulary, the evaluators' inputs, the output paths. Then each stage trains
(`stages`), is exported as a Hugging Face dir with `run_pipeline.export_hf`, and every model is
scored by the configured evaluators (`evaluators`) into MODEL_DIR/report.md and report.json
(`report`). Re-running the same command resumes: finished stages are skipped, an interrupted one
resumes from its last checkpoint, evaluations are cached per model and evaluator.

Bring your own model: `run_pipeline.initial_checkpoint_path` may be a Hugging Face model dir
(gin_configs/pipelines/hf.gin; docs/hf.md).
"""

from __future__ import annotations

import logging
import time

from ul2flan import paths
from ul2flan.hf import exporter
from ul2flan.pipeline import evaluators as evaluators_lib
from ul2flan.pipeline import preflight
from ul2flan.pipeline import report
from ul2flan.pipeline import stages
from ul2flan.pipeline.settings import (EvaluationSettings, HfExportSettings, HfImportSettings,
                                       PipelineConfig)

logger = logging.getLogger(__name__)


def run_pipeline(model_dir: str) -> int:
  """Runs the pipeline gin describes (`run_pipeline.*`, `evaluation_settings.*`, ...)."""
  # Read before the stages clear the gin config.
  config, settings = PipelineConfig(), EvaluationSettings()
  import_settings = HfImportSettings()
  export_settings = HfExportSettings() if config.export_hf else None
  model_dir = str(paths.resolve(model_dir))
  plan = stages.Plan.of(config)
  evaluate = config.evaluate and config.last_stage is None
  evaluators = evaluators_lib.get(settings.evaluators) if evaluate else []
  seeds = config.run_seeds
  multi = len(seeds) > 1
  started = time.time()
  results_by_seed = {}
  for i, seed in enumerate(seeds):
    run_dir = paths.join(model_dir, f"seed_{seed}") if multi else model_dir
    given, model_gin = stages.prepare_base(plan, run_dir, import_settings)
    dirs = stages.planned_dirs(plan, run_dir, given)
    if i == 0:  # the same checks hold for every seed
      preflight.check(plan, dirs, seed, model_gin, evaluators, settings)
    for spec in plan.stages:
      stages.run_stage(plan, spec, dirs, seed, model_gin)
    if export_settings is not None:
      for spec in plan.stages:  # each is skipped when its export is already there
        exporter.export_hf(dirs[spec.name], paths.join(dirs[spec.name], "hf"),
                           **export_settings.as_kwargs())
    if not evaluators:
      continue
    results = {name: evaluators_lib.evaluate_model(name, dirs[name], run_dir, settings,
                                                   evaluators)
               for name in report.LABELS if name in dirs}
    results_by_seed[seed] = results
    path = report.write_report(run_dir, {seed: results}, evaluators, dirs)
    logger.info("report (seed %d): %s", seed, path)
  logger.info("pipeline finished after %.0fs", time.time() - started)
  if not results_by_seed:
    return 0
  if multi:
    path = report.write_report(model_dir, results_by_seed, evaluators)
  print(paths.resolve(path).read_text())
  return 0
