"""The pipeline's settings: frozen dataclasses bound by gin under the names users already write.

* `PipelineConfig` is `run_pipeline.*`: which gin files and bindings each stage trains with, where
  the base comes from, which stages run, seeds, export.
* `EvaluationSettings` is `evaluation_settings.*`: which evaluators score the models and how much.
* `HfImportSettings` / `HfExportSettings` are `hf_import_settings.*` / `hf_export_settings.*`.

They are read once at the pipeline's top level, before each stage parses its own gin files.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import gin

from ul2flan.checks import check_int
from ul2flan.hf import import_vocabulary
from ul2flan.hf_vocab import token_layout

STAGES = ("base", "ul2r", "flan_ul2r", "flan_base")
U_MODEL = "ul2r"  # the stage whose model UL2R made: every row it trained on began with a mode token


@gin.configurable("run_pipeline")
@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """What `ul2flan pipeline` runs (gin: `run_pipeline.*`).

  `initial_checkpoint_path`: a ul2flan checkpoint or a Hugging Face model dir to start from (no
  pre-training stage). `last_stage` ("base", "ul2r", "flan_ul2r" or "flan_base") stops after that
  stage, without evaluation: e.g. "ul2r" makes only the U-model. `stage_macros` ({"NAME": value})
  are bound in every stage's gin, so stage gin files can use values given to the pipeline
  (gin_configs/pipelines/hf.gin passes its corpus and Flan data this way). `export_hf` writes
  every trained stage as a Hugging Face model dir, MODEL_DIR/<stage>/hf. `seed` is every stage's
  SEED; `seeds` (several) runs the whole pipeline once per seed, in MODEL_DIR/seed_<k>, and writes
  one report over them (each metric's mean, min, max).
  """
  model_gin: Sequence[str] = ("gin_configs/models/tiny.gin",)
  model_bindings: Sequence[str] = ()
  initial_checkpoint_path: str | None = None
  base_gin_files: Sequence[str] = ("gin_configs/runs/pretrain.gin",)
  base_bindings: Sequence[str] = ()
  ul2r_gin_files: Sequence[str] = ("gin_configs/runs/ul2r.gin",)
  ul2r_bindings: Sequence[str] = ()
  flan_gin_files: Sequence[str] = ("gin_configs/runs/flan.gin",)
  flan_bindings: Sequence[str] = ()
  compare: bool = True  # also Flan straight from the base (kept causal, as Flan-PaLM was)
  evaluate: bool = True
  last_stage: str | None = None
  stage_macros: Mapping[str, Any] | None = None
  export_hf: bool = False
  seed: int = 0
  seeds: Sequence[int] = ()

  def __post_init__(self):
    if self.last_stage is not None and self.last_stage not in STAGES:
      raise ValueError(f"run_pipeline.last_stage must be one of {STAGES}, got "
                       f"{self.last_stage!r}")
    seeds = self.run_seeds
    if len(set(seeds)) != len(seeds):
      raise ValueError(f"run_pipeline.seeds must be distinct, got {list(self.seeds)}")

  @property
  def run_seeds(self) -> list[int]:
    return [int(k) for k in self.seeds] or [int(self.seed)]


@gin.configurable("evaluation_settings")
@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
  """How the pipeline evaluates each model (gin: `evaluation_settings.*`).

  `evaluators` names registered evaluators (`ul2flan.pipeline.evaluators`): "benchmarks" (the Flan
  benchmarks found under `benchmarks_data_dir`, each capped at `benchmark_max_examples` per
  subtask, with the model's chat template when it has one; `benchmarks` picks some, empty: every
  one found), "text_infilling" (spans cut from held-out corpus text, `text_infilling_*`), and
  "demo" (registered by `ul2flan.demo`: knowledge cloze, held-out demo tasks, infilling probes;
  `heldout_*`, `knowledge_max_people`, `infilling_examples`).
  """
  evaluators: Sequence[str] = ()
  batch_size: int = 32
  max_new_tokens: int = 24
  # benchmarks
  benchmarks_data_dir: str | None = None
  benchmarks: Sequence[str] = ()
  benchmark_max_examples: int = 10
  benchmark_modes: str = "both"  # "direct", "cot" or "both"
  chat_template: bool = True  # benchmark prompts through the tokenizer's chat template, if any
  # The U-model (trained on denoising rows, not on answering) also read as the causal LM it was
  # pre-trained as, in the imported base's prompt format (its chat template, if any): its
  # benchmarks apart from its new layout (`benchmark_causal_*`).
  benchmark_u_model_causal: bool = True
  # text_infilling
  text_infilling_corpus: str | None = None  # a corpus spec; the pipelines bind UL2R_CORPUS
  text_infilling_examples: int = 40
  text_infilling_span_tokens: int = 3
  # demo
  heldout_split: str = "test"
  heldout_shots: int = 0
  heldout_max_examples: int | None = None
  knowledge_max_people: int | None = None
  infilling_examples: int = 40

  def __post_init__(self):
    check_int(self.batch_size, "evaluation_settings.batch_size")
    check_int(self.max_new_tokens, "evaluation_settings.max_new_tokens")
    check_int(self.benchmark_max_examples, "evaluation_settings.benchmark_max_examples")
    check_int(self.text_infilling_examples, "evaluation_settings.text_infilling_examples")
    check_int(self.text_infilling_span_tokens, "evaluation_settings.text_infilling_span_tokens")
    if self.benchmark_modes not in ("direct", "cot", "both"):
      raise ValueError(f"evaluation_settings.benchmark_modes must be 'direct', 'cot' or 'both', "
                       f"got {self.benchmark_modes!r}")

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@gin.configurable("hf_import_settings")
@dataclasses.dataclass(frozen=True)
class HfImportSettings:
  """How a Hugging Face base model is imported (`importer.import_hf`'s settings)."""
  dtype: str = "float32"
  scan_layers: bool = False
  sentinels: str = import_vocabulary.AUTO
  num_sentinels: int = 100
  reserved_pattern: str = token_layout.LLAMA3_RESERVED_PATTERN

  def as_kwargs(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@gin.configurable("hf_export_settings")
@dataclasses.dataclass(frozen=True)
class HfExportSettings:
  """How trained stages are exported (`exporter.export_hf`'s settings)."""
  dtype: str = "float32"
  max_shard_gb: float = 5.0

  def as_kwargs(self) -> dict[str, Any]:
    return dict(dtype=self.dtype, max_shard_bytes=int(self.max_shard_gb * 1024 ** 3))
