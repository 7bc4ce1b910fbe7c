"""Import of a ~1B-parameter random Llama (Llama 3.2 1B shapes) written as sharded safetensors.

  python benchmarks/hf_import.py [--dtype bfloat16] [--layers 16] [--workdir /tmp/hf_import_bench]

Writes the source model (bf16, 1 GB shards, config.json, a small tokenizer), then times
`ul2flan import-hf` in a fresh process and reads that process's peak resident memory
(`getrusage(RUSAGE_CHILDREN).ru_maxrss`). It reports the peak as a multiple of the model's size in
its dtype (target <= 1.3x), and the same for the process's baseline (a process that only imports
ul2flan's import code) so the two can be told apart.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import ml_dtypes
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ul2flan.hf import safetensors_io  # noqa: E402  pylint: disable=wrong-import-position

LLAMA_1B = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256,
                hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
                tie_word_embeddings=True, max_position_embeddings=131072, rope_theta=500000.0,
                rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                  high_freq_factor=4.0, original_max_position_embeddings=8192),
                bos_token_id=128000, eos_token_id=128001, torch_dtype="bfloat16")


def source_tensors(config: dict, dtype) -> list[safetensors_io.TensorToWrite]:
  d, m, hd = config["hidden_size"], config["intermediate_size"], config["head_dim"]
  h, kv = config["num_attention_heads"], config["num_key_value_heads"]
  shapes = {"model.embed_tokens.weight": (config["vocab_size"], d), "model.norm.weight": (d,)}
  for i in range(config["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes.update({
        p + "self_attn.q_proj.weight": (h * hd, d), p + "self_attn.k_proj.weight": (kv * hd, d),
        p + "self_attn.v_proj.weight": (kv * hd, d), p + "self_attn.o_proj.weight": (d, h * hd),
        p + "mlp.gate_proj.weight": (m, d), p + "mlp.up_proj.weight": (m, d),
        p + "mlp.down_proj.weight": (d, m), p + "input_layernorm.weight": (d,),
        p + "post_attention_layernorm.weight": (d,)})
  rng = np.random.default_rng(0)

  def random(shape):
    return lambda: (rng.standard_normal(shape, np.float32) * 0.02).astype(dtype)

  return [safetensors_io.TensorToWrite(name, shape, np.dtype(dtype), random(shape))
          for name, shape in shapes.items()]


def write_source(src: str, config: dict) -> int:
  os.makedirs(src)
  tensors = source_tensors(config, ml_dtypes.bfloat16)
  safetensors_io.write_weights(src, tensors, max_shard_bytes=1024 ** 3)
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  write_tokenizer(src, config["vocab_size"])
  return sum(t.nbytes for t in tensors)


def write_tokenizer(src: str, vocab_size: int) -> None:
  """A stand-in with Llama 3's id layout: words, then BOS / EOS and 256 reserved tokens at the end
  (so sentinels='auto' takes the reserved tokens, as for Llama 3)."""
  from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
  words = vocab_size - 258
  tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(words)}, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  specials = ["<|begin_of_text|>", "<|end_of_text|>"] + [
      f"<|reserved_special_token_{k}|>" for k in range(256)]
  tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
  tok.save(os.path.join(src, "tokenizer.json"))
  with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": specials[0], "eos_token": specials[1]}, f)


_MEASURE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss_of(command: list[str]) -> tuple[float, int]:
  """(seconds, peak RSS in bytes) of `command` run in a fresh process (measured by a wrapper
  process whose only child it is: ru_maxrss is a maximum over all of a process's children)."""
  start = time.perf_counter()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-c", _MEASURE, *command], check=True, cwd=REPO,
                          env=env, stdout=subprocess.PIPE, text=True)
  seconds = time.perf_counter() - start
  return seconds, int(result.stdout.strip().splitlines()[-1]) * 1024


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--layers", type=int, default=LLAMA_1B["num_hidden_layers"])
  parser.add_argument("--workdir", default="/tmp/hf_import_bench")
  parser.add_argument("--keep", action="store_true", help="keep the source and output dirs")
  args = parser.parse_args()
  config = dict(LLAMA_1B, num_hidden_layers=args.layers)
  shutil.rmtree(args.workdir, ignore_errors=True)
  src, out = os.path.join(args.workdir, "src"), os.path.join(args.workdir, "out")
  t0 = time.perf_counter()
  source_bytes = write_source(src, config)
  print(f"source: {source_bytes / 1e9:.2f} GB bf16 in {time.perf_counter() - t0:.0f}s "
        f"({source_bytes // 2 / 1e9:.2f}B parameters)")
  model_bytes = source_bytes // 2 * np.dtype(ml_dtypes.bfloat16 if args.dtype == "bfloat16"
                                             else np.float32).itemsize
  seconds, peak = peak_rss_of([sys.executable, "-m", "ul2flan", "import-hf", src, out,
                               "--dtype", args.dtype])
  _, baseline = peak_rss_of([sys.executable, "-c", "import ul2flan.hf.importer, jax; "
                             "jax.numpy.zeros(1).block_until_ready()"])
  print(json.dumps({
      "dtype": args.dtype, "parameters": source_bytes // 2, "model_gb": model_bytes / 1e9,
      "import_seconds": round(seconds, 1), "peak_rss_gb": round(peak / 1e9, 2),
      "peak_rss_over_model": round(peak / model_bytes, 2),
      "baseline_rss_gb": round(baseline / 1e9, 2),
      "peak_minus_baseline_over_model": round((peak - baseline) / model_bytes, 2)}, indent=1))
  if not args.keep:
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
  main()
