"""Trainer: mesh equivalence, exact resume, microbatching, params-only restore, clear errors."""

import os
import re

import jax
import numpy as np
import pytest

from ul2flan import checkpoints, partitioning
from ul2flan import config as config_lib
from ul2flan.commands import main as cli
from ul2flan.training import steps, trainer
from ul2flan.training.checkpointer import Checkpointer
from ul2flan.training.metrics import read_metrics
from helpers import (MICRO_FLAGS, devices_env, lm_dataset, micro_config, quiet_train_config,
                     read_last_params, run_cli, train_in_process)

STEPS = 6


def _train(model_dir, mesh=None, devices=None, steps=STEPS, microbatches=1, ckpt=None, **kw):
  part = partitioning.Partitioner(mesh or {"data": -1}, devices=devices)
  return trainer.train(
      str(model_dir), train_dataset_cfg=lm_dataset(),
      train_cfg=quiet_train_config(steps, num_microbatches=microbatches),
      model_config=micro_config(), partitioner=part,
      checkpoint_cfg=ckpt or checkpoints.CheckpointConfig(save_period=1000, async_save=False),
      **kw)


def _losses(model_dir):
  return np.array([m["loss"] for m in read_metrics(os.path.join(model_dir, "metrics.jsonl"))])


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
  d = tmp_path_factory.mktemp("single")
  _train(d, devices=jax.devices()[:1])
  return d


@pytest.mark.parametrize("mesh", [{"data": 2, "model": 2}, {"fsdp": 2, "model": 2}])
def test_mesh_matches_single_device(tmp_path, single_device_run, mesh):
  _train(tmp_path, mesh=mesh)
  ref = _losses(single_device_run)
  got = _losses(tmp_path)
  assert len(ref) == STEPS and ref[-1] < ref[0]
  np.testing.assert_allclose(got, ref, rtol=2e-4)


def _quiet(stderr: str) -> None:
  """A CPU run's log: none of the lines libraries print on every run (ul2flan.logs drops them)."""
  noise = re.compile(r"cuInit|cudart_stub|absl::InitializeLog|cpu_feature_guard|read only|"
                     r"uncached FunctionDataset|Features not in `features_length`")
  assert not [line for line in stderr.splitlines() if noise.search(line)], stderr


def test_stop_and_resume_is_exact(tmp_path, single_device_run):
  """N steps (in this process), stop, then N more in a new process == 2N straight."""
  straight = tmp_path / "straight"
  _train(straight, devices=jax.devices()[:1], steps=2 * STEPS)
  resumed = tmp_path / "resumed"
  args = ["train", "--gin_file=gin_configs/runs/pretrain.gin", f"--model_dir={resumed}",
          *MICRO_FLAGS, "--gin.TASK_FEATURE_LENGTHS={'targets': 64}", "--gin.BATCH_SIZE=8",
          "--gin.MESH_SHAPE={'data': 1}", "--gin.EVAL_PERIOD=0", "--gin.TrainConfig.log_period=1",
          "--gin.make_schedule.warmup_steps=100", "--gin.TrainConfig.peak_flops_per_device=1e12"]
  first = train_in_process(args + [f"--gin.TRAIN_STEPS={STEPS}"])
  assert first.step == STEPS and read_last_params(resumed)[0] == STEPS
  r = run_cli(args + [f"--gin.TRAIN_STEPS={2 * STEPS}"], devices_env(1))
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from step 6" in r.stderr
  assert "restored the iterator state at batch 6 (no replay)" in r.stderr
  _quiet(r.stderr)
  np.testing.assert_allclose(_losses(resumed), _losses(straight), rtol=1e-5)
  (s1, p1), (s2, p2) = read_last_params(straight), read_last_params(resumed)
  assert s1 == s2 == 2 * STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p1, p2)


def test_microbatches_equal_one_big_batch(tmp_path, single_device_run):
  _train(tmp_path, devices=jax.devices()[:2], mesh={"data": 2}, microbatches=2)
  np.testing.assert_allclose(_losses(tmp_path), _losses(single_device_run), rtol=2e-4)


def test_params_only_restore_starts_fresh(tmp_path, single_device_run):
  src = tmp_path / "src"
  _train(src, devices=jax.devices()[:1], steps=3,
         ckpt=checkpoints.CheckpointConfig(save_period=1000, async_save=False))
  dst = tmp_path / "dst"
  part = partitioning.Partitioner({"data": 1}, devices=jax.devices()[:1])
  builder = steps.StepBuilder(micro_config(), part, *_tx(), steps.StepSettings())
  checkpointer = Checkpointer(str(dst), checkpoints.CheckpointConfig(
      initial_checkpoint_path=str(src)))
  state, data_state, how = checkpointer.restore_or_init(builder, 0)
  checkpointer.close()
  assert int(state.step) == 0 and data_state == {"batches_consumed": 0} and "fresh optimizer" in how
  _, src_params = read_last_params(src)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), src_params)
  fresh = builder.init_opt_state(state.params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state),
               jax.device_get(fresh))


