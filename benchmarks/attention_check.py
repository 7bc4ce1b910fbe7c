"""Do the attention cores agree on this machine? Logits and parameter gradients of a small decoder,
each core against "xla", for the masks training uses: causal (unpacked), packed causal, packed
prefix-LM, a sliding window on every layer, and a Gemma-style window pattern under scan_layers.

On CPU it compares "jax_nn" (tests/test_attention.py does the same in float32); on an NVIDIA GPU
it adds "cudnn", in bfloat16, which no CPU can run. Differences are relative to the reference's
largest magnitude; bf16 keeps 8 significand bits, so the bf16 threshold is 2e-2.

  python benchmarks/attention_check.py                 # cores available here, compute dtype auto
  python benchmarks/attention_check.py --dtype=bfloat16 --impl=cudnn
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ul2flan.model import attention
from ul2flan.model.config import DecoderConfig
from ul2flan.model.decoder import Decoder

BASE = dict(vocab_size=512, d_model=256, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=32,
            mlp_dim=512)
WINDOWS = {"no window": {}, "window 64, all layers": dict(sliding_window=64),
           "window 64, every 2nd layer global, scanned": dict(
               sliding_window=64, sliding_window_pattern=2, scan_layers=True)}


def batch(length: int, packed: bool, prefix: bool, seed: int = 0) -> dict:
  """Two rows; packed rows hold examples of 3/8, 2/8, ... of the length (the first third of each
  is its prefix), then padding."""
  rng = np.random.RandomState(seed)
  tokens = rng.randint(3, BASE["vocab_size"], size=(2, length)).astype(np.int32)
  out = {"decoder_input_tokens": tokens}
  if packed:
    seg, pos, pre = (np.zeros((2, length), np.int32) for _ in range(3))
    for row, sizes in enumerate([(3, 2, 2), (5, 2)]):
      start = 0
      for i, eighths in enumerate(sizes):
        n = length * eighths // 8
        seg[row, start:start + n], pos[row, start:start + n] = i + 1, np.arange(n)
        pre[row, start:start + n // 3] = 1
        start += n
    out.update(decoder_segment_ids=seg, decoder_positions=pos)
    if prefix:
      out["decoder_causal_attention"] = pre
  return out


def logits_and_grads(cfg: DecoderConfig, params, features: dict):
  def loss(p):
    logits = Decoder(cfg).apply({"params": p}, **features)
    real = features.get("decoder_segment_ids", np.ones_like(features["decoder_input_tokens"])) > 0
    return jnp.sum(jnp.where(real[..., None], jax.nn.log_softmax(logits), 0.0)[..., 7]), logits
  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return np.asarray(logits, np.float32), grads


def relative_gap(a, b, where=None) -> float:
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  if where is not None:
    a, b = a[where], b[where]
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dtype", default="auto")
  parser.add_argument("--impl", default=None, help="comma-separated cores to compare with xla")
  parser.add_argument("--length", type=int, default=256)
  args = parser.parse_args()
  base = DecoderConfig(**BASE, dtype=args.dtype)
  impls = args.impl.split(",") if args.impl else (
      ["jax_nn", "cudnn"] if attention.cudnn_head_dim_limit() else ["jax_nn"])
  if "cudnn" in impls and base.compute_dtype not in (jnp.bfloat16, jnp.float16):
    base = dataclasses.replace(base, dtype="bfloat16")
  threshold = 2e-2 if base.compute_dtype != jnp.float32 else 1e-4
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {base.compute_dtype.name}, "
        f"T={args.length}; pass: relative gap < {threshold}")
  failures = 0
  for window_name, window in WINDOWS.items():
    cfg0 = dataclasses.replace(base, **window)
    unrolled = dataclasses.replace(cfg0, scan_layers=False)
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = nn.unbox(Decoder(unrolled).init(jax.random.key(0), tokens))["params"]
    if cfg0.scan_layers:
      layers = [params.pop(f"layer_{i}") for i in range(cfg0.num_layers)]
      params["layers"] = {"layer": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
    for case, (packed, prefix) in {"causal": (False, False), "packed causal": (True, False),
                                   "packed prefix-LM": (True, True)}.items():
      features = batch(args.length, packed, prefix)
      real = features.get("decoder_segment_ids", np.ones((2, args.length))) > 0
      ref_logits, ref_grads = logits_and_grads(
          dataclasses.replace(cfg0, attention_impl="xla"), params, features)
      for impl in impls:
        try:
          logits, grads = logits_and_grads(dataclasses.replace(cfg0, attention_impl=impl),
                                           params, features)
        except Exception as e:  # pylint: disable=broad-except  (report and go on)
          print(f"  {window_name:<44} {case:<17} {impl:<7} ERROR {type(e).__name__}: {e}"[:300])
          failures += 1
          continue
        gap = relative_gap(logits, ref_logits, real)
        grad_gap = max(relative_gap(a, b) for a, b in
                       zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
        ok = gap < threshold and grad_gap < 5 * threshold
        failures += not ok
        print(f"  {window_name:<44} {case:<17} {impl:<7} logits {gap:.2e}  grads {grad_gap:.2e}"
              f"  {'ok' if ok else 'FAIL'}")
  print("all agree" if not failures else f"{failures} disagreement(s)")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
