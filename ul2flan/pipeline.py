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
                       bindings + list(model_bindings) + list(spec.bindings), command="train")
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
                 last_stage: str | None = None) -> int:
  """Runs every stage, evaluates the models and writes MODEL_DIR/report.md.

  `last_stage` ("base", "ul2r", "flan_ul2r" or "flan_base") stops after that stage, without
  evaluation: e.g. "ul2r" makes only the U-model.
  """
  if last_stage is not None and last_stage not in STAGES:
    raise ValueError(f"run_pipeline.last_stage must be one of {STAGES}, got {last_stage!r}")
  model_dir = str(paths.resolve(model_dir))
  if jax.process_index() == 0:
    paths.resolve(model_dir).mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  model_gin, base_gin_files, ul2r_gin_files, flan_gin_files = (
      tuple(model_gin), tuple(base_gin_files), tuple(ul2r_gin_files), tuple(flan_gin_files))
  base_bindings, ul2r_bindings, flan_bindings = (
      tuple(base_bindings), tuple(ul2r_bindings), tuple(flan_bindings))
  eval_settings = evaluation_settings()  # read before stages clear the gin config
  stage = lambda spec: run_stage(spec, model_dir, model_gin, tuple(model_bindings))

  dirs = {}
  if initial_checkpoint_path:
    dirs["base"] = initial_checkpoint_path
    logger.info("stage base: using the given checkpoint %s", initial_checkpoint_path)
  else:
    dirs["base"] = stage(StageSpec("base", base_gin_files, base_bindings, None))
  plan = [
      StageSpec("ul2r", ul2r_gin_files, ul2r_bindings, "base"),
      StageSpec("flan_ul2r", flan_gin_files,
                flan_bindings + ("FEATURE_CONVERTER = 'prefix_lm'",), "ul2r"),
  ]
  if compare:  # Flan straight from the causal base keeps it causal, as Flan-PaLM was.
    plan.append(StageSpec("flan_base", flan_gin_files,
                          flan_bindings + ("FEATURE_CONVERTER = 'prefix_lm_causal'",), "base"))
  for spec in plan:
    if last_stage in dirs:
      break
    dirs[spec.name] = stage(dataclasses.replace(spec, init_from=dirs[spec.init_from]))
  logger.info("training stages finished after %.0fs", time.time() - t0)
  if not evaluate or last_stage is not None:
    return 0
  results = {name: demo_evaluate.evaluate_model(name, dirs[name], model_dir, eval_settings)
             for name in report.LABELS if name in dirs}
  path = report.write_report(model_dir, dirs, results, eval_settings)
  logger.info("report: %s (total %.0fs)", path, time.time() - t0)
  print(paths.resolve(path).read_text())
  return 0


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
