"""`ul2flan pipeline`: base -> UL2R -> Flan (and Flan directly from base) -> evaluation -> report.

Each stage is an ordinary `train()` run in its own directory under MODEL_DIR, configured by its
own gin files (parsed fresh for the stage) and handed the previous stage's checkpoint as
INITIAL_CHECKPOINT_PATH (params only). Re-running the same command resumes: a finished stage has a
DONE marker and is skipped, an interrupted one resumes from its latest checkpoint, and evaluation
results are cached per model.

Bring your own model: `initial_checkpoint_path` may be a Hugging Face model dir. It is imported
once into MODEL_DIR/base (`ul2flan.hf.importer`; a re-run reuses it), and its model.gin (the
architecture and the tokenizer vocabulary) comes first in every stage's gin files. With
`export_hf`, every trained stage is also written as a Hugging Face dir in MODEL_DIR/<stage>/hf
(gin_configs/pipelines/hf.gin; docs/hf.md).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Mapping, Sequence

import gin
import jax

from ul2flan import config as config_lib
from ul2flan import paths
from ul2flan.demo import evaluate as demo_evaluate
from ul2flan.demo import report
from ul2flan.hf import exporter, import_vocabulary, importer
from ul2flan.hf_vocab import token_layout
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
              model_bindings: Sequence[str] = (), optional_macros: Sequence[str] = ()) -> str:
  """Trains one stage (or skips it when finished). Returns the stage directory.

  `optional_macros`: macros bound in `model_bindings` that this stage may leave unread."""
  stage_dir = paths.join(model_dir, spec.name)
  done = paths.resolve(stage_dir) / "DONE"
  if done.exists():
    logger.info("stage %s: already done, skipping", spec.name)
    return stage_dir
  logger.info("stage %s: training in %s%s", spec.name, stage_dir,
              f", starting from the params of {spec.init_from}" if spec.init_from else "")
  bindings = [f"INITIAL_CHECKPOINT_PATH = '{spec.init_from}'"] if spec.init_from else []
  config_lib.parse_gin(list(model_gin) + list(spec.gin_files),
                       bindings + list(model_bindings) + list(spec.bindings), command="train",
                       optional_macros=optional_macros)
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
                 stage_macros: Mapping[str, Any] | None = None,
                 export_hf: bool = False,
                 seed: int = 0,
                 seeds: Sequence[int] = ()) -> int:
  """Runs every stage, evaluates the models and writes MODEL_DIR/report.md and report.json.

  `last_stage` ("base", "ul2r", "flan_ul2r" or "flan_base") stops after that stage, without
  evaluation: e.g. "ul2r" makes only the U-model. `stage_macros` ({"NAME": value}) are bound in
  every stage's gin, so stage gin files can use values given to the pipeline (gin_configs/
  pipelines/hf.gin passes its corpus and Flan data this way). `export_hf` writes every trained
  stage as a Hugging Face model dir, MODEL_DIR/<stage>/hf (`hf_export_settings`). `seed` is every
  stage's SEED (initialization and data order). `seeds` (several) runs the whole pipeline once
  per seed, in MODEL_DIR/seed_<k>, and writes one report over them (each metric's mean, min, max).
  """
  if last_stage is not None and last_stage not in STAGES:
    raise ValueError(f"run_pipeline.last_stage must be one of {STAGES}, got {last_stage!r}")
  seeds = [int(k) for k in seeds] or [int(seed)]
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"run_pipeline.seeds must be distinct, got {seeds}")
  model_dir = str(paths.resolve(model_dir))
  t0 = time.time()
  stage_macros = dict(stage_macros or {})
  plan = _Plan(tuple(model_gin),
               tuple(model_bindings) + tuple(f"{k} = {v!r}" for k, v in stage_macros.items()),
               tuple(stage_macros), initial_checkpoint_path,
               StageSpec("base", tuple(base_gin_files), tuple(base_bindings), None),
               StageSpec("ul2r", tuple(ul2r_gin_files), tuple(ul2r_bindings), "base"),
               (tuple(flan_gin_files), tuple(flan_bindings)), compare, last_stage)
  # Read before stages clear the gin config.
  eval_settings, import_settings = evaluation_settings(), hf_import_settings()
  export_settings = hf_export_settings() if export_hf else None
  multi = len(seeds) > 1
  results_by_seed = {}
  for k in seeds:
    run_dir = paths.join(model_dir, f"seed_{k}") if multi else model_dir
    dirs, trained = _train_stages(plan, run_dir, k, import_settings)
    if export_settings is not None:
      for name in trained:  # each is skipped when its export is already there
        exporter.export_hf(dirs[name], paths.join(dirs[name], "hf"), **export_settings)
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
  model_bindings: tuple[str, ...]  # the stage macros' bindings included
  stage_macros: tuple[str, ...]  # their names: a stage may leave them unread
  initial_checkpoint_path: str | None
  base: StageSpec
  ul2r: StageSpec
  flan: tuple[tuple[str, ...], tuple[str, ...]]  # gin files, bindings
  compare: bool
  last_stage: str | None


def _train_stages(plan: _Plan, model_dir: str, seed: int, import_settings: Mapping[str, Any]
                  ) -> tuple[dict[str, str], list[str]]:
  """Trains (or skips, when done) every stage of one seed: (stage name -> its dir, the stages
  trained here). A Hugging Face base is imported once into MODEL_DIR/base, its model.gin first."""
  if jax.process_index() == 0:
    paths.resolve(model_dir).mkdir(parents=True, exist_ok=True)
  model_gin, base = plan.model_gin, plan.initial_checkpoint_path
  dirs = {}
  if base and importer.is_hf_model_dir(base):
    dirs["base"] = importer.import_hf(base, paths.join(model_dir, "base"), **import_settings)
    model_gin = (paths.join(dirs["base"], importer.MODEL_GIN),) + model_gin
    logger.info("stage base: the Hugging Face model %s, imported into %s", base, dirs["base"])
  elif base:
    dirs["base"] = base
    logger.info("stage base: using the given checkpoint %s", base)
  bindings = plan.model_bindings + (f"SEED = {seed}",)
  stage = lambda spec: run_stage(spec, model_dir, model_gin, bindings,
                                 optional_macros=plan.stage_macros)
  trained = [] if base else ["base"]
  if not base:
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
    trained.append(spec.name)
  return dirs, trained
@gin.configurable
def hf_import_settings(dtype: str = "float32", scan_layers: bool = False,
                       sentinels: str = import_vocabulary.AUTO, num_sentinels: int = 100,
                       reserved_pattern: str = token_layout.LLAMA3_RESERVED_PATTERN) -> dict:
  """How a Hugging Face base model is imported (`importer.import_hf`'s settings)."""
  return dict(dtype=dtype, scan_layers=scan_layers, sentinels=sentinels,
              num_sentinels=num_sentinels, reserved_pattern=reserved_pattern)


@gin.configurable
def hf_export_settings(dtype: str = "float32", max_shard_gb: float = 5.0) -> dict:
  """How trained stages are exported (`exporter.export_hf`'s settings)."""
  return dict(dtype=dtype, max_shard_bytes=int(max_shard_gb * 1024 ** 3))


@gin.configurable
def evaluation_settings(heldout_split: str = "test", heldout_shots: int = 0,
                        max_new_tokens: int = 24, infilling_examples: int = 40,
                        batch_size: int = 32, benchmarks_data_dir: str | None = None,
                        benchmarks: Sequence[str] = (), benchmark_max_examples: int = 10,
                        heldout_max_examples: int | None = None,
                        knowledge_max_people: int | None = None) -> dict:
  """What to evaluate each model on; a dict so it survives the per-stage gin resets.
  `heldout_max_examples` keeps N evenly spaced held-out examples and `knowledge_max_people` the
  knowledge cloze of the first N people (None: all; smaller for quick runs)."""
  return dict(heldout_split=heldout_split, heldout_shots=heldout_shots,
              heldout_max_examples=heldout_max_examples,
              knowledge_max_people=knowledge_max_people,
              max_new_tokens=max_new_tokens, infilling_examples=infilling_examples,
              batch_size=batch_size, benchmarks_data_dir=benchmarks_data_dir,
              benchmarks=list(benchmarks), benchmark_max_examples=benchmark_max_examples)
