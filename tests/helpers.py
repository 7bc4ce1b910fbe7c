"""Small shared builders for trainer tests (a micro model so each run takes seconds)."""

import os
import re
import shutil
import subprocess
import sys

import ul2flan_tasks  # noqa: F401  (registers demo_lm)
from ul2flan import checkpoints, partitioning
from ul2flan.model.config import DecoderConfig
from ul2flan.training import data
from ul2flan.training.settings import TrainConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MICRO = dict(vocab_size=768, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
             mlp_dim=128)


def micro_config(**overrides) -> DecoderConfig:
  return DecoderConfig(**{**MICRO, **overrides})


def quiet_train_config(total_steps: int, **overrides) -> TrainConfig:
  """A TrainConfig for tests: metrics every step, no progress bar, a fixed MFU peak."""
  return TrainConfig(**{"total_steps": total_steps, "log_period": 1, "progress": False,
                        "peak_flops_per_device": 1e12, **overrides})


def lm_dataset(batch_size=8, length=64, **kw) -> data.DatasetConfig:
  return data.DatasetConfig(mixture_or_task_name="demo_lm", task_feature_lengths={"targets": length},
                            batch_size=batch_size, **kw)


def devices_env(count: int) -> dict[str, str]:
  """Environment for a subprocess that sees `count` CPU devices, with the suite's other XLA
  flags (tests/conftest.py) kept."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", "")).split()
  return {"XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])}


# The sample benchmark files beside the repository (../shared/data/eval; layout: docs/evaluation.md).
SHARED_EVAL_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "eval")


def copy_bbh_subtasks(data_dir: str, tasks) -> str:
  """A benchmarks dir holding only these BBH subtasks of the shared sample (items and CoT
  prompts): evaluations in tests stay small. Returns `data_dir`."""
  for sub, ext in (("bbh", "json"), ("cot-prompts", "txt")):
    os.makedirs(os.path.join(data_dir, "bbh", sub))
    for task in tasks:
      shutil.copy(os.path.join(SHARED_EVAL_DATA, "bbh", sub, f"{task}.{ext}"),
                  os.path.join(data_dir, "bbh", sub))
  return data_dir


def run_cli(args, env_extra=None, timeout=300):
  env = dict(os.environ)
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "ul2flan", *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


MICRO_BINDINGS = [f"DecoderConfig.{k}={v}" for k, v in MICRO.items()]
MICRO_FLAGS = [f"--gin.{b}" for b in MICRO_BINDINGS]  # the micro model on a command line


def train_micro_model(model_dir: str, *extra_bindings: str) -> str:
  """Trains the micro model one step through gin, exactly as `ul2flan train` would."""
  from ul2flan import config  # pylint: disable=g-import-not-at-top
  from ul2flan.commands import configurables  # noqa: F401  pylint: disable=g-import-not-at-top
  from ul2flan.training import trainer  # pylint: disable=g-import-not-at-top
  config.parse_gin(["gin_configs/runs/pretrain.gin"], MICRO_BINDINGS + [
      "TASK_FEATURE_LENGTHS={'targets': 32}", "BATCH_SIZE=4", "TRAIN_STEPS=1", "EVAL_PERIOD=0",
      "TrainConfig.progress=False", "CheckpointConfig.async_save=False",
      "train/DatasetConfig.shuffle=False", "make_optimizer.name='adamw'", *extra_bindings])
  trainer.train(model_dir)
  config.parse_gin([])
  return model_dir


def train_in_process(argv: list[str], num_devices: int = 1):
  """`ul2flan train ARGV` run in this process on its first `num_devices` devices: a reference for
  a `ul2flan train` process started with `devices_env(num_devices)`, without the seconds a process
  spends importing. Compare to float32 rounding, not bit for bit: over 16 steps the params of such
  a run and of a one-device process differed by up to 5e-7."""
  import jax  # pylint: disable=g-import-not-at-top
  from ul2flan import config  # pylint: disable=g-import-not-at-top
  from ul2flan.commands import configurables  # noqa: F401  pylint: disable=g-import-not-at-top
  from ul2flan.training import trainer  # pylint: disable=g-import-not-at-top
  assert argv[0] == "train", argv
  bindings, rest = config.split_gin_args(argv[1:])
  flags = dict(arg[2:].split("=", 1) for arg in rest if arg.startswith("--model_dir="))
  gin_files = [arg.split("=", 1)[1] for arg in rest if arg.startswith("--gin_file=")]
  assert len(gin_files) + len(flags) == len(rest), rest
  # Unbound, so that gin does not build the run's own partitioner (MESH_SHAPE over every device)
  # before the argument below replaces it.
  config.parse_gin(gin_files, [*bindings, "train.partitioner = None"], command="train")
  try:
    return trainer.train(flags["model_dir"], partitioner=partitioning.Partitioner(
        {"data": num_devices}, devices=jax.devices()[:num_devices]))
  finally:
    config.parse_gin([])


def read_last_params(model_dir) -> tuple[int, dict]:
  """(the newest step, its params) of a model dir, read with orbax directly."""
  _, step = checkpoints.resolve_step_dir(str(model_dir))
  return step, read_params(os.path.join(str(model_dir), "checkpoints", str(step)))


def read_params(step_dir) -> dict:
  """The params saved in one checkpoint step dir, read with orbax directly (no ul2flan code)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(str(step_dir), "params"))
