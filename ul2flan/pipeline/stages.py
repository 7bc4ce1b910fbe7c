"""The pipeline's stages: base -> UL2R -> Flan-U (and Flan straight from the base).

Each stage is an ordinary `train()` run in MODEL_DIR/<stage>, configured by its own gin files
(parsed fresh for the stage) and handed the previous stage's checkpoint as INITIAL_CHECKPOINT_PATH
(params only). A finished stage has a DONE marker and is skipped; an interrupted one resumes from
its latest checkpoint. A Hugging Face base is imported once into MODEL_DIR/base, its model.gin
(architecture and tokenizer vocabulary) first in every stage's gin files.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import jax

from ul2flan import config as config_lib
from ul2flan import paths
from ul2flan import row_layout
from ul2flan.hf import importer
from ul2flan.pipeline.settings import HfImportSettings, PipelineConfig
from ul2flan.training import trainer

logger = logging.getLogger(__name__)

DONE_FILE = "DONE"


@dataclasses.dataclass(frozen=True)
class StageSpec:
  name: str
  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]
  init_from: str | None  # the stage whose checkpoint this one starts from (None: scratch)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Every stage of one pipeline run, in order, with the gin each one parses."""
  model_gin: tuple[str, ...]
  model_bindings: tuple[str, ...]  # the stage macros' bindings included
  stage_macros: tuple[str, ...]  # their names: a stage may leave them unread
  stages: tuple[StageSpec, ...]  # the stages to train (the base too, unless it is given)
  base: str | None  # a given base: a ul2flan checkpoint or a Hugging Face model dir

  @classmethod
  def of(cls, config: PipelineConfig) -> "Plan":
    macros = dict(config.stage_macros or {})
    flan_gin, flan_bindings = tuple(config.flan_gin_files), tuple(config.flan_bindings)
    stages = [] if config.initial_checkpoint_path else [
        StageSpec("base", tuple(config.base_gin_files), tuple(config.base_bindings), None)]
    stages += [
        StageSpec("ul2r", tuple(config.ul2r_gin_files), tuple(config.ul2r_bindings), "base"),
        StageSpec("flan_ul2r", flan_gin,
                  flan_bindings + (f"FEATURE_CONVERTER = '{row_layout.PREFIX_LM}'",), "ul2r")]
    if config.compare:  # Flan straight from the causal base keeps it causal, as Flan-PaLM was.
      stages.append(StageSpec(
          "flan_base", flan_gin,
          flan_bindings + (f"FEATURE_CONVERTER = '{row_layout.PREFIX_LM_CAUSAL}'",), "base"))
    names = [s.name for s in stages]
    if config.last_stage in names:
      stages = stages[:names.index(config.last_stage) + 1]
    elif config.last_stage == "base":  # a given base: nothing to train
      stages = []
    return cls(tuple(config.model_gin),
               tuple(config.model_bindings) + tuple(f"{k} = {v!r}" for k, v in macros.items()),
               tuple(macros), tuple(stages), config.initial_checkpoint_path)

  def stage_gin(self, spec: StageSpec, dirs: dict[str, str], seed: int, model_gin: Sequence[str]
                ) -> tuple[list[str], list[str]]:
    """(gin files, bindings) that stage `spec` trains with, given the stages' dirs so far."""
    bindings = [f"INITIAL_CHECKPOINT_PATH = '{dirs[spec.init_from]}'"] if spec.init_from else []
    bindings += list(self.model_bindings) + [f"SEED = {seed}"] + list(spec.bindings)
    return list(model_gin) + list(spec.gin_files), bindings


def is_done(stage_dir: str) -> bool:
  return (paths.resolve(stage_dir) / DONE_FILE).exists()


def prepare_base(plan: Plan, model_dir: str, import_settings: HfImportSettings
                 ) -> tuple[dict[str, str], tuple[str, ...]]:
  """The given base's dir (a Hugging Face one imported once into MODEL_DIR/base) and the model gin
  every stage parses first. ({}, the plan's model gin) when the pipeline trains its own base."""
  if jax.process_index() == 0:
    paths.resolve(model_dir).mkdir(parents=True, exist_ok=True)
  if not plan.base:
    return {}, plan.model_gin
  if importer.is_hf_model_dir(plan.base):
    base_dir = importer.import_hf(plan.base, paths.join(model_dir, "base"),
                                  **import_settings.as_kwargs())
    logger.info("stage base: the Hugging Face model %s, imported into %s", plan.base, base_dir)
    return {"base": base_dir}, (paths.join(base_dir, importer.MODEL_GIN),) + plan.model_gin
  logger.info("stage base: using the given checkpoint %s", plan.base)
  return {"base": plan.base}, plan.model_gin


def planned_dirs(plan: Plan, model_dir: str, given: dict[str, str]) -> dict[str, str]:
  """Every stage's dir: the given base's, and MODEL_DIR/<stage> for the trained ones."""
  return {**given, **{s.name: paths.join(model_dir, s.name) for s in plan.stages}}


def run_stage(plan: Plan, spec: StageSpec, dirs: dict[str, str], seed: int,
              model_gin: Sequence[str]) -> bool:
  """Trains one stage unless it is done; returns whether it trained."""
  stage_dir = dirs[spec.name]
  if is_done(stage_dir):
    logger.info("stage %s: already done, skipping", spec.name)
    return False
  logger.info("stage %s: training in %s%s", spec.name, stage_dir,
              f", starting from the params of {dirs[spec.init_from]}" if spec.init_from else "")
  gin_files, bindings = plan.stage_gin(spec, dirs, seed, model_gin)
  config_lib.parse_gin(gin_files, bindings, command="train", optional_macros=plan.stage_macros)
  trainer.train(stage_dir, stage_name=spec.name)
  if jax.process_index() == 0:
    (paths.resolve(stage_dir) / DONE_FILE).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
  return True
