"""`ul2flan export-hf`: write a checkpoint as a Hugging Face model dir.

  ul2flan export-hf CHECKPOINT OUT_DIR [--dtype float32|bfloat16] [--max_shard_gb 5]

CHECKPOINT is a model dir, its checkpoints dir or a step dir of a model whose vocabulary is a
Hugging Face tokenizer (imported with `ul2flan import-hf`, or trained from one). OUT_DIR gets
config.json, safetensors, generation_config.json and the tokenizer with the sentinel tokens
added; `transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)` loads it. See docs/hf.md for
running a UL2R / Flan-U model as a prefix LM from transformers.
"""

from __future__ import annotations

import argparse

from ul2flan.hf import exporter


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("checkpoint", help="model dir, checkpoints dir or step dir")
  parser.add_argument("out_dir", help="Hugging Face model dir to write (new or empty)")
  parser.add_argument("--dtype", choices=exporter.DTYPES, default="float32",
                      help="dtype of the written tensors")
  parser.add_argument("--max_shard_gb", type=float, default=5.0,
                      help="safetensors files are split above this size (GB)")


def run(args: argparse.Namespace) -> int:
  if args.max_shard_gb <= 0:
    raise ValueError(f"--max_shard_gb must be > 0, got {args.max_shard_gb}")
  out = exporter.export_hf(args.checkpoint, args.out_dir, dtype=args.dtype,
                           max_shard_bytes=int(args.max_shard_gb * 1024 ** 3))
  print(f"exported to {out}")
  return 0
