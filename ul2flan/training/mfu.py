"""Model FLOPs utilisation as PaLM defines it (appendix B), and the peak it is measured against.

Model FLOPs per token = 6 N + 12 L H Q T, with N the non-embedding parameter count and attention
counted in full (not halved for causality); rematerialisation is not counted (that would be HFU).
Peak FLOP/s: a datasheet table for accelerators, or, on CPU, a float32 matrix multiply measured in
the same process (so the ratio is taken against what this machine can actually do).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from ul2flan.model.config import DecoderConfig

# Dense bf16 peak FLOP/s per chip (vendor figures).
KNOWN_PEAK_FLOPS = {
    "h100": 989e12, "h200": 989e12, "a100": 312e12, "tpu v4": 275e12, "tpu v5p": 459e12,
    "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v6 lite": 918e12,
}


def model_flops_per_token(cfg: DecoderConfig, seq_len: int) -> float:
  n = cfg.num_params(include_embeddings=False)
  return 6.0 * n + 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len


def measure_matmul_peak(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of a square matmul on the default device (best of `repeats`)."""
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def peak_flops_per_device(measure_on_cpu: bool = True) -> tuple[float, str]:
  dev = jax.devices()[0]
  kind = dev.device_kind.lower()
  for key, flops in KNOWN_PEAK_FLOPS.items():
    if key in kind:
      return flops, f"{dev.device_kind} datasheet bf16 dense peak"
  if dev.platform == "cpu" and measure_on_cpu:
    # All CPU "devices" of a forced multi-device host share the same cores: measure once, for
    # the whole host, and split it evenly.
    peak = measure_matmul_peak()
    return peak / jax.local_device_count(), "float32 2048^3 matmul measured in this process"
  return float("nan"), f"unknown peak for {dev.device_kind}"
