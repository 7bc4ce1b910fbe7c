"""Fault injection: interrupt `ul2flan train` at random moments, re-run, compare with a clean run.

Each trial trains a micro model (async checkpoints every 3 steps) in a fresh model dir, interrupts
it one or more times -- `kill -9` after a random number of logged steps, `kill -9` while an async
save is being written, or SIGTERM -- and then re-runs the same command to the end. A trial passes
when the final parameters and optimizer state are bit-identical to an uninterrupted run's (max
|diff| 0), every logged loss is bit-identical, `metrics.jsonl` holds each step exactly once, no
orbax temporary directory is left, and a SIGTERM exited 75 with its step committed.

  .venv/bin/python benchmarks/fault_injection.py --trials 20 [--seed 0] [--workdir DIR]

`tests/test_fault_injection.py` runs one trial with one interruption of each kind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 16
SAVE_PERIOD = 3
TRAIN_ARGS = [
    "--gin_file=gin_configs/runs/pretrain.gin", "--gin.DecoderConfig.d_model=64",
    "--gin.DecoderConfig.num_layers=2", "--gin.DecoderConfig.num_heads=4",
    "--gin.DecoderConfig.num_kv_heads=2", "--gin.DecoderConfig.head_dim=16",
    "--gin.DecoderConfig.mlp_dim=128", "--gin.TASK_FEATURE_LENGTHS={'targets': 64}",
    "--gin.BATCH_SIZE=8", "--gin.MESH_SHAPE={'data': 1}", "--gin.EVAL_PERIOD=0",
    "--gin.TrainConfig.log_period=1", "--gin.TrainConfig.peak_flops_per_device=1e12",
    "--gin.TrainConfig.progress=False", f"--gin.TRAIN_STEPS={TOTAL_STEPS}",
    f"--gin.CheckpointConfig.save_period={SAVE_PERIOD}", "--gin.CheckpointConfig.keep=3",
    "--gin.CheckpointConfig.async_save=True",
]
ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "CUDA_VISIBLE_DEVICES": "",
       "TF_CPP_MIN_LOG_LEVEL": "2"}
KINDS = ("kill_after_steps", "kill_during_save", "sigterm")


def _command(model_dir: str) -> list[str]:
  return [sys.executable, "-m", "ul2flan", "train", f"--model_dir={model_dir}", *TRAIN_ARGS]


def _start(model_dir: str) -> subprocess.Popen:
  return subprocess.Popen(_command(model_dir), cwd=REPO_ROOT, env={**os.environ, **ENV},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)


def run_to_end(model_dir: str) -> subprocess.CompletedProcess:
  return subprocess.run(_command(model_dir), cwd=REPO_ROOT, env={**os.environ, **ENV},
                        capture_output=True, text=True, timeout=900)


def _logged_steps(model_dir: str) -> int:
  try:
    with open(os.path.join(model_dir, "metrics.jsonl"), "rb") as f:
      return f.read().count(b"\n")
  except FileNotFoundError:
    return 0


def _saving(model_dir: str) -> bool:
  try:
    return any(".orbax-checkpoint-tmp" in d for d in os.listdir(os.path.join(model_dir,
                                                                              "checkpoints")))
  except FileNotFoundError:
    return False


def interrupt(model_dir: str, kind: str, rng: random.Random, target: int | None = None) -> dict:
  """Starts the run and interrupts it once; returns what happened.

  Kills and SIGTERMs land once `target` steps are logged (random when not given); a kill during a
  save lands in the first async save written at or after `target` (the first save by default).
  """
  logged_before = _logged_steps(model_dir)
  if target is None:
    target = (logged_before + 1 if kind == "kill_during_save"
              else rng.randint(logged_before + 1, TOTAL_STEPS - 1))
  proc = _start(model_dir)
  what = {"kind": kind, "after_step": None, "during_save": False}
  while proc.poll() is None:
    logged = _logged_steps(model_dir)
    if kind == "kill_during_save" and logged >= target and _saving(model_dir):
      os.killpg(proc.pid, signal.SIGKILL)
      what.update(after_step=logged, during_save=True)
      break
    if logged >= target and kind != "kill_during_save":
      time.sleep(rng.uniform(0, 0.05))
      if kind == "sigterm":
        os.killpg(proc.pid, signal.SIGTERM)
      else:
        what["during_save"] = _saving(model_dir)
        os.killpg(proc.pid, signal.SIGKILL)
      what["after_step"] = _logged_steps(model_dir)
      break
    time.sleep(0.002)
  _, err = proc.communicate(timeout=600)
  what["returncode"] = proc.returncode
  if kind == "sigterm" and what["after_step"] is not None:
    what["sigterm_ok"] = _sigterm_ok(model_dir, proc.returncode, err)
  return what


def _sigterm_ok(model_dir: str, returncode: int, err: str) -> bool:
  """Exit 75 with a resume hint, and the last logged step is the committed one (none lost)."""
  if returncode == 0:  # the signal landed after the last step: nothing to save
    return True
  steps = [json.loads(l)["step"] for l in open(os.path.join(model_dir, "metrics.jsonl"))]
  committed = max(int(d) for d in os.listdir(os.path.join(model_dir, "checkpoints"))
                  if d.isdigit())
  return (returncode == 75 and "Re-run the same command" in err and steps[-1] == committed)


def final_state(model_dir: str) -> dict:
  """The last step's params and optimizer state as numpy, read straight through orbax."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  handlers = {"params": ocp.StandardCheckpointHandler(),
              "optimizer": ocp.StandardCheckpointHandler()}
  with ocp.CheckpointManager(os.path.join(model_dir, "checkpoints"), item_handlers=handlers) as m:
    step = m.latest_step()
    restored = m.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(), optimizer=ocp.args.StandardRestore()))
  import jax  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path({"params": restored["params"],
                                                 "optimizer": restored["optimizer"]})[0]
  return {"step": step, "leaves": {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}}


