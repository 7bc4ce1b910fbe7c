"""Architecture hyperparameters of the decoder (`DecoderConfig`), bound by gin_configs/models/."""

from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp

from ul2flan.checks import check_choice, check_int, check_number

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture hyperparameters. Gin files in gin_configs/models/ bind these."""
  vocab_size: int = 768
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 1  # 1: multi-query (PaLM); == num_heads: multi-head; else grouped-query.
  head_dim: int = 64
  mlp_dim: int = 1024
  parallel_block: bool = True  # PaLM: y = x + attn(norm(x)) + mlp(norm(x)).
  norm_type: str = "layernorm"  # "layernorm" (PaLM, no bias) or "rmsnorm" (Llama).
  tie_embeddings: bool = True
  rope_max_wavelength: float = 10_000.0
  dropout_rate: float = 0.0
  dtype: str = "float32"  # activations/compute; parameters are always float32.
  scan_layers: bool = False
  remat_policy: str = "none"  # "none", "full", "dots" or "dots_with_no_batch_dims".
  norm_epsilon: float = 1e-6

  def __post_init__(self):
    for field in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                  "mlp_dim"):
      check_int(getattr(self, field), f"DecoderConfig.{field}")
    check_number(self.dropout_rate, "DecoderConfig.dropout_rate (DROPOUT_RATE)", 0.0, 1.0)
    check_number(self.norm_epsilon, "DecoderConfig.norm_epsilon", 0.0)
    check_choice(self.dtype, ("float32", "bfloat16", "float16"), "DecoderConfig.dtype")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.norm_type not in ("layernorm", "rmsnorm"):
      raise ValueError(f"norm_type must be 'layernorm' or 'rmsnorm', got {self.norm_type!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {sorted(REMAT_POLICIES)}, "
                       f"got {self.remat_policy!r}")
    if self.head_dim % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def num_params(self, include_embeddings: bool = True) -> int:
    """Analytic parameter count (used for MFU and checked against the built model in tests)."""
    attn = self.d_model * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * self.d_model * self.mlp_dim
    norms = self.d_model * (1 if self.parallel_block else 2)
    per_layer = attn + mlp + norms
    total = self.num_layers * per_layer + self.d_model  # + final norm
    if include_embeddings:
      total += self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
    return total
