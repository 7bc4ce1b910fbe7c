"""What changes on accelerators: the "auto" compute dtype, mixed precision that tracks float32,
and the datasheet peaks in the MFU denominator."""

import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ul2flan import partitioning
from ul2flan.model import attention
from ul2flan.model.config import DecoderConfig
from ul2flan.training import mfu, optim, steps
from helpers import micro_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- dtype "auto" -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,expected", [("cpu", jnp.float32), ("gpu", jnp.bfloat16),
                                              ("tpu", jnp.bfloat16)])
def test_auto_dtype_follows_the_backend(monkeypatch, backend, expected):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  assert micro_config(dtype="auto").compute_dtype == expected
  assert micro_config(dtype="float32").compute_dtype == jnp.float32


@pytest.mark.parametrize("name", ["palm_1b", "palm_8b", "palm_62b", "palm_540b"])
def test_accelerator_model_configs_run_bf16_activations_there(monkeypatch, name):
  gin.clear_config()
  gin.parse_config_file(os.path.join(REPO, "gin_configs", "models", f"{name}.gin"))
  cfg = DecoderConfig()
  gin.clear_config()
  assert cfg.dtype == "auto" and cfg.attention_impl == "auto"
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert cfg.compute_dtype == jnp.bfloat16
  assert attention.resolve_impl(cfg, cached=False) == "xla"  # no cuDNN on a TPU


# ---- bf16 tracks float32 ------------------------------------------------------------------------
def _batches(steps, batch=16, length=32, seed=0):
  """Arithmetic progressions mod 61 with a per-row start and stride: learnable from context."""
  rng = np.random.RandomState(seed)
  for _ in range(steps):
    start = rng.randint(0, 61, size=(batch, 1))
    stride = rng.randint(1, 4, size=(batch, 1))
    tokens = ((start + stride * np.arange(length)) % 61 + 3).astype(np.int32)
    yield {"decoder_target_tokens": tokens,
           "decoder_input_tokens": np.concatenate([np.zeros((batch, 1), np.int32),
                                                   tokens[:, :-1]], 1),
           "decoder_loss_weights": np.ones((batch, length), np.int32)}


def _train(dtype, steps_count):
  """`steps_count` train steps of the real step function, scanned in one jitted call."""
  cfg = micro_config(dtype=dtype)
  part = partitioning.Partitioner({"data": -1})
  sched = optim.make_schedule(kind="constant", base_learning_rate=3e-3, warmup_steps=0)
  tx = optim.make_optimizer(sched, name="adamw")
  builder = steps.StepBuilder(cfg, part, tx, sched, steps.StepSettings())
  params = jax.device_put(builder.init_params(0), jax.devices()[0])  # same float32 init (seed)
  state = builder.make_state(0, params, builder.tx.init(params))
  batches = list(_batches(steps_count))
  stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
  run = jax.jit(lambda state, stacked: jax.lax.scan(builder.train_step, state, stacked))
  state, metrics = run(jax.device_put(state, jax.devices()[0]), stacked)
  return np.asarray(metrics["loss"]), state, builder, batches[0]


STEPS = 300
# Each 50-step window's mean loss of the bf16 run is within 1% of the float32 run's (measured on
# CPU: at most 0.1%, first window 2.918 -> last 0.197). bf16 keeps 8 significand bits, a relative
# rounding of 2^-9 per activation, so single-step losses differ around 1e-4 relative and the
# trajectories drift apart only slowly: parameters, the optimizer state, softmax, norms and the
# loss stay float32. 1% is ten times the measured gap: room for other CPUs' XLA and for bf16
# rounding differences, tight enough that the curves must coincide by eye.
TOLERANCE = 0.01


def test_bf16_run_tracks_float32_loss():
  loss32, state32, _, _ = _train("float32", STEPS)
  loss16, state16, builder16, batch = _train("bfloat16", STEPS)
  assert loss32[-50:].mean() < 0.5 * loss32[:10].mean(), "the task must be learnt to mean anything"
  windows32, windows16 = loss32.reshape(-1, 50).mean(1), loss16.reshape(-1, 50).mean(1)
  rel = np.abs(windows16 - windows32) / windows32
  message = f"float32 {np.round(windows32, 4)} bf16 {np.round(windows16, 4)} rel {np.round(rel, 4)}"
  assert rel.max() < TOLERANCE, message
  assert not np.array_equal(loss16, loss32), "the bf16 run must differ from float32 at all"
  # Mixed precision, not bf16 everywhere: float32 parameters, optimizer state and loss ...
  for leaf in jax.tree.leaves((state16.params, state16.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  assert loss16.dtype == np.float32
  # ... and the activations' matmuls really are bf16.
  jaxpr = str(jax.make_jaxpr(lambda p: builder16.model.apply(
      {"params": p}, batch["decoder_input_tokens"]))(state16.params))
  assert "bf16[16,32,4,16]" in jaxpr or "bf16[16,4,32,16]" in jaxpr
  assert "f32[16,32,768]" in jaxpr  # float32 logits


# ---- the MFU denominator ------------------------------------------------------------------------
# Published dense bf16 peaks (NVIDIA datasheets halve their "with sparsity" figures; Cloud TPU docs
# per chip), keyed by the device_kind jax reports.
PUBLISHED_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989, "NVIDIA H100 PCIe": 756, "NVIDIA H200": 989,
    "NVIDIA A100-SXM4-80GB": 312, "NVIDIA A100-PCIE-40GB": 312, "TPU v4": 275,
    "TPU v5 lite": 197, "TPU v5": 459, "TPU v6 lite": 918,
}


@pytest.mark.parametrize("kind", sorted(PUBLISHED_TFLOPS))
def test_datasheet_peaks(kind):
  flops, source = mfu.datasheet_peak(kind)
  assert flops == pytest.approx(PUBLISHED_TFLOPS[kind] * 1e12, rel=2e-3)
  assert kind in source and ("datasheet" in source or "docs" in source)


def test_unknown_devices_have_no_datasheet_peak():
  for kind in ("TPU v4 lite", "cpu", "Tesla T4", "AMD Instinct MI300X"):
    assert mfu.datasheet_peak(kind) is None
