"""Tiny random Hugging Face models (built with transformers, the reference) for the hf tests.

Weights are drawn at O(1) scale (not transformers' 0.02 init) and biases / norm weights are made
non-trivial, so a wrong transform, bias or norm shows up in the logits.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Each family's features switched on; sliding windows shorter than the 320-token test inputs.
# 400 embedding rows over a 300-token tokenizer (Qwen-style unused rows) unless a test says.
BASE = dict(vocab_size=400, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,
            max_position_embeddings=1024)
CONFIGS = {
    # Llama 3.1-style: llama3 RoPE bands (head_dim 16, context 64: all three bands are used).
    "llama": dict(BASE, model_type="llama", tie_word_embeddings=False, rope_parameters=dict(
        rope_type="llama3", rope_theta=5000.0, factor=8.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=64)),
    # Llama 3.2 / SmolLM-style tied embeddings, plus attention biases and linear RoPE scaling.
    "llama_tied": dict(BASE, model_type="llama", tie_word_embeddings=True, attention_bias=True,
                       num_key_value_heads=1, rope_parameters=dict(
                           rope_type="linear", rope_theta=20000.0, factor=2.0)),
    # Mistral: every layer slides over a window shorter than the test inputs.
    "mistral": dict(BASE, model_type="mistral", tie_word_embeddings=False, sliding_window=64,
                    rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    # Gemma 2: GeGLU, (1 + w) norms, post-norms, embedding scale, soft-caps small enough to bite,
    # sliding / global layers alternating, query_pre_attn_scalar != head_dim.
    "gemma2": dict(BASE, model_type="gemma2", tie_word_embeddings=True, sliding_window=64,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                   query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                   final_logit_softcapping=3.0, hidden_activation="gelu_pytorch_tanh",
                   rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    "qwen2": dict(BASE, model_type="qwen2", tie_word_embeddings=False,
                  rope_parameters=dict(rope_type="default", rope_theta=100000.0)),
    "qwen3": dict(BASE, model_type="qwen3", tie_word_embeddings=True,
                  rope_parameters=dict(rope_type="default", rope_theta=100000.0)),
}
CLASSES = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
           "gemma2": transformers.Gemma2Config}


def hf_config(name: str, **overrides) -> transformers.PretrainedConfig:
  fields = dict(CONFIGS[name], **overrides)
  cls = CLASSES[fields.pop("model_type")]
  return cls(**fields)


def randomize(model: torch.nn.Module, seed: int) -> None:
  """O(1)-scale weights; norms around 1 (around 0 for Gemma's (1 + w)); non-zero biases."""
  gen = torch.Generator().manual_seed(seed)
  gemma = model.config.model_type == "gemma2"
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith("norm.weight") or "layernorm" in name:
        p.copy_((0.0 if gemma else 1.0) + 0.2 * noise)
      elif name.endswith("bias"):
        p.copy_(0.5 * noise)
      elif "embed_tokens" in name:
        p.copy_(noise)
      else:
        p.copy_(noise / np.sqrt(p.shape[-1]))


def swap_ids(tokenizer, size: int) -> np.ndarray:
  """ul2flan's model id of each tokenizer id 0..size-1 (token_layout: BOS and id 0 trade places;
  ids past the tokenizer stay): how the tests line ul2flan's logits up with transformers'."""
  perm = np.arange(size)
  bos = tokenizer.bos_token_id
  if bos is not None and bos != tokenizer.eos_token_id:
    perm[[0, bos]] = perm[[bos, 0]]
  return perm


def build_model(name: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(hf_config(name, **overrides),
                                                        dtype=torch.float32)
  randomize(model, seed)
  return model.eval()


def train_tokenizer(vocab_size: int = 300) -> transformers.PreTrainedTokenizerFast:
  """A small byte-level BPE with <s> / </s> / <pad>, trained on a few generated sentences; like a
  Llama tokenizer, its post-processor puts <s> first (so rows start with it)."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  words = ["Alice", "Bob", "lives", "in", "Paris", "Lyon", "the", "cat", "sat", "on", "a", "mat",
           "works", "as", "baker", "teacher", "and", "is", "from"]
  rng = np.random.RandomState(0)
  text = [" ".join(rng.choice(words, 8)) + "." for _ in range(300)]
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(text, trainer)
  bos = tok.token_to_id("<s>")
  tok.post_processor = processors.TemplateProcessing(
      single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                              eos_token="</s>", bos_token="<s>")


def save_model(model: transformers.PreTrainedModel, out_dir: str,
               max_shard_size: str | None = None, tokenizer=None,
               legacy_rope_keys: bool = False) -> str:
  """save_pretrained (safetensors; sharded when `max_shard_size` is small) + a tokenizer."""
  kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
  model.save_pretrained(out_dir, **kwargs)
  (tokenizer or train_tokenizer()).save_pretrained(out_dir)
  if legacy_rope_keys:  # the rope_theta / rope_scaling keys transformers 4.x wrote
    path = os.path.join(out_dir, "config.json")
    with open(path) as f:
      config = json.load(f)
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = None if params.get("rope_type") == "default" else params
    with open(path, "w") as f:
      json.dump(config, f, indent=2)
  return out_dir


def hf_logits(model: transformers.PreTrainedModel, tokens: np.ndarray, **kwargs) -> np.ndarray:
  with torch.no_grad():
    out = model(torch.as_tensor(tokens, dtype=torch.long), **kwargs)
  return out.logits.float().numpy()


def prefix_lm_mask(prompt_length: int, total_length: int, window: int | None = None
                   ) -> torch.Tensor:
  """docs/hf.md's 4-D mask: causal, plus bidirectional within the prompt; with a sliding
  `window`, keys also less than `window` positions away (either side, as ul2flan's prefix LM).
  Additive float (0 where visible): both the sdpa and the eager attention of transformers take it."""
  q = torch.arange(total_length)[:, None]
  k = torch.arange(total_length)[None, :]
  visible = (k <= q) | ((k < prompt_length) & (q < prompt_length))
  if window is not None:
    visible &= (q - k).abs() < window
  mask = torch.zeros(total_length, total_length)
  return mask.masked_fill(~visible, torch.finfo(torch.float32).min)[None, None]
