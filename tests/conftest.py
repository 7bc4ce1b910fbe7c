"""Test setup: a simulated 4-device CPU host, set before JAX is imported anywhere."""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory):
  """A micro causal LM trained one step by the real trainer (config.gin, run.json, checkpoint)."""
  from helpers import train_micro_model  # pylint: disable=g-import-not-at-top
  return train_micro_model(str(tmp_path_factory.mktemp("micro_ckpt")))
