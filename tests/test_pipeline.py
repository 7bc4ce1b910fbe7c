"""`ul2flan pipeline`: killed mid-stage and re-run, it finishes without redoing finished stages."""

import json
import os
import signal
import subprocess
import sys
import time

from helpers import REPO_ROOT

ARGS = ["--gin_file=tests/testdata/pipeline_micro.gin"]


def _pipeline(model_dir, *extra):
  return [sys.executable, "-m", "ul2flan", "pipeline", *ARGS, f"--model_dir={model_dir}",
          *extra]


def test_killed_pipeline_resumes_and_reports_four_models(tmp_path):
  d = tmp_path / "run"
  # Kill the first run once the UL2R stage has written a checkpoint (base is finished by then).
  p = subprocess.Popen(_pipeline(d), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, start_new_session=True)
  deadline = time.time() + 240
  ul2r_ckpts = d / "ul2r" / "checkpoints"
  while time.time() < deadline and p.poll() is None:
    if ul2r_ckpts.is_dir() and any(x.name.isdigit() for x in ul2r_ckpts.iterdir()):
      break
    time.sleep(0.5)
  assert p.poll() is None, "pipeline ended before it could be interrupted"
  os.killpg(p.pid, signal.SIGKILL)
  p.wait()
  assert (d / "base" / "DONE").exists() and not (d / "ul2r" / "DONE").exists()
  base_done = (d / "base" / "DONE").stat().st_mtime
  base_ckpt = sorted(os.listdir(d / "base" / "checkpoints"))

  r = subprocess.run(_pipeline(d), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  assert "stage base: already done, skipping" in r.stderr
  assert "[ul2r] resumed from step" in r.stderr  # the interrupted stage continued, not restarted
  assert (d / "base" / "DONE").stat().st_mtime == base_done
  assert sorted(os.listdir(d / "base" / "checkpoints")) == base_ckpt
  for stage in ("ul2r", "flan_ul2r", "flan_base"):
    assert (d / stage / "DONE").exists()

  report = (d / "report.md").read_text()
  for label in ("base (causal LM)", "U-base (UL2R)", "Flan-base", "Flan-U-base"):
    assert f"| {label} |" in report
  assert (d / "comparison.png").stat().st_size > 1000
  assert (d / "training_curves.png").stat().st_size > 1000
  # The table's numbers come from the per-example predictions written by real eval runs.
  for model in ("base", "ul2r", "flan_base", "flan_ul2r"):
    res = json.loads((d / "eval" / f"{model}.json").read_text())
    rows = [json.loads(l) for l in (d / "eval" / f"{model}.heldout.jsonl").read_text().splitlines()]
    for task, score in res["tasks"].items():
      mine = [x for x in rows if x["task"] == task]
      assert score["accuracy"] == 100.0 * sum(x["correct"] for x in mine) / len(mine)

  # A third run redoes nothing.
  r = subprocess.run(_pipeline(d), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stderr.count("already done, skipping") == 4
