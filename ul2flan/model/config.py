"""Architecture hyperparameters of the decoder (`DecoderConfig`), bound by gin_configs/models/."""

from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp

from ul2flan.checks import check_int, check_number

MLP_ACTIVATIONS = ("silu", "gelu_tanh", "gelu")
ROPE_SCALINGS = ("none", "linear", "llama3")
# How attention is computed (`DecoderConfig.attention_impl`); `model/attention.py` resolves "auto".
#   "xla":    heads-major einsums + an additive mask bias (the fastest on XLA:CPU; any backend).
#   "cudnn":  jax.nn.dot_product_attention's cuDNN flash kernel (NVIDIA GPUs, bfloat16 / float16).
#   "jax_nn": jax.nn.dot_product_attention's XLA implementation, given exactly the arguments cuDNN
#             gets (causal flag, boolean mask, window); a portable check of the fused path.
#   "auto":   "cudnn" where it applies (NVIDIA GPU, 16-bit compute, no soft-cap, head_dim the
#             kernel takes, no KV cache), "xla" everywhere else.
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "jax_nn")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")

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
  # Activations / compute. "auto": bfloat16 on GPU and TPU, float32 on CPU. Parameters, optimizer
  # state, softmax, norms and the loss are float32 whatever this says.
  dtype: str = "auto"
  scan_layers: bool = False
  remat_policy: str = "none"  # "none", "full", "dots" or "dots_with_no_batch_dims".
  norm_epsilon: float = 1e-6
  # Options for the Hugging Face families (ul2flan/hf/families.py); the defaults are PaLM's.
  mlp_activation: str = "silu"  # "silu" (SwiGLU), "gelu_tanh" (GeGLU, Gemma) or "gelu".
  attention_qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2).
  attention_out_bias: bool = False  # a bias on the output projection.
  qk_norm: bool = False  # RMSNorm over head_dim on queries and keys before RoPE (Qwen3).
  norm_unit_offset: bool = False  # norms scale by (1 + w), w initialised at 0 (Gemma).
  post_norms: bool = False  # norms on the attention and MLP outputs too (Gemma 2).
  scale_embeddings: bool = False  # input embeddings times sqrt(d_model) (Gemma).
  scale_tied_logits: bool = True  # PaLM: tied output logits times d_model ** -0.5.
  final_logit_soft_cap: float | None = None  # logits = cap * tanh(logits / cap) (Gemma 2).
  rope_scaling: str = "none"  # "none", "linear" or "llama3" (Llama 3.1's frequency bands).
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0  # llama3 only
  rope_high_freq_factor: float = 4.0  # llama3 only
  rope_original_max_position: int = 8192  # llama3 only: the pre-training context length
  attention_impl: str = "auto"  # see ATTENTION_IMPLS
  # Sliding-window attention (Mistral, Gemma 2): a query sees keys less than `sliding_window`
  # positions away. `sliding_window_pattern` N (Hugging Face's Gemma convention): layer i is
  # global when (i + 1) % N == 0 and slides otherwise (Gemma 2: 2); None: every layer slides.
  sliding_window: int | None = None
  sliding_window_pattern: int | None = None
  attn_logits_soft_cap: float | None = None  # Gemma 2: logits = cap * tanh(logits / cap)
  query_scale: float | None = None  # scores use q * query_scale**-0.5 (None: head_dim**-0.5)

  def __post_init__(self):
    for field in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                  "mlp_dim"):
      check_int(getattr(self, field), f"DecoderConfig.{field}")
    check_number(self.dropout_rate, "DecoderConfig.dropout_rate (DROPOUT_RATE)", 0.0, 1.0)
    check_number(self.norm_epsilon, "DecoderConfig.norm_epsilon", 0.0)
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
    if self.mlp_activation not in MLP_ACTIVATIONS:
      raise ValueError(f"mlp_activation must be one of {MLP_ACTIVATIONS}, "
                       f"got {self.mlp_activation!r}")
    if self.rope_scaling not in ROPE_SCALINGS:
      raise ValueError(f"rope_scaling must be one of {ROPE_SCALINGS}, got {self.rope_scaling!r}")
    if self.rope_scaling != "none" and self.rope_scaling_factor <= 0:
      raise ValueError(f"rope_scaling_factor must be > 0, got {self.rope_scaling_factor}")
    if self.rope_scaling == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
      raise ValueError("llama3 RoPE scaling needs rope_high_freq_factor > rope_low_freq_factor")
    if self.post_norms and self.parallel_block:
      raise ValueError("post_norms (Gemma 2) needs parallel_block = False")
    if self.final_logit_soft_cap is not None and self.final_logit_soft_cap <= 0:
      raise ValueError(f"final_logit_soft_cap must be > 0 or None, "
                       f"got {self.final_logit_soft_cap}")
    if self.dtype not in COMPUTE_DTYPES:
      raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {self.dtype!r}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, "
                       f"got {self.attention_impl!r}")
    self._check_attention_options()

  def _check_attention_options(self):
    window, pattern = self.sliding_window, self.sliding_window_pattern
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < 1):
      raise ValueError(f"sliding_window must be a positive int (or None), got {window!r}")
    if pattern is not None:
      if window is None:
        raise ValueError("sliding_window_pattern needs sliding_window to be set")
      if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 2:
        raise ValueError(f"sliding_window_pattern must be an int >= 2 (every Nth layer global; "
                         f"None: every layer slides), got {pattern!r}")
    for name in ("attn_logits_soft_cap", "query_scale"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0 (or None), got {value!r}")

  @property
  def compute_dtype(self):
    if self.dtype == "auto":
      return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
    return jnp.dtype(self.dtype)

  @property
  def window_layers(self) -> tuple[bool, ...]:
    """Per layer: does it use the sliding window?"""
    if self.sliding_window is None:
      return (False,) * self.num_layers
    if self.sliding_window_pattern is None:
      return (True,) * self.num_layers
    return tuple((i + 1) % self.sliding_window_pattern != 0 for i in range(self.num_layers))

  @property
  def window_varies_by_layer(self) -> bool:
    """Some layers slide and some do not (then, with scan_layers, the choice is a scanned input)."""
    return len(set(self.window_layers)) > 1

  def num_params(self, include_embeddings: bool = True) -> int:
    """Analytic parameter count (used for MFU and checked against the built model in tests)."""
    attn = self.d_model * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    if self.attention_qkv_bias:
      attn += self.head_dim * (self.num_heads + 2 * self.num_kv_heads)
    if self.attention_out_bias:
      attn += self.d_model
    if self.qk_norm:
      attn += 2 * self.head_dim
    mlp = 3 * self.d_model * self.mlp_dim
    norms = self.d_model * (1 if self.parallel_block else 2) * (2 if self.post_norms else 1)
    per_layer = attn + mlp + norms
    total = self.num_layers * per_layer + self.d_model  # + final norm
    if include_embeddings:
      total += self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
    return total
