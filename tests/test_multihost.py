"""Two processes on localhost (jax.distributed + gloo, 2 CPU devices each) match one process."""

import os
import socket
import subprocess
import sys

import numpy as np

from ul2flan.training.metrics import read_metrics
from helpers import REPO_ROOT, run_cli

MICRO_ARGS = [
    "--gin_file=gin_configs/runs/pretrain.gin", "--gin.DecoderConfig.d_model=64",
    "--gin.DecoderConfig.num_layers=2", "--gin.DecoderConfig.num_heads=4",
    "--gin.DecoderConfig.num_kv_heads=2", "--gin.DecoderConfig.head_dim=16",
    "--gin.DecoderConfig.mlp_dim=128", "--gin.TASK_FEATURE_LENGTHS={'targets': 64}",
    "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=0", "--gin.train.log_period=1", "--gin.TRAIN_STEPS=4",
    "--gin.train.peak_flops_per_device=1e12", "--gin.MESH_SHAPE={'data': 2, 'model': 2}",
    # The global batch is built from 2 seqio shards whether 1 or 2 processes read them.
    "--gin.train/DatasetConfig.num_data_shards=2",
]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(d):
  return np.array([m["loss"] for m in read_metrics(os.path.join(d, "metrics.jsonl"))])


def test_two_processes_match_single_process(tmp_path):
  single = tmp_path / "single"
  r = run_cli(["train", f"--model_dir={single}", *MICRO_ARGS],
              {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert r.returncode == 0, r.stderr[-3000:]

  multi = tmp_path / "multi"
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "ul2flan", "train", f"--model_dir={multi}", *MICRO_ARGS,
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
       "--cpu_collectives=gloo"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=300))
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  ref, got = _losses(single), _losses(multi)
  assert len(ref) == 4
  np.testing.assert_allclose(got, ref, rtol=2e-4)
  assert os.path.isdir(multi / "checkpoints" / "4" / "params")
