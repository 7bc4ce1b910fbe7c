"""Decoding throughput: KV-cache decoding against recomputing the full forward pass every step.

Both runs decode the same right-padded batch of random prompts with the same random-init model
(the tiny model of gin_configs/models/tiny.gin by default) for exactly `--new_tokens` tokens per
row (EOS does not stop them), greedy. Compilation is done ahead of time and not timed.

- cached: one prefill pass over the prompts, then one-token steps reading the KV cache;
- uncached: every step reruns the model over the whole [prompt + new tokens] buffer (fixed size,
  so it compiles once; positions not yet generated are masked padding).

Reported: generated tokens/s of each (batch x new tokens / seconds, prefill included) and the
ratio. Target: cached >= 5x uncached at prompt 512, 128 new tokens.

  python benchmarks/decode.py [--batch 4] [--prompt_len 512] [--new_tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from ul2flan import row_layout
from ul2flan.inference import decoding
from ul2flan.model.config import DecoderConfig
from ul2flan.model.decoder import Decoder
from ul2flan.vocabularies import EOS_ID

TINY = dict(vocab_size=768, d_model=256, num_layers=4, num_heads=4, num_kv_heads=1, head_dim=64,
            mlp_dim=1024)


def random_prompts(batch: int, prompt_len: int, vocab_size: int, seed: int):
  rng = np.random.default_rng(seed)
  layout = row_layout.RowLayout(row_layout.PREFIX_LM)
  prompts = [layout.prompt(rng.integers(3, vocab_size - 100, prompt_len - 2).tolist(), EOS_ID)
             for _ in range(batch)]
  return decoding.pad_prompts(prompts)


def time_run(run, repeats: int) -> tuple[float, np.ndarray]:
  """Best wall time of `repeats` runs, and the tokens of the last one."""
  best, out = float("inf"), None
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(run())
    best = min(best, time.perf_counter() - start)
  return best, np.asarray(out)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--prompt_len", type=int, default=512)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3, help="cached runs (best is reported)")
  parser.add_argument("--uncached_repeats", type=int, default=1)
  parser.add_argument("--causal", action="store_true", help="causal prompts (default prefix LM)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  config = DecoderConfig(**TINY)
  params = jax.jit(lambda: Decoder(config).init(jax.random.key(args.seed),
                                                jnp.zeros((1, 8), jnp.int32))["params"])()
  tokens, lengths = random_prompts(args.batch, args.prompt_len, config.vocab_size, args.seed)
  settings = decoding.DecodeSettings(max_new_tokens=args.new_tokens, prefix_lm=not args.causal,
                                     eos_id=None)
  generated = args.batch * args.new_tokens

  results = {}
  for name, use_cache, repeats in (("cached", True, args.repeats),
                                   ("uncached", False, args.uncached_repeats)):
    start = time.perf_counter()
    run = decoding.compile_decode(params, config, tokens, lengths,
                                  dataclasses.replace(settings, use_cache=use_cache))
    compile_s = time.perf_counter() - start
    seconds, out = time_run(run, repeats)
    results[name] = {"seconds": seconds, "tokens_per_second": generated / seconds,
                     "compile_seconds": compile_s, "tokens": out}
    print(f"{name:>9}: {generated} tokens in {seconds:.3f}s = "
          f"{generated / seconds:,.1f} tokens/s (compile {compile_s:.1f}s)")

  ratio = results["cached"]["tokens_per_second"] / results["uncached"]["tokens_per_second"]
  agree = float(np.mean(results["cached"]["tokens"] == results["uncached"]["tokens"]))
  print(f"speed-up cached / uncached: {ratio:.1f}x (target >= 5x); identical tokens: "
        f"{100 * agree:.1f}%")
  print(json.dumps({
      "device": str(jax.devices()[0].device_kind), "batch": args.batch,
      "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
      "prefix_lm": not args.causal,
      "cached_tokens_per_second": results["cached"]["tokens_per_second"],
      "uncached_tokens_per_second": results["uncached"]["tokens_per_second"],
      "speedup": ratio, "identical_tokens": agree}))


if __name__ == "__main__":
  main()
