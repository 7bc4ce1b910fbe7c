"""Hugging Face `config.json` <-> `DecoderConfig`, for each supported `model_type`.

`decoder_fields(hf_config)` reads a config the way transformers does (both the older `rope_theta` /
`rope_scaling` keys and the newer `rope_parameters`, the family's defaults for omitted keys) and
returns the `DecoderConfig` architecture fields. Anything the decoder cannot reproduce exactly (an
unknown model_type, a RoPE variant, an MLP bias, ...) is an `UnsupportedModelError` that names it:
never a silently different model.

`hf_config(decoder_config, template)` is the inverse, for export; it checks itself by reading its
own output back, so a model that no family expresses is refused with the fields that differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ul2flan.model.config import DecoderConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2")
# The DecoderConfig fields a Hugging Face config determines (the rest are run settings).
RUN_SETTINGS = ("dropout_rate", "dtype", "scan_layers", "remat_policy")


class UnsupportedModelError(ValueError):
  """A Hugging Face model (or feature) the decoder does not implement."""


@dataclasses.dataclass(frozen=True)
class Family:
  model_type: str
  architecture: str  # the transformers class config.json's `architectures` names
  tie_default: bool  # transformers' default for tie_word_embeddings
  qkv_bias: str  # "always" (Qwen2), "config" (attention_bias adds q/k/v and o biases), "never"
  qk_norm: bool = False
  gemma: bool = False  # GeGLU, (1 + w) norms, post-norms, embedding scale, soft-caps
  sliding_window: str = "none"  # "global" (Mistral: every layer), "layer_types", or "none"
  activation_key: str = "hidden_act"


FAMILIES = {f.model_type: f for f in (
    Family("llama", "LlamaForCausalLM", tie_default=False, qkv_bias="config"),
    Family("mistral", "MistralForCausalLM", tie_default=False, qkv_bias="never",
           sliding_window="global"),
    Family("qwen2", "Qwen2ForCausalLM", tie_default=False, qkv_bias="always",
           sliding_window="layer_types"),
    Family("qwen3", "Qwen3ForCausalLM", tie_default=False, qkv_bias="config", qk_norm=True,
           sliding_window="layer_types"),
    Family("gemma2", "Gemma2ForCausalLM", tie_default=True, qkv_bias="config", gemma=True,
           sliding_window="layer_types", activation_key="hidden_activation"),
)}

ACTIVATIONS_FROM_HF = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                       "gelu_new": "gelu_tanh", "gelu": "gelu"}
ACTIVATIONS_TO_HF = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}
ROPE_TYPES = ("default", "linear", "llama3")


def family(model_type: Any, where: str) -> Family:
  if model_type not in FAMILIES:
    raise UnsupportedModelError(
        f"{where}: model_type {model_type!r} is not supported; ul2flan imports "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}")
  return FAMILIES[model_type]


class _Reader:
  """Reads keys of one config.json, with errors that name the file and the key."""

  def __init__(self, hf: Mapping[str, Any], where: str):
    self.hf, self.where = hf, where

  def required(self, key: str):
    value = self.hf.get(key)
    if value is None:
      raise ValueError(f"{self.where} has no {key!r}; it is required to build the model")
    return value

  def get(self, key: str, default=None):
    value = self.hf.get(key)
    return default if value is None else value

  def unsupported(self, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{self.where}: {what} is not supported by the ul2flan decoder (model_type "
        f"{self.hf.get('model_type')!r}); importing it would give a different model")


def _rope_fields(r: _Reader) -> dict[str, Any]:
  params = r.get("rope_parameters") or r.get("rope_scaling") or {}
  if params and all(isinstance(v, Mapping) for v in params.values()):  # per layer type
    distinct = {tuple(sorted(v.items())) for v in params.values() if v}
    if len(distinct) > 1:
      raise r.unsupported(f"a different RoPE per layer type ({dict(params)})")
    params = dict(next(iter(params.values())))
  kind = params.get("rope_type", params.get("type", "default"))
  theta = params.get("rope_theta", r.get("rope_theta", 10_000.0))
  partial = params.get("partial_rotary_factor", r.get("partial_rotary_factor", 1.0))
  if partial != 1.0:
    raise r.unsupported(f"partial_rotary_factor={partial}")
  if kind not in ROPE_TYPES:
    raise r.unsupported(f"RoPE type {kind!r} (supported: {', '.join(ROPE_TYPES)})")
  fields: dict[str, Any] = {"rope_max_wavelength": float(theta)}
  if kind == "default":
    return fields
  fields.update(rope_scaling=kind, rope_scaling_factor=float(params["factor"]))
  if kind == "llama3":
    fields.update(
        rope_low_freq_factor=float(params["low_freq_factor"]),
        rope_high_freq_factor=float(params["high_freq_factor"]),
        rope_original_max_position=int(params.get("original_max_position_embeddings")
                                       or r.required("max_position_embeddings")))
  return fields


def _sliding_layers(r: _Reader, fam: Family, num_layers: int) -> tuple[int | None, tuple[bool, ...]]:
  """(window, which layers use it) as transformers builds them; (None, ()) for none."""
  if fam.sliding_window == "none":
    return None, ()
  window = r.get("sliding_window")
  if fam.sliding_window == "global":
    return (window, (True,) * num_layers) if window else (None, ())
  if fam.model_type in ("qwen2", "qwen3") and not r.get("use_sliding_window", False):
    window = None
  types = r.get("layer_types")
  if types is None:
    if fam.gemma:  # Gemma 2 alternates, starting with a sliding layer
      types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    else:  # Qwen: layers from max_window_layers on slide
      start = r.get("max_window_layers", num_layers)
      types = ["sliding_attention" if window and i >= start else "full_attention"
               for i in range(num_layers)]
  if len(types) != num_layers or set(types) - {"sliding_attention", "full_attention"}:
    raise r.unsupported(f"layer_types={types}")
  pattern = tuple(t == "sliding_attention" for t in types)
  if not window or not any(pattern):
    return None, ()
  return int(window), pattern


def _window_pattern(pattern: tuple[bool, ...], r: _Reader) -> int | None:
  """DecoderConfig.sliding_window_pattern for a per-layer pattern (None: every layer slides)."""
  if all(pattern):
    return None
  for n in range(2, len(pattern) + 2):
    if pattern == tuple((i + 1) % n != 0 for i in range(len(pattern))):
      return n
  raise r.unsupported(f"sliding-window layers {[i for i, s in enumerate(pattern) if s]} (the "
                      f"decoder slides every layer, or all but every Nth)")


def _attention_fields(r: _Reader, fam: Family, head_dim: int, num_layers: int) -> dict[str, Any]:
  """Sliding windows, attention soft-capping and the query scale: the attention core's options."""
  window, pattern = _sliding_layers(r, fam, num_layers)
  fields: dict[str, Any] = {"sliding_window": window,
                            "sliding_window_pattern": _window_pattern(pattern, r) if window else None}
  if fam.gemma:
    cap = r.get("attn_logit_softcapping")
    scalar = r.get("query_pre_attn_scalar", 256)
    fields.update(attn_logits_soft_cap=None if cap is None else float(cap),
                  query_scale=None if scalar == head_dim else float(scalar))
  return fields


