"""Pluggable evaluators: what the pipeline measures on each of its models.

An evaluator is registered under a name (`register`) and chosen by `evaluation_settings.
evaluators`. Built in (`ul2flan.pipeline.benchmark_eval`, `text_infilling`): "benchmarks" (the Flan
benchmarks found in a data dir) and "text_infilling" (spans cut from held-out corpus text). The
demo registers "demo" from its own package (`ul2flan.demo.evaluate`), so nothing here knows the
demo's world.

Each model is loaded once (`inference.generator.load_generator`) and handed to every evaluator;
results are cached per model in MODEL_DIR/eval/<model>.json, per evaluator, so adding an evaluator
to a finished run scores only what is new.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Mapping, Protocol, Sequence

import jax

from ul2flan import paths
from ul2flan.inference import generator as generator_lib
from ul2flan.pipeline.settings import EvaluationSettings

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalRequest:
  """What an evaluator is asked: one model of the pipeline, where its rows go, the settings."""
  model: str  # the stage: "base", "ul2r", "flan_base", "flan_ul2r"
  checkpoint_dir: str
  out_dir: str  # MODEL_DIR/eval: per-example rows go to <out_dir>/<model>.<evaluator>...
  settings: EvaluationSettings


class Evaluator(Protocol):
  """One kind of measurement, run on every model of the pipeline."""
  name: str
  # (metric key, column label): the columns this evaluator adds to the report's main table.
  headline: Sequence[tuple[str, str]]

  def check(self, settings: EvaluationSettings) -> None:
    """Raises ValueError, saying what to fix, before any training (the pipeline's preflight)."""

  def evaluate(self, gen, request: EvalRequest) -> dict[str, Any]:
    """{"metrics": {name: float}, ...anything else the report section reads}."""

  def report_lines(self, results_by_seed: Mapping[int, Mapping[str, Mapping]],
                   summary: Mapping[str, Mapping[str, Mapping]]) -> list[str]:
    """Markdown for this evaluator's section of report.md (may be empty)."""


_REGISTRY: dict[str, Evaluator] = {}


def register(evaluator: Evaluator) -> Evaluator:
  _REGISTRY[evaluator.name] = evaluator
  return evaluator


def get(names: Sequence[str]) -> list[Evaluator]:
  """The named evaluators, in order; an unknown name is an error listing the known ones."""
  unknown = [n for n in names if n not in _REGISTRY]
  if unknown:
    raise ValueError(f"evaluation_settings.evaluators names {unknown}, which no module "
                     f"registered; known: {sorted(_REGISTRY)} (\"demo\" comes with "
                     f"ul2flan.demo.evaluate)")
  return [_REGISTRY[n] for n in names]


def evaluate_model(name: str, checkpoint_dir: str, run_dir: str, settings: EvaluationSettings,
                   evaluators: Sequence[Evaluator]) -> dict[str, Any]:
  """Every evaluator's results for one model, cached in RUN_DIR/eval/<name>.json.

  The result: {"model", "checkpoint", "metrics" (every evaluator's, merged), "evaluators":
  {evaluator: its other results}, "seconds": {evaluator: time}}.
  """
  out_dir = paths.resolve(run_dir) / "eval"
  cache = out_dir / f"{name}.json"
  result = json.loads(cache.read_text()) if cache.exists() else {
      "model": name, "checkpoint": checkpoint_dir, "metrics": {}, "evaluators": {},
      "seconds": {}}
  todo = [e for e in evaluators if e.name not in result["evaluators"]]
  if not todo:
    logger.info("[eval] %s: cached results %s", name, cache)
    return result
  if jax.process_index() == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
  logger.info("[eval] %s: %s on the checkpoint %s", name, ", ".join(e.name for e in todo),
              checkpoint_dir)
  gen = generator_lib.load_generator(checkpoint_dir, batch_size=settings.batch_size)
  request = EvalRequest(name, checkpoint_dir, str(out_dir), settings)
  for evaluator in todo:
    started = time.time()
    out = dict(evaluator.evaluate(gen, request))
    result["metrics"].update(out.pop("metrics", {}))
    result["evaluators"][evaluator.name] = out
    result["seconds"][evaluator.name] = time.time() - started
    logger.info("[eval] %s: %s done in %.0fs", name, evaluator.name,
                result["seconds"][evaluator.name])
    if jax.process_index() == 0:  # after each evaluator: an interrupted run keeps what is done
      cache.write_text(json.dumps(result, indent=1))
  return result