def compare(reference: str, model_dir: str) -> dict:
  ref, got = final_state(reference), final_state(model_dir)
  diffs = [float(np.max(np.abs(ref["leaves"][k].astype(np.float64)
                               - got["leaves"][k].astype(np.float64)), initial=0.0))
           for k in ref["leaves"]]
  rows = [json.loads(l) for l in open(os.path.join(model_dir, "metrics.jsonl"))]
  ref_rows = [json.loads(l) for l in open(os.path.join(reference, "metrics.jsonl"))]
  steps = [r["step"] for r in rows]
  leftovers = [d for d in os.listdir(os.path.join(model_dir, "checkpoints")) if "tmp" in d]
  return {
      "final_step": got["step"], "same_leaves": set(ref["leaves"]) == set(got["leaves"]),
      "max_abs_diff": max(diffs), "steps_once": steps == list(range(1, TOTAL_STEPS + 1)),
      "losses_identical": [r["loss"] for r in rows] == [r["loss"] for r in ref_rows],
      "tmp_dirs_left": leftovers,
  }


def passed(result: dict) -> bool:
  c = result["compare"]
  return (c["final_step"] == TOTAL_STEPS and c["same_leaves"] and c["max_abs_diff"] == 0.0
          and c["steps_once"] and c["losses_identical"] and not c["tmp_dirs_left"]
          and all(i.get("sigterm_ok", True) for i in result["interruptions"])
          and result["final_returncode"] == 0)


def trial(workdir: str, name: str, reference: str, kinds, rng: random.Random,
          targets=None) -> dict:
  """Interrupts one run with each of `kinds` in turn (at `targets` steps if given), then runs it
  to the end and compares it with `reference`."""
  model_dir = os.path.join(workdir, name)
  interruptions = []
  for kind, target in zip(kinds, targets or [None] * len(kinds)):
    if _logged_steps(model_dir) >= TOTAL_STEPS - 1:
      break
    interruptions.append(interrupt(model_dir, kind, rng, target))
  final = run_to_end(model_dir)
  result = {"name": name, "interruptions": interruptions, "final_returncode": final.returncode,
            "final_stderr_tail": final.stderr[-2000:] if final.returncode else ""}
  result["compare"] = compare(reference, model_dir) if final.returncode == 0 else {}
  result["passed"] = final.returncode == 0 and passed(result)
  return result


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--trials", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default=None)
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="ul2flan_faults_")
  rng = random.Random(args.seed)
  reference = os.path.join(workdir, "reference")
  r = run_to_end(reference)
  if r.returncode:
    print(r.stderr[-3000:])
    return 1
  results = []
  for i in range(args.trials):
    # One or two interruptions per trial; every third trial aims its first kill at a save.
    kinds = [KINDS[1] if i % 3 == 0 else rng.choice(KINDS)]
    if rng.random() < 0.5:
      kinds.append(rng.choice(KINDS))
    res = trial(workdir, f"trial{i:02d}", reference, kinds, rng)
    results.append(res)
    c = res["compare"]
    print(f"trial {i:2d}: " + ", ".join(
        f"{x['kind']}@{x['after_step']}{' (mid-save)' if x['during_save'] else ''}"
        f" rc={x['returncode']}" for x in res["interruptions"])
          + f" -> {'PASS' if res['passed'] else 'FAIL'} max|diff|={c.get('max_abs_diff')}",
          flush=True)
    if not res["passed"]:
      print(json.dumps(res, indent=1))
  n_pass = sum(r["passed"] for r in results)
  mid_save = sum(x["during_save"] for r in results for x in r["interruptions"])
  kills = sum(x["kind"] != "sigterm" for r in results for x in r["interruptions"])
  print(f"\n{n_pass}/{len(results)} trials bit-identical to the uninterrupted run "
        f"({kills} kill -9s, {mid_save} of them while an async save was being written; "
        f"{sum(x['kind'] == 'sigterm' for r in results for x in r['interruptions'])} SIGTERMs)")
  with open(os.path.join(workdir, "fault_injection.json"), "w") as f:
    json.dump(results, f, indent=1)
  return 0 if n_pass == len(results) else 1


if __name__ == "__main__":
  sys.exit(main())