def _tx():
  from ul2flan.training import optim
  sched = optim.make_schedule(kind="constant", base_learning_rate=1e-3, warmup_steps=0)
  return optim.make_optimizer(sched), sched


def test_checkpoint_of_another_shape_is_rejected_by_name(tmp_path, single_device_run):
  part = partitioning.Partitioner({"data": 1}, devices=jax.devices()[:1])
  bigger = micro_config(mlp_dim=256)
  builder = steps.StepBuilder(bigger, part, *_tx(), steps.StepSettings())
  with pytest.raises(checkpoints.CheckpointShapeError, match=r"mlp/wi_gate.*\(64, 128\).*\(64, 256\)"):
    checkpoints.restore_params(str(single_device_run), builder.abstract_params)
  # The checkpoint is untouched.
  assert checkpoints.resolve_step_dir(str(single_device_run))[1] == STEPS


def test_unfinished_save_is_not_a_checkpoint(tmp_path, single_device_run):
  """Orbax finalizes by rename; a leftover temporary step dir is never picked for restore."""
  import shutil
  d = tmp_path / "m"
  shutil.copytree(single_device_run, d)
  ckpt = d / "checkpoints"
  shutil.copytree(ckpt / str(STEPS), ckpt / f"{STEPS + 5}.orbax-checkpoint-tmp-123")
  mgr = checkpoints.make_manager(str(d), checkpoints.CheckpointConfig())
  assert mgr.latest_step() == STEPS
  assert checkpoints.resolve_step_dir(str(d))[1] == STEPS


def test_mesh_that_does_not_divide_devices():
  with pytest.raises(ValueError, match="does not divide the 4 available devices"):
    partitioning.Partitioner({"data": 3, "model": 1})
  with pytest.raises(ValueError, match="unknown axes"):
    partitioning.Partitioner({"tensor": 4})


def test_logical_rules_shard_params_and_activations():
  sizes = {"data": 2, "fsdp": 2, "model": 2}
  rules = partitioning.AXIS_RULES
  spec = partitioning.logical_to_spec
  assert spec(("embed", "mlp"), (64, 128), rules, sizes) == jax.sharding.PartitionSpec("fsdp", "model")
  # Activations: batch takes data+fsdp, so embed stays whole.
  assert spec(("batch", "length", "embed"), (8, 16, 64), rules, sizes) == \
      jax.sharding.PartitionSpec(("data", "fsdp"), None, None)
  # A dimension the mesh does not divide is replicated instead of failing (e.g. 1 MQA kv head).
  assert spec(("embed", "kv_heads", "kv"), (64, 1, 16), rules, sizes) == \
      jax.sharding.PartitionSpec("fsdp", None, None)


def _main(argv, capfd) -> tuple[int, str]:
  """`ul2flan ARGV` in this process (4 simulated devices): exit code and what stderr shows."""
  capfd.readouterr()
  try:
    code = cli.main(argv)
  except SystemExit as e:  # argparse
    code = e.code
  finally:
    config_lib.parse_gin([])
  return code, capfd.readouterr().err


def test_cli_errors_are_clear(tmp_path, capfd):
  base = ["train", "--gin_file=gin_configs/models/tiny.gin",
          "--gin_file=gin_configs/runs/pretrain.gin", f"--model_dir={tmp_path}"]
  code, err = _main(base + ["--gin.DecoderConfig.dmodel=3"], capfd)
  assert code == 2 and "bad gin binding" in err and "did you mean d_model?" in err
  code, err = _main(base + ["--gin.MIXTURE_OR_TASK_NAME='no_such_task'", "--gin.TRAIN_STEPS=1"],
                    capfd)
  assert code != 0 and "No seqio task or mixture named 'no_such_task'" in err
  assert jax.device_count() == 4
  code, err = _main(base + ["--gin.MESH_SHAPE={'data': 3}", "--gin.TRAIN_STEPS=1"], capfd)
  assert code != 0 and "does not divide the 4 available devices" in err
  code, err = _main(["train", "--gin_file=gin_configs/nope.gin", f"--model_dir={tmp_path}"], capfd)
  assert code != 0 and "not found" in err
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))  # nothing trained
