"""`ul2flan import-hf`: convert a Hugging Face model dir into a ul2flan model dir.

  ul2flan import-hf HF_DIR OUT_DIR [--dtype float32|bfloat16] [--scan_layers]
      [--sentinels auto|reserved|unused_rows|new_rows] [--num_sentinels 100]

Supports the model_types llama, mistral, qwen2, qwen3 and gemma2 (safetensors weights, one file or
sharded with model.safetensors.index.json, and tokenizer.json). OUT_DIR gets checkpoints/0/params
(use it as INITIAL_CHECKPOINT_PATH), model.gin (include it as the model gin file), run.json and the
tokenizer. Re-running with the same arguments reuses OUT_DIR. See docs/hf.md.
"""

from __future__ import annotations

import argparse
import json

from ul2flan.commands import distributed
from ul2flan.hf import import_vocabulary, importer
from ul2flan.hf_vocab import token_layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("hf_dir", help="Hugging Face model dir (config.json, safetensors, tokenizer)")
  parser.add_argument("out_dir", help="ul2flan model dir to write (new or empty)")
  parser.add_argument("--dtype", choices=importer.DTYPES, default="float32",
                      help="dtype the parameters are stored in (and the model computes in)")
  parser.add_argument("--scan_layers", action="store_true",
                      help="store the layers stacked, for DecoderConfig.scan_layers = True")
  parser.add_argument("--sentinels", default=import_vocabulary.AUTO,
                      choices=(import_vocabulary.AUTO,) + token_layout.SENTINEL_POLICIES,
                      help="where the sentinels go (docs/hf_tokenizer.md); auto: reserved "
                           "tokens, else spare embedding rows, else new rows")
  parser.add_argument("--num_sentinels", type=int, default=100)
  parser.add_argument("--reserved_pattern", default=token_layout.LLAMA3_RESERVED_PATTERN,
                      help="regex of the reserved tokens (sentinels=reserved)")
  parser.add_argument("--mesh_shape", type=json.loads, default=None,
                      help="JSON mesh, e.g. '{\"fsdp\": -1}' (the default): how the params are "
                           "sharded while they are converted")
  distributed.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
  distributed.initialize(args)
  out = importer.import_hf(args.hf_dir, args.out_dir, dtype=args.dtype,
                           scan_layers=args.scan_layers, sentinels=args.sentinels,
                           num_sentinels=args.num_sentinels,
                           reserved_pattern=args.reserved_pattern, mesh_shape=args.mesh_shape)
  print(f"imported into {out}: use --gin_file={out}/model.gin "
        f"--gin.INITIAL_CHECKPOINT_PATH=\"'{out}'\"")
  return 0
