"""`ul2flan pipeline`: base -> UL2R -> Flan (and Flan directly from base) -> evaluation -> report.

Each stage is an ordinary `train()` run in its own directory under MODEL_DIR, configured by its
own gin files (parsed fresh for the stage) and handed the previous stage's checkpoint as
INITIAL_CHECKPOINT_PATH (params only). Re-running the same command resumes: a finished stage has a
DONE marker and is skipped, an interrupted one resumes from its latest checkpoint, and evaluation
results are cached per model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import gin
import jax

from ul2flan import config as config_lib
from ul2flan import paths
from ul2flan.demo import evaluate as demo_evaluate
from ul2flan.demo import report
from ul2flan.training import trainer

logger = logging.getLogger(__name__)

STAGES = ("base", "ul2r", "flan_ul2r", "flan_base")


@dataclasses.dataclass(frozen=True)
class StageSpec:
  name: str
  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]
  init_from: str | None  # directory (or, in a plan, stage name) of the checkpoint to start from


def run_stage(spec: StageSpec, model_dir: str, model_gin: Sequence[str],
              model_bindings: Sequence[str] = ()) -> str:
  """Trains one stage (or skips it when finished). Returns the stage directory."""
  stage_dir = paths.join(model_dir, spec.name)
  done = paths.resolve(stage_dir) / "DONE"
  if done.exists():
    logger.info("stage %s: already done, skipping", spec.name)
    return stage_dir
  logger.info("stage %s: training in %s%s", spec.name, stage_dir,
              f", starting from the params of {spec.init_from}" if spec.init_from else "")
  bindings = [f"INITIAL_CHECKPOINT_PATH = '{spec.init_from}'"] if spec.init_from else []
  config_lib.parse_gin(list(model_gin) + list(spec.gin_files),
                       bindings + list(model_bindings) + list(spec.bindings))
  trainer.train(stage_dir, stage_name=spec.name)
  if jax.process_index() == 0:
    done.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
  return stage_dir


@gin.configurable(denylist=["model_dir"])
def run_pipeline(model_dir: str, *,
                 model_gin: Sequence[str] = ("gin_configs/models/tiny.gin",),
                 model_bindings: Sequence[str] = (),
                 initial_checkpoint_path: str | None = None,
                 base_gin_files: Sequence[str] = ("gin_configs/runs/pretrain.gin",),
                 base_bindings: Sequence[str] = (),
                 ul2r_gin_files: Sequence[str] = ("gin_configs/runs/ul2r.gin",),
                 ul2r_bindings: Sequence[str] = (),
                 flan_gin_files: Sequence[str] = ("gin_configs/runs/flan.gin",),
                 flan_bindings: Sequence[str] = (),
                 compare: bool = True,
                 evaluate: bool = True,
                 last_stage: str | None = None,
                 seed: int = 0,
                 seeds: Sequence[int] = ()) -> int:
  """Runs every stage, evaluates the models and writes MODEL_DIR/report.md and report.json.

  `last_stage` ("base", "ul2r", "flan_ul2r" or "flan_base") stops after that stage, without
  evaluation: e.g. "ul2r" makes only the U-model. `seed` is every stage's SEED (initialization
  and data order). `seeds` (several) runs the whole pipeline once per seed, in MODEL_DIR/seed_<k>,
  and writes one report over them (each metric's mean, min and max).
  """
  if last_stage is not None and last_stage not in STAGES:
    raise ValueError(f"run_pipeline.last_stage must be one of {STAGES}, got {last_stage!r}")
  seeds = [int(k) for k in seeds] or [int(seed)]
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"run_pipeline.seeds must be distinct, got {seeds}")
  model_dir = str(paths.resolve(model_dir))
  t0 = time.time()
  plan = _Plan(tuple(model_gin), tuple(model_bindings), initial_checkpoint_path,
               StageSpec("base", tuple(base_gin_files), tuple(base_bindings), None),
               StageSpec("ul2r", tuple(ul2r_gin_files), tuple(ul2r_bindings), "base"),
               (tuple(flan_gin_files), tuple(flan_bindings)), compare, last_stage)
  eval_settings = evaluation_settings()  # read before stages clear the gin config
  multi = len(seeds) > 1
  results_by_seed = {}
  for k in seeds:
    run_dir = paths.join(model_dir, f"seed_{k}") if multi else model_dir
    dirs = _train_stages(plan, run_dir, k)
    if not evaluate or last_stage is not None:
      continue
    results = {name: demo_evaluate.evaluate_model(name, dirs[name], run_dir, eval_settings)
               for name in report.LABELS if name in dirs}
    results_by_seed[k] = results
    path = report.write_report(run_dir, dirs, results, {**eval_settings, "seed": k})
    logger.info("report (seed %d): %s", k, path)
  logger.info("pipeline finished after %.0fs", time.time() - t0)
  if not results_by_seed:
    return 0
  if multi:
    path = report.write_seeds_report(model_dir, results_by_seed, eval_settings)
  print(paths.resolve(path).read_text())
  return 0


@dataclasses.dataclass(frozen=True)
class _Plan:
  model_gin: tuple[str, ...]
  model_bindings: tuple[str, ...]
  initial_checkpoint_path: str | None
  base: StageSpec
  ul2r: StageSpec
  flan: tuple[tuple[str, ...], tuple[str, ...]]  # gin files, bindings
  compare: bool
  last_stage: str | None


def _train_stages(plan: _Plan, model_dir: str, seed: int) -> dict[str, str]:
  """Trains (or skips, when done) every stage of one seed; returns stage name -> its dir."""
  if jax.process_index() == 0:
    paths.resolve(model_dir).mkdir(parents=True, exist_ok=True)
  bindings = plan.model_bindings + (f"SEED = {seed}",)
  stage = lambda spec: run_stage(spec, model_dir, plan.model_gin, bindings)
  dirs = {}
  if plan.initial_checkpoint_path:
    dirs["base"] = plan.initial_checkpoint_path
    logger.info("stage base: using the given checkpoint %s", plan.initial_checkpoint_path)
  else:
    dirs["base"] = stage(plan.base)
  flan_gin, flan_bindings = plan.flan
  specs = [plan.ul2r, StageSpec("flan_ul2r", flan_gin,
                                flan_bindings + ("FEATURE_CONVERTER = 'prefix_lm'",), "ul2r")]
  if plan.compare:  # Flan straight from the causal base keeps it causal, as Flan-PaLM was.
    specs.append(StageSpec("flan_base", flan_gin,
                           flan_bindings + ("FEATURE_CONVERTER = 'prefix_lm_causal'",), "base"))
  for spec in specs:
    if plan.last_stage in dirs:
      break
    dirs[spec.name] = stage(dataclasses.replace(spec, init_from=dirs[spec.init_from]))
  return dirs


@gin.configurable
def evaluation_settings(heldout_split: str = "test", heldout_shots: int = 0,
                        max_new_tokens: int = 24, infilling_examples: int = 40,
                        batch_size: int = 32, benchmarks_data_dir: str | None = None,
                        benchmarks: Sequence[str] = (), benchmark_max_examples: int = 10) -> dict:
  """What to evaluate each model on; a dict so it survives the per-stage gin resets."""
  return dict(heldout_split=heldout_split, heldout_shots=heldout_shots,
              max_new_tokens=max_new_tokens, infilling_examples=infilling_examples,
              batch_size=batch_size, benchmarks_data_dir=benchmarks_data_dir,
              benchmarks=list(benchmarks), benchmark_max_examples=benchmark_max_examples)
