"""`ul2flan pipeline`: an interrupted stage resumes exactly, finished stages are not redone, and
the report covers the four models on the held-out examples the task generator defines.

The interruption is deterministic: the first run stops after UL2R (`run_pipeline.last_stage`),
then UL2R's DONE marker and its last checkpoint are removed, which is what a kill between two
checkpoints leaves behind. The reference for the resumed UL2R model is the uninterrupted one.
"""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np

from ul2flan.demo import tasks as demo_tasks
from helpers import REPO_ROOT, read_params

ARGS = ["--gin_file=tests/testdata/pipeline_micro.gin"]


def _pipeline(model_dir, *extra):
  r = subprocess.run([sys.executable, "-m", "ul2flan", "pipeline", *ARGS,
                      f"--model_dir={model_dir}", *extra],
                     cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-4000:]
  return r.stderr


def test_interrupted_pipeline_resumes_exactly_and_reports_four_models(tmp_path):
  d = tmp_path / "run"
  _pipeline(d, "--gin.run_pipeline.last_stage='ul2r'")
  assert (d / "ul2r" / "DONE").exists() and not (d / "flan_ul2r").exists()
  uninterrupted = read_params(d / "ul2r" / "checkpoints" / "6")
  base_checkpoints = sorted(p.name for p in (d / "base" / "checkpoints").iterdir())
  # What a kill after the step-4 save leaves: no DONE, no step 6.
  (d / "ul2r" / "DONE").unlink()
  shutil.rmtree(d / "ul2r" / "checkpoints" / "6")

  log = _pipeline(d)
  assert "stage base: already done, skipping" in log
  assert "[ul2r] resumed from step 4" in log
  assert sorted(p.name for p in (d / "base" / "checkpoints").iterdir()) == base_checkpoints
  jax.tree.map(np.testing.assert_array_equal, read_params(d / "ul2r" / "checkpoints" / "6"),
               uninterrupted)
  steps = [json.loads(l)["step"] for l in (d / "ul2r" / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(set(steps))  # no step logged twice after the resume
  for stage, converter in (("ul2r", "prefix_lm"), ("flan_ul2r", "prefix_lm"),
                           ("flan_base", "prefix_lm_causal"), ("base", "lm")):
    assert (d / stage / "DONE").exists()
    assert json.loads((d / stage / "run.json").read_text())["feature_converter"] == converter

  report = (d / "report.md").read_text()
  # demo_quick.gin (included by the micro gin) evaluates 36 evenly spaced held-out examples.
  examples = demo_tasks.heldout_eval_examples("test")
  gold = [e["targets"] for e in examples[::len(examples) // 36][:36]]
  for model, label in (("base", "base (causal LM)"), ("ul2r", "U-base (UL2R)"),
                       ("flan_base", "Flan-base"), ("flan_ul2r", "Flan-U-base")):
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

  log = _pipeline(d)  # a third run redoes nothing
  assert log.count("already done, skipping") == 4 and "training in" not in log