def decoder_fields(hf: Mapping[str, Any], where: str = "config.json") -> dict[str, Any]:
  """The DecoderConfig architecture fields of a Hugging Face config (see the module docstring)."""
  r = _Reader(hf, where)
  fam = family(hf.get("model_type"), where)
  if r.get("quantization_config"):
    raise r.unsupported("a quantized checkpoint (quantization_config)")
  if r.get("mlp_bias", False):
    raise r.unsupported("mlp_bias=true")
  if r.get("use_bidirectional_attention", False):
    raise r.unsupported("use_bidirectional_attention=true")
  heads, d_model = int(r.required("num_attention_heads")), int(r.required("hidden_size"))
  num_layers = int(r.required("num_hidden_layers"))
  head_dim = int(r.get("head_dim", d_model // heads))
  activation = r.get(fam.activation_key, r.get("hidden_act", "gelu_pytorch_tanh" if fam.gemma
                                                            else "silu"))
  if activation not in ACTIVATIONS_FROM_HF:
    raise r.unsupported(f"{fam.activation_key}={activation!r} (supported: "
                        f"{', '.join(ACTIVATIONS_FROM_HF)})")
  bias = {"always": True, "never": False}.get(fam.qkv_bias) or bool(r.get("attention_bias", False))
  fields = dict(
      vocab_size=int(r.required("vocab_size")), d_model=d_model, num_layers=num_layers,
      num_heads=heads, num_kv_heads=int(r.get("num_key_value_heads", heads)), head_dim=head_dim,
      mlp_dim=int(r.required("intermediate_size")), parallel_block=False, norm_type="rmsnorm",
      tie_embeddings=bool(r.get("tie_word_embeddings", fam.tie_default)),
      norm_epsilon=float(r.get("rms_norm_eps", 1e-6)),
      mlp_activation=ACTIVATIONS_FROM_HF[activation], scale_tied_logits=False,
      attention_qkv_bias=bias, attention_out_bias=bias and fam.qkv_bias == "config",
      qk_norm=fam.qk_norm, norm_unit_offset=fam.gemma, post_norms=fam.gemma,
      scale_embeddings=fam.gemma,
      final_logit_soft_cap=(float(r.get("final_logit_softcapping")) if fam.gemma and
                            r.get("final_logit_softcapping") is not None else None))
  fields.update(_rope_fields(r))
  fields.update(_attention_fields(r, fam, head_dim, num_layers))
  DecoderConfig(**fields)  # validates (e.g. heads divisible by kv heads)
  return fields


# ---- export -------------------------------------------------------------------------------------
def architecture_fields(cfg: DecoderConfig) -> dict[str, Any]:
  return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_SETTINGS}


def family_of(cfg: DecoderConfig, preferred: str | None = None) -> Family:
  """The family to export as: `preferred` (the imported model's) when it fits, else by features."""
  if preferred in FAMILIES:
    return FAMILIES[preferred]
  if cfg.post_norms:
    return FAMILIES["gemma2"]
  if cfg.qk_norm:
    return FAMILIES["qwen3"]
  if cfg.attention_qkv_bias and not cfg.attention_out_bias:
    return FAMILIES["qwen2"]
  if cfg.sliding_window is not None:
    return FAMILIES["mistral"]
  return FAMILIES["llama"]


def _rope_to_hf(cfg: DecoderConfig) -> dict[str, Any]:
  params: dict[str, Any] = {"rope_theta": cfg.rope_max_wavelength, "rope_type": "default"}
  if cfg.rope_scaling != "none":
    params.update(rope_type=cfg.rope_scaling, factor=cfg.rope_scaling_factor)
  if cfg.rope_scaling == "llama3":
    params.update(low_freq_factor=cfg.rope_low_freq_factor,
                  high_freq_factor=cfg.rope_high_freq_factor,
                  original_max_position_embeddings=cfg.rope_original_max_position)
  # transformers >= 5 reads rope_parameters; 4.x reads rope_theta and rope_scaling.
  legacy = {k: v for k, v in params.items() if k != "rope_theta"}
  return {"rope_parameters": params, "rope_theta": cfg.rope_max_wavelength,
          "rope_scaling": legacy if cfg.rope_scaling != "none" else None}


_ARCHITECTURE_KEYS = (
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
    "tie_word_embeddings", "hidden_act", "hidden_activation", "rope_theta", "rope_scaling",
    "rope_parameters", "partial_rotary_factor", "attention_bias", "mlp_bias", "sliding_window",
    "use_sliding_window", "max_window_layers", "layer_types", "query_pre_attn_scalar",
    "attn_logit_softcapping", "final_logit_softcapping", "quantization_config",
    "use_bidirectional_attention", "torch_dtype", "dtype", "transformers_version")


def hf_config(cfg: DecoderConfig, template: Mapping[str, Any] | None = None,
              dtype: str = "float32") -> dict[str, Any]:
  """A config.json for `cfg`. Keys of `template` (the imported model's config) that do not
  describe the architecture (token ids, max_position_embeddings, ...) are kept."""
  template = dict(template or {})
  fam = family_of(cfg, template.get("model_type"))
  out = {k: v for k, v in template.items() if k not in _ARCHITECTURE_KEYS}
  out.update(
      model_type=fam.model_type, architectures=[fam.architecture], vocab_size=cfg.vocab_size,
      hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_epsilon, tie_word_embeddings=cfg.tie_embeddings,
      dtype=dtype, torch_dtype=dtype)
  out.setdefault("max_position_embeddings", max(8192, cfg.rope_original_max_position))
  out[fam.activation_key] = ACTIVATIONS_TO_HF[cfg.mlp_activation]
  out.update(_rope_to_hf(cfg))
  if fam.qkv_bias == "config":
    out["attention_bias"] = cfg.attention_qkv_bias
  if fam.model_type == "llama":
    out["mlp_bias"] = False
  out.update(_attention_to_hf(cfg, fam))
  _check_round_trip(cfg, out, fam)
  return out


def _int_if_whole(x: float) -> float | int:
  return int(x) if float(x).is_integer() else x  # transformers types this as an int


def _attention_to_hf(cfg: DecoderConfig, fam: Family) -> dict[str, Any]:
  slides = cfg.window_layers
  types = ["sliding_attention" if w else "full_attention" for w in slides]
  out: dict[str, Any] = {}
  if fam.gemma:
    out.update(final_logit_softcapping=cfg.final_logit_soft_cap,
               attn_logit_softcapping=cfg.attn_logits_soft_cap,
               query_pre_attn_scalar=_int_if_whole(cfg.query_scale or cfg.head_dim),
               sliding_window=cfg.sliding_window or 4096, layer_types=types)
  elif fam.sliding_window == "global":
    out["sliding_window"] = cfg.sliding_window
  elif fam.sliding_window == "layer_types":
    out.update(sliding_window=cfg.sliding_window, use_sliding_window=any(slides),
               layer_types=types,
               max_window_layers=slides.index(True) if any(slides) else cfg.num_layers)
  return out


def _check_round_trip(cfg: DecoderConfig, out: Mapping[str, Any], fam: Family) -> None:
  want = architecture_fields(cfg)
  try:
    got = architecture_fields(DecoderConfig(**decoder_fields(out, f"the {fam.model_type} export")))
  except UnsupportedModelError as e:
    raise UnsupportedModelError(f"this model cannot be written as a Hugging Face "
                                f"{fam.model_type} model: {e}") from None
  differ = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
  if differ:
    shown = ", ".join(f"{k}={a!r} (a {fam.model_type} config gives {b!r})"
                      for k, (a, b) in differ.items())
    raise UnsupportedModelError(
        f"this model cannot be written as a Hugging Face {fam.model_type} model, which "
        f"transformers would load as a different model: {shown}. Export supports the features of "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}; PaLM-style models (parallel block, LayerNorm, "
        f"scaled tied logits) have no transformers equivalent.")
