"""SIGTERM, kill -9 mid-save and kill -9 mid-run, each followed by a re-run, end bit-identical to an
uninterrupted run (params, optimizer state, every logged loss; each step logged once).

The same driver as `benchmarks/fault_injection.py`, which runs 20 random trials.
"""

import random

import pytest

from benchmarks import fault_injection as fi
from helpers import devices_env


@pytest.mark.slow
def test_interrupted_runs_resume_bit_identically(tmp_path, monkeypatch):
  monkeypatch.setattr(fi, "ENV", {**fi.ENV, **devices_env(1)})  # with the suite's XLA flags
  reference = str(tmp_path / "reference")
  r = fi.run_to_end(reference)
  assert r.returncode == 0, r.stderr[-3000:]
  # SIGTERM after step 4, kill -9 inside the save of step 9 (or a later one), kill -9 after 13.
  result = fi.trial(str(tmp_path), "interrupted", reference,
                    ["sigterm", "kill_during_save", "kill_after_steps"], random.Random(0),
                    targets=[4, 7, 13])
  assert result["final_returncode"] == 0, result["final_stderr_tail"]
  kinds = [x["kind"] for x in result["interruptions"]]
  assert kinds == ["sigterm", "kill_during_save", "kill_after_steps"], result
  sigterm = result["interruptions"][0]
  # The run stopped by itself with status 75, its last logged step committed (no step lost).
  assert sigterm["returncode"] == 75 and sigterm["sigterm_ok"], result
  c = result["compare"]
  assert c["final_step"] == fi.TOTAL_STEPS and c["same_leaves"], c
  assert c["max_abs_diff"] == 0.0, c
  assert c["steps_once"] and c["losses_identical"], c
  assert not c["tmp_dirs_left"], c
