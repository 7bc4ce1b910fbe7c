"""Two processes on localhost (jax.distributed + gloo, 2 CPU devices each) match one process, and
evaluate uneven eval shards in lockstep (the process that runs out first feeds zero-weight rows).
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ul2flan.commands import main as cli
from ul2flan.training.metrics import read_metrics
from helpers import MICRO_FLAGS, REPO_ROOT, devices_env

MICRO_ARGS = [
    "--gin_file=gin_configs/runs/pretrain.gin", *MICRO_FLAGS,
    "--gin.TASK_FEATURE_LENGTHS={'targets': 64}",
    "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=0", "--gin.TrainConfig.log_period=1", "--gin.TRAIN_STEPS=4",
    "--gin.TrainConfig.peak_flops_per_device=1e12", "--gin.MESH_SHAPE={'data': 2, 'model': 2}",
    # The global batch is built from 2 seqio shards whether 1 or 2 processes read them.
    "--gin.train/DatasetConfig.num_data_shards=2",
]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(d):
  return np.array([m["loss"] for m in read_metrics(os.path.join(d, "metrics.jsonl"))])


# Eval every 4 steps on `uneven_eval` (tests/uneven_eval_task.py): shard 0 has 3 batches, shard 1
# has 2, so the processes run out at different steps.
EVAL_ARGS = [
    "--gin.EVAL_PERIOD=4", "--gin.eval/DatasetConfig.mixture_or_task_name='uneven_eval'",
    "--gin.eval/DatasetConfig.module='tests.uneven_eval_task'",
]


def _eval_reference(model_dir):
  """Loss and token count over exactly the rows each process's shard yields, one device."""
  import jax
  import uneven_eval_task
  from ul2flan import checkpoints, partitioning
  from ul2flan.training import data, optim, steps
  from helpers import micro_config
  cfg = data.DatasetConfig(mixture_or_task_name="uneven_eval", task_feature_lengths={"targets": 64},
                           split="validation", batch_size=8, shuffle=False, repeat=False)
  part = partitioning.Partitioner({"data": 1}, devices=jax.devices()[:1])
  sched = optim.make_schedule(total_steps=4)
  builder = steps.StepBuilder(micro_config(), part,
                              optim.make_optimizer(sched), sched, steps.StepSettings())
  params, step = checkpoints.restore_params(str(model_dir), builder.abstract_params)
  nll = weight = 0.0
  for process in range(2):
    for batch in data.HostIterator(cfg, process_index=process, process_count=2):
      out = jax.jit(builder.eval_step)(params, batch)
      nll, weight = nll + float(out["nll"]), weight + float(out["weight"])
  # Shard p holds examples p, p+2, ...; every row is scored once, short last batches included.
  assert weight == sum(length + 1 for length in uneven_eval_task.LENGTHS)
  return nll / weight, weight


def test_two_processes_match_single_process(tmp_path):
  single = tmp_path / "single"  # this process: one host with the same 4 devices
  assert cli.main(["train", f"--model_dir={single}", *MICRO_ARGS]) == 0

  multi = tmp_path / "multi"
  port = _free_port()
  env = {**os.environ, **devices_env(2)}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "ul2flan", "train", f"--model_dir={multi}", *MICRO_ARGS,
       *EVAL_ARGS, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}",
       "--cpu_collectives=gloo"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=600))
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  ref, got = _losses(single), _losses(multi)
  assert len(ref) == 4
  np.testing.assert_allclose(got, ref, rtol=2e-4)
  assert os.path.isdir(multi / "checkpoints" / "4" / "params")
  # Both processes ran the same eval steps (no hang), over every row of both shards exactly once.
  (row,) = read_metrics(os.path.join(multi, "metrics_eval.jsonl"))
  loss, tokens = _eval_reference(multi)
  assert row["step"] == 4 and row["tokens"] == tokens
  np.testing.assert_allclose(row["loss"], loss, rtol=1e-5)


@pytest.mark.slow
def test_sigterm_to_one_host_stops_both_at_the_same_committed_step(tmp_path):
  """JAX's preemption sync: the signalled host and the other stop after the same step, saved."""
  import signal
  import time
  d = tmp_path / "multi"
  port = _free_port()
  env = {**os.environ, **devices_env(2)}
  args = [a for a in MICRO_ARGS if not a.startswith("--gin.TRAIN_STEPS")]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "ul2flan", "train", f"--model_dir={d}", *args,
       "--gin.TRAIN_STEPS=400", "--gin.CheckpointConfig.save_period=1000",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
       "--cpu_collectives=gloo"], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    deadline = time.time() + 400
    while len(read_metrics(d / "metrics.jsonl")) < 3 and time.time() < deadline:
      assert all(p.poll() is None for p in procs), "a process ended before the signal"
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    errs = [p.communicate(timeout=300)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [75, 75], [e[-2000:] for e in errs]
  steps = [int(x) for x in os.listdir(d / "checkpoints") if x.isdigit()]
  logged = [m["step"] for m in read_metrics(d / "metrics.jsonl")]
  assert len(steps) == 1 and 3 <= steps[0] < 400 and logged[-1] == steps[0]
  assert logged == list(range(1, steps[0] + 1))
  for err in errs:
    assert f"Re-run the same command to resume from step {steps[0]}" in err
