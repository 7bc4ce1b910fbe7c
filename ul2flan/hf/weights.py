"""The name map between Hugging Face tensors and ul2flan parameters, and the two-way transforms.

Hugging Face stores `nn.Linear` weights as [out, in]; ul2flan keeps [in, out] with the heads as
their own axis. Both rotate the two halves of each head for RoPE (the HF Llama checkpoints were
permuted from Meta's interleaved layout when converted), so no permutation is needed.

A parameter is named by its path in the params tree. Layer parameters live under `layer_{i}`, or,
with `scan_layers`, under `layers/layer` stacked on a leading axis of length num_layers.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from ul2flan.model.config import DecoderConfig

Path = tuple[str, ...]

# kind -> (HF shape from ours, ours from HF, HF from ours). "heads_in": [H*hd, d] <-> [d, H, hd];
# "heads_out": [d, H*hd] <-> [H, hd, d]; "heads_bias": [H*hd] <-> [H, hd].
_KINDS: dict[str, tuple[Callable, Callable, Callable]] = {
    "copy": (lambda s: s, lambda a, s: a, lambda a: a),
    "transpose": (lambda s: s[::-1], lambda a, s: a.T, lambda a: a.T),
    "heads_in": (lambda s: (s[1] * s[2], s[0]), lambda a, s: a.T.reshape(s),
                 lambda a: a.reshape(a.shape[0], -1).T),
    "heads_out": (lambda s: (s[2], s[0] * s[1]), lambda a, s: a.T.reshape(s),
                  lambda a: a.reshape(-1, a.shape[2]).T),
    "heads_bias": (lambda s: (s[0] * s[1],), lambda a, s: a.reshape(s), lambda a: a.reshape(-1)),
}


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One parameter: its path in a layer (or the top level), its HF name and the transform."""
  ours: Path
  hf: str  # "{i}" stands for the layer index
  kind: str
  per_layer: bool

  def hf_name(self, layer: int | None = None) -> str:
    return self.hf.format(i=layer)

  def hf_shape(self, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(_KINDS[self.kind][0](tuple(our_shape)))

  def to_ours(self, hf_array: np.ndarray, our_shape: tuple[int, ...]) -> np.ndarray:
    return _KINDS[self.kind][1](hf_array, tuple(our_shape))

  def to_hf(self, array: np.ndarray) -> np.ndarray:
    return _KINDS[self.kind][2](array)

  def fill(self, dest: np.ndarray, hf_array: np.ndarray) -> None:
    """dest[...] = to_ours(hf_array), cast to dest's dtype without an intermediate copy."""
    if self.kind in ("transpose", "heads_in", "heads_out"):
      dest.reshape(hf_array.shape[::-1])[...] = hf_array.T
    else:
      dest.reshape(hf_array.shape)[...] = hf_array


# Rows in the vocabulary's order (importer / exporter permute them: `token_layout`).
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def tensor_maps(cfg: DecoderConfig) -> list[TensorMap]:
  """Every parameter of `cfg`'s decoder and the HF tensor it corresponds to."""
  top = [TensorMap(("embedding",), "model.embed_tokens.weight", "copy", False),
         TensorMap(("final_norm", "scale"), "model.norm.weight", "copy", False)]
  if not cfg.tie_embeddings:
    top.append(TensorMap(("output_embedding",), "lm_head.weight", "transpose", False))
  layer = "model.layers.{i}."
  per_layer = [
      (("attention", "query"), "self_attn.q_proj.weight", "heads_in"),
      (("attention", "key"), "self_attn.k_proj.weight", "heads_in"),
      (("attention", "value"), "self_attn.v_proj.weight", "heads_in"),
      (("attention", "out"), "self_attn.o_proj.weight", "heads_out"),
      (("mlp", "wi_gate"), "mlp.gate_proj.weight", "transpose"),
      (("mlp", "wi_up"), "mlp.up_proj.weight", "transpose"),
      (("mlp", "wo"), "mlp.down_proj.weight", "transpose"),
      (("pre_attention_norm", "scale"), "input_layernorm.weight", "copy"),
  ]
  if cfg.post_norms:  # Gemma 2's names
    per_layer += [(("post_attention_norm", "scale"), "post_attention_layernorm.weight", "copy"),
                  (("pre_mlp_norm", "scale"), "pre_feedforward_layernorm.weight", "copy"),
                  (("post_mlp_norm", "scale"), "post_feedforward_layernorm.weight", "copy")]
  else:  # Llama's "post_attention_layernorm" is the norm before the MLP
    per_layer.append((("pre_mlp_norm", "scale"), "post_attention_layernorm.weight", "copy"))
  if cfg.attention_qkv_bias:
    per_layer += [(("attention", f"{p}_bias"), f"self_attn.{h}_proj.bias", "heads_bias")
                  for p, h in (("query", "q"), ("key", "k"), ("value", "v"))]
  if cfg.attention_out_bias:
    per_layer.append((("attention", "out_bias"), "self_attn.o_proj.bias", "copy"))
  if cfg.qk_norm:
    per_layer += [(("attention", "query_norm", "scale"), "self_attn.q_norm.weight", "copy"),
                  (("attention", "key_norm", "scale"), "self_attn.k_norm.weight", "copy")]
  return top + [TensorMap(ours, layer + hf, kind, True) for ours, hf, kind in per_layer]


def param_path(tmap: TensorMap, cfg: DecoderConfig, layer: int | None = None) -> Path:
  """Where a map's parameter lives in the params tree (`layer` ignored when scanned)."""
  if not tmap.per_layer:
    return tmap.ours
  if cfg.scan_layers:
    return ("layers", "layer") + tmap.ours
  return (f"layer_{layer}",) + tmap.ours


def leaves(cfg: DecoderConfig) -> Iterator[tuple[Path, TensorMap]]:
  """(params-tree path, map) for every leaf: one per layer unscanned, one stacked when scanned."""
  for tmap in tensor_maps(cfg):
    if tmap.per_layer and not cfg.scan_layers:
      for i in range(cfg.num_layers):
        yield param_path(tmap, cfg, i), tmap
    else:
      yield param_path(tmap, cfg), tmap


def layers_of(path: Path, tmap: TensorMap, cfg: DecoderConfig) -> list[int | None]:
  """The HF layer indices a leaf holds, in order (its stacked axis when scanned)."""
  if not tmap.per_layer:
    return [None]
  if cfg.scan_layers:
    return list(range(cfg.num_layers))
  return [int(path[0].split("_")[1])]


# Tensors some checkpoints carry that transformers itself recomputes or ties (safe to skip).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def ignorable(name: str, cfg: DecoderConfig) -> bool:
  return name.endswith(IGNORED_SUFFIXES) or (cfg.tie_embeddings and name == "lm_head.weight")
