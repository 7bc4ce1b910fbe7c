"""`ul2flan pipeline`: an interrupted stage resumes exactly, finished stages are not redone, and
the report covers the four models on the held-out examples the task generator defines.

One pipeline, in-process. The interruption is deterministic: the first run stops after UL2R
(`run_pipeline.last_stage`), then UL2R's DONE marker and its last checkpoint are removed, which is
what a kill between two checkpoints leaves behind. The reference for the resumed UL2R model is the
uninterrupted one. Behaviour is read from what the runs leave (checkpoints, DONE markers,
run.json, metrics rows, report.json), and a finished pipeline is shown to train nothing by making
any training call fail.
"""

import json
import shutil

import jax
import numpy as np
import pytest

from ul2flan import config as config_lib
from ul2flan.commands import configurables  # noqa: F401  (every configurable, the evaluators)
from ul2flan.demo import tasks as demo_tasks
from ul2flan.pipeline import runner
from ul2flan.training import trainer
from helpers import read_params

MICRO = "tests/testdata/pipeline_micro.gin"
STAGES = {"base": "lm", "ul2r": "prefix_lm", "flan_ul2r": "prefix_lm",
          "flan_base": "prefix_lm_causal"}
LABELS = {"base": "base (causal LM)", "ul2r": "U-base (UL2R)", "flan_base": "Flan-base",
          "flan_ul2r": "Flan-U-base"}


def _pipeline(model_dir, *bindings):
  config_lib.parse_gin([MICRO], list(bindings), command="pipeline")
  try:
    assert runner.run_pipeline(str(model_dir)) == 0
  finally:
    config_lib.parse_gin([])


def _steps_logged(stage_dir):
  return [json.loads(l)["step"] for l in (stage_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_interrupted_pipeline_resumes_exactly_and_reports_four_models(tmp_path, monkeypatch):
  d = tmp_path / "run"
  _pipeline(d, "run_pipeline.last_stage = 'ul2r'")
  assert (d / "ul2r" / "DONE").exists() and not (d / "flan_ul2r").exists()
  assert not (d / "report.json").exists()  # last_stage: no evaluation
  uninterrupted = read_params(d / "ul2r" / "checkpoints" / "6")
  base_checkpoints = sorted(p.name for p in (d / "base" / "checkpoints").iterdir())
  base_done = (d / "base" / "DONE").read_text()
  # What a kill after the step-4 save leaves: no DONE, no step 6.
  (d / "ul2r" / "DONE").unlink()
  shutil.rmtree(d / "ul2r" / "checkpoints" / "6")

  _pipeline(d)
  assert (d / "base" / "DONE").read_text() == base_done  # base was not trained again
  assert sorted(p.name for p in (d / "base" / "checkpoints").iterdir()) == base_checkpoints
  jax.tree.map(np.testing.assert_array_equal, read_params(d / "ul2r" / "checkpoints" / "6"),
               uninterrupted)
  steps = _steps_logged(d / "ul2r")
  assert steps == sorted(set(steps)) and steps[-1] == 6  # resumed at 4: no step logged twice
  for stage, converter in STAGES.items():
    assert (d / stage / "DONE").exists()
    run_info = json.loads((d / stage / "run.json").read_text())
    assert run_info["feature_converter"] == converter
    # The micro gin's UL2R rows are `inputs targets` (as the demo's); Flan rows keep their EOS.
    assert run_info["inputs_eos"] is (stage != "ul2r")

  report = (d / "report.md").read_text()
  # The micro gin evaluates 12 evenly spaced held-out examples.
  examples = demo_tasks.heldout_eval_examples("test")
  gold = [e["targets"] for e in examples[::len(examples) // 12][:12]]
  for model, label in LABELS.items():
    assert f"| {label} |" in report
    rows = [json.loads(l) for l in (d / "eval" / f"{model}.heldout.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in rows] == gold  # the sampled held-out examples, in order
  data = json.loads((d / "report.json").read_text())
  assert data["seeds"] == [0] and list(data["models"]) == ["base", "ul2r", "flan_base", "flan_ul2r"]
  for model, metrics in data["models"].items():
    cached = json.loads((d / "eval" / f"{model}.json").read_text())["metrics"]
    assert metrics == cached
    for name in ("heldout_generation_normalized", "heldout_rank_normalized",
                 "infilling_context_accuracy", "infilling_fact_accuracy",
                 "infilling_context_rank_accuracy", "infilling_fact_rank_accuracy",
                 "knowledge_corpus_accuracy", "knowledge_heldout_accuracy"):
      assert isinstance(metrics[name], float), (model, name)
  assert (d / "comparison.png").stat().st_size > 1000
  assert (d / "training_curves.png").stat().st_size > 1000

  # A third run redoes nothing: it never trains, and evaluates from the cache.
  def no_training(*args, **kwargs):
    if not kwargs.get("check_only"):
      raise AssertionError(f"a finished pipeline trained again: {args} {kwargs}")
  monkeypatch.setattr(trainer, "train", no_training)
  cached_eval = {m: (d / "eval" / f"{m}.json").read_text() for m in LABELS}
  _pipeline(d)
  assert {m: (d / "eval" / f"{m}.json").read_text() for m in LABELS} == cached_eval
  assert json.loads((d / "report.json").read_text()) == data
