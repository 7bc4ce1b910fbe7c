"""Model FLOPs utilisation as PaLM defines it (appendix B), and the peak it is measured against.

Model FLOPs per token = 6 N + 12 L H Q T, with N the non-embedding parameter count and attention
counted in full (not halved for causality); rematerialisation is not counted (that would be HFU).
Peak FLOP/s: the dense bf16 datasheet figure for accelerators (`PEAK_FLOPS_TABLE`, with sources),
or, on CPU, a float32 matrix multiply measured in the same process (so the ratio is taken against
what this machine can actually do).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from ul2flan.model.config import DecoderConfig

# Dense bf16 peak FLOP/s per chip: (device_kind match, FLOP/s, source). NVIDIA's datasheets print
# tensor-core figures "with sparsity", twice the dense rate; the dense half is what a transformer
# step can use. NVIDIA kinds match by substring, most specific first ("NVIDIA H100 80GB HBM3" is
# the SXM part); TPU kinds (as jax reports them: v5e is "TPU v5 lite", v5p is "TPU v5", v6e is
# "TPU v6 lite") match exactly, so "TPU v4 lite" (v4i) is not taken for a v4.
PEAK_FLOPS_TABLE = (
    ("h100 pcie", 756e12, "NVIDIA H100 datasheet, PCIe: BF16 1,513 TFLOPS with sparsity"),
    ("h100 nvl", 835e12, "NVIDIA H100 datasheet, NVL: BF16 1,671 TFLOPS with sparsity"),
    ("h100", 989e12, "NVIDIA H100 datasheet, SXM: BF16 1,979 TFLOPS with sparsity"),
    ("h200 nvl", 835e12, "NVIDIA H200 datasheet, NVL: BF16 1,671 TFLOPS with sparsity"),
    ("h200", 989e12, "NVIDIA H200 datasheet, SXM: BF16 1,979 TFLOPS with sparsity"),
    ("a100", 312e12, "NVIDIA A100 datasheet (SXM and PCIe): BF16 312 TFLOPS dense"),
    ("tpu v4", 275e12, "Cloud TPU v4 docs: 275 TFLOPS bf16 per chip"),
    ("tpu v5 lite", 197e12, "Cloud TPU v5e docs: 197 TFLOPS bf16 per chip"),
    ("tpu v5e", 197e12, "Cloud TPU v5e docs: 197 TFLOPS bf16 per chip"),
    ("tpu v5", 459e12, "Cloud TPU v5p docs: 459 TFLOPS bf16 per chip"),
    ("tpu v5p", 459e12, "Cloud TPU v5p docs: 459 TFLOPS bf16 per chip"),
    ("tpu v6 lite", 918e12, "Cloud TPU v6e (Trillium) docs: 918 TFLOPS bf16 per chip"),
    ("tpu v6e", 918e12, "Cloud TPU v6e (Trillium) docs: 918 TFLOPS bf16 per chip"),
)


def datasheet_peak(device_kind: str) -> tuple[float, str] | None:
  """(dense bf16 FLOP/s, source) for a jax `device_kind`, or None for one not in the table."""
  kind = device_kind.lower().strip()
  for match, flops, source in PEAK_FLOPS_TABLE:
    if (kind == match) if match.startswith("tpu") else (match in kind):
      return flops, f"{device_kind}: {source}"
  return None


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


# Once per process: the pipeline trains its stages in one process, and each measurement costs
# seconds on a CPU host (and would give each stage's MFU a different denominator).
@functools.cache
def peak_flops_per_device(measure_on_cpu: bool = True) -> tuple[float, str]:
  dev = jax.devices()[0]
  known = datasheet_peak(dev.device_kind)
  if known is not None:
    return known
  if dev.platform == "cpu" and measure_on_cpu:
    # All CPU "devices" of a forced multi-device host share the same cores: measure once, for
    # the whole host, and split it evenly.
    peak = measure_matmul_peak()
    return peak / jax.local_device_count(), "float32 2048^3 matmul measured in this process"
  return float("nan"), f"unknown peak for {dev.device_kind}"
