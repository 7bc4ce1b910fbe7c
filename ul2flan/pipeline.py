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
from ul2flan.hf import exporter, import_vocabulary, importer, token_layout
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
                 export_hf: bool = False) -> int:
  """Runs every stage, evaluates the models and writes MODEL_DIR/report.md.

  `last_stage` ("base", "ul2r", "flan_ul2r" or "flan_base") stops after that stage, without
  evaluation: e.g. "ul2r" makes only the U-model. `stage_macros` ({"NAME": value}) are bound in
  every stage's gin, so stage gin files can use values given to the pipeline (gin_configs/
  pipelines/hf.gin passes its corpus and Flan data this way). `export_hf` writes every trained
  stage as a Hugging Face model dir, MODEL_DIR/<stage>/hf (`hf_export_settings`).
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
  # Read before stages clear the gin config.
  eval_settings, import_settings = evaluation_settings(), hf_import_settings()
  export_settings = hf_export_settings() if export_hf else None
  model_bindings = tuple(model_bindings) + tuple(
      f"{name} = {value!r}" for name, value in dict(stage_macros or {}).items())

  dirs = {}
  if initial_checkpoint_path and importer.is_hf_model_dir(initial_checkpoint_path):
    dirs["base"] = importer.import_hf(initial_checkpoint_path, paths.join(model_dir, "base"),
                                      **import_settings)
    model_gin = (paths.join(dirs["base"], importer.MODEL_GIN),) + model_gin
    logger.info("stage base: the Hugging Face model %s, imported into %s",
                initial_checkpoint_path, dirs["base"])
  elif initial_checkpoint_path:
    dirs["base"] = initial_checkpoint_path
    logger.info("stage base: using the given checkpoint %s", initial_checkpoint_path)
  stage = lambda spec: run_stage(spec, model_dir, model_gin, model_bindings,
                                 optional_macros=tuple(stage_macros or ()))
  if "base" not in dirs:
    dirs["base"] = stage(StageSpec("base", base_gin_files, base_bindings, None))
  plan = [
      StageSpec("ul2r", ul2r_gin_files, ul2r_bindings, "base"),
      StageSpec("flan_ul2r", flan_gin_files,
                flan_bindings + ("FEATURE_CONVERTER = 'prefix_lm'",), "ul2r"),
  ]
  if compare:  # Flan straight from the causal base keeps it causal, as Flan-PaLM was.
    plan.append(StageSpec("flan_base", flan_gin_files,
                          flan_bindings + ("FEATURE_CONVERTER = 'prefix_lm_causal'",), "base"))
  trained = [] if initial_checkpoint_path else ["base"]
  for spec in plan:
    if last_stage in dirs:
      break
    dirs[spec.name] = stage(dataclasses.replace(spec, init_from=dirs[spec.init_from]))
    trained.append(spec.name)
  if export_settings is not None:
    for name in trained:  # each is skipped when its export is already there
      exporter.export_hf(dirs[name], paths.join(dirs[name], "hf"), **export_settings)
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
                        heldout_max_examples: int | None = None) -> dict:
  """What to evaluate each model on; a dict so it survives the per-stage gin resets.
  `heldout_max_examples` keeps the first N held-out examples (None: all)."""
  return dict(heldout_split=heldout_split, heldout_shots=heldout_shots,
              heldout_max_examples=heldout_max_examples,
              max_new_tokens=max_new_tokens, infilling_examples=infilling_examples,
              batch_size=batch_size, benchmarks_data_dir=benchmarks_data_dir,
              benchmarks=list(benchmarks), benchmark_max_examples=benchmark_max_examples)
