"""Schedules against their closed forms; MFU against PaLM's formula on PaLM's published models."""

import math
import os

import gin
import jax
import numpy as np
import pytest

from ul2flan.model.config import DecoderConfig
from ul2flan.training import metrics, mfu, optim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rsqrt_schedule_is_palm_style():
  s = optim.make_schedule(kind="rsqrt", base_learning_rate=1e-2, warmup_steps=100)
  assert float(s(0)) == pytest.approx(1e-2)
  assert float(s(99)) == pytest.approx(1e-2)
  assert float(s(399)) == pytest.approx(1e-2 * math.sqrt(100 / 400))


def test_cosine_schedule_endpoints():
  s = optim.make_schedule(kind="cosine", base_learning_rate=1e-4, end_learning_rate=1e-6,
                          warmup_steps=0, total_steps=1000)
  assert float(s(0)) == pytest.approx(1e-4)
  assert float(s(500)) == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5, rel=1e-4)
  assert float(s(1000)) == pytest.approx(1e-6, rel=1e-4)


def test_constant_schedule():
  s = optim.make_schedule(kind="constant", base_learning_rate=3e-3, warmup_steps=0)
  assert [float(s(i)) for i in (0, 10, 10_000)] == [pytest.approx(3e-3)] * 3


def test_unknown_names_are_rejected():
  with pytest.raises(ValueError, match="unknown schedule"):
    optim.make_schedule(kind="linear")
  with pytest.raises(ValueError, match="unknown optimizer"):
    optim.make_optimizer(optim.make_schedule(kind="constant", warmup_steps=0), name="sgd")


def test_adafactor_unfactored_matches_hand_update():
  """PaLM-style Adafactor step on one matrix, written out by hand (first step, no clipping hit)."""
  import jax.numpy as jnp
  tx = optim.make_optimizer(optim.make_schedule(kind="constant", base_learning_rate=0.1,
                                                warmup_steps=0), momentum=None,
                            clipping_threshold=None, multiply_by_parameter_scale=False)
  p = {"w": jnp.ones((3, 4)) * 2.0}
  g = {"w": jnp.arange(12.0).reshape(3, 4) / 10}
  upd, _ = tx.update(g, tx.init(p), p)
  # Step 1: decay = 1 - 1^-0.8 = 0, so v = g^2 + eps and the update is -lr * g / sqrt(g^2 + eps).
  gg = np.asarray(g["w"])
  expected = -0.1 * gg / np.sqrt(gg ** 2 + 1e-30)
  np.testing.assert_allclose(np.asarray(upd["w"]), expected, rtol=1e-5, atol=1e-6)


# PaLM (Chowdhery et al. 2022): Table 1's published totals (billions, embeddings included) and
# architectures (layers, heads, head dim, d_model), with the 256k vocabulary.
PALM_PUBLISHED = {"palm_8b": (8.63, 32, 16, 256, 4096), "palm_62b": (62.50, 64, 32, 256, 8192),
                  "palm_540b": (540.35, 118, 48, 256, 18432)}


def test_the_cpu_matmul_peak_is_measured_once_per_process(monkeypatch):
  """Every stage of a pipeline runs in one process: one measurement (seconds on a CPU host), one
  MFU denominator for all of them."""
  calls = []
  monkeypatch.setattr(mfu, "measure_matmul_peak", lambda: calls.append(1) or 8e10)
  mfu.peak_flops_per_device.cache_clear()
  try:
    first, second = mfu.peak_flops_per_device(), mfu.peak_flops_per_device()
  finally:
    mfu.peak_flops_per_device.cache_clear()  # later tests measure for real
  assert first == second == (8e10 / jax.local_device_count(),
                             "float32 2048^3 matmul measured in this process")
  assert len(calls) == 1

@pytest.mark.parametrize("name", sorted(PALM_PUBLISHED))
def test_mfu_flops_per_token_is_palm_formula_on_published_models(name):
  """6N + 12 L H Q T (PaLM appendix B), N = published total minus the 256k x d embedding."""
  total_b, layers, heads, head_dim, d_model = PALM_PUBLISHED[name]
  gin.clear_config()
  gin.parse_config_file(os.path.join(REPO, "gin_configs", "models", f"{name}.gin"))
  cfg = DecoderConfig()
  gin.clear_config()
  n = total_b * 1e9 - 256_000 * d_model
  expected = 6 * n + 12 * layers * heads * head_dim * 2048
  # Table 1 prints the totals to two decimals (and 540B to ~1e-4): that bounds the agreement.
  tolerance_b = max(0.005, 1e-4 * total_b)
  assert mfu.model_flops_per_token(cfg, 2048) == pytest.approx(expected, abs=6 * tolerance_b * 1e9)


def test_metrics_writer_writes_jsonl_and_events_tensorboard_reads(tmp_path):
  """The jsonl rows, and the same scalars in event files read back by TensorFlow's own reader
  (what TensorBoard runs on), two writers in one second included (a resumed run's)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for step, loss in ((5, 1.5), (6, 1.25)):
    w = metrics.create_writer(str(tmp_path), resume_step=step - 1)
    w.write_scalars(step, {"loss": loss, "tokens_per_second": 10.0, "mfu": 0.1})
    w.close()
  rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert rows == [{"step": 5, "loss": 1.5, "tokens_per_second": 10.0, "mfu": 0.1},
                  {"step": 6, "loss": 1.25, "tokens_per_second": 10.0, "mfu": 0.1}]
  files = sorted((tmp_path / "tensorboard" / "train").iterdir())
  assert len(files) == 2 and all(f.name.startswith("events.out.tfevents.") for f in files)
  scalars = {}
  for path in files:
    events = list(tf.compat.v1.train.summary_iterator(str(path)))
    assert events[0].file_version == "brain.Event:2"
    for event in events[1:]:
      for value in event.summary.value:
        scalars[(event.step, value.tag)] = value.simple_value
  assert scalars == {(r["step"], k): pytest.approx(v) for r in rows for k, v in r.items()
                     if k != "step"}
