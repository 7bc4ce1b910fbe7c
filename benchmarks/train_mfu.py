"""Training throughput, MFU and peak memory of the ul2flan train step, per attention core and
remat policy, on this machine.

MFU = tokens/s x (6N + 12 L H Q T) / peak (PaLM appendix B; N non-embedding parameters, attention
counted in full, remat not counted). Peak: the dense bf16 datasheet figure where the device is in
`ul2flan.training.mfu.PEAK_FLOPS_TABLE` (`--peak=auto`, the default, on accelerators), else the
best FLOP/s of a large matmul in the compute dtype measured in the same process (`--peak=measured`;
what CPU figures use). Each configuration runs in its own process, so peak memory is its own and
an out-of-memory configuration is reported, not fatal. A sequence length other than the shape's
keeps the tokens per step (batch x length) fixed.

  python benchmarks/train_mfu.py                              # CPU shapes (cpu_512x8, tiny)
  python benchmarks/train_mfu.py --shape=cpu_512x8 --attention=xla,jax_nn
  # The GPU comparison (README "Accelerators"): both cores, T = 2048 and 8192, three remat policies
  python benchmarks/train_mfu.py --shape=gpu_1b --attention=xla,cudnn --seq=2048,8192 \\
      --remat=none,dots_with_no_batch_dims,full --json=gpu_1b.jsonl --budget_s=480
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from ul2flan import partitioning
from ul2flan.model import attention as attention_lib
from ul2flan.model.config import DecoderConfig
from ul2flan.training import mfu, optim, steps as steps_lib

SHAPES = {
    # The reference CPU shape: d_model 512, 8 layers, sequence 512, batch 8, float32.
    "cpu_512x8": (dict(vocab_size=768, d_model=512, num_layers=8, num_heads=8, num_kv_heads=1,
                       head_dim=64, mlp_dim=2048, dtype="float32"), 512, 8),
    "cpu_512x8_mha": (dict(vocab_size=768, d_model=512, num_layers=8, num_heads=8, num_kv_heads=8,
                           head_dim=64, mlp_dim=2048, dtype="float32"), 512, 8),
    "tiny": (dict(vocab_size=768, d_model=256, num_layers=4, num_heads=4, num_kv_heads=1,
                  head_dim=64, mlp_dim=1024, dtype="float32"), 256, 16),
    # gin_configs/models/palm_1b.gin (1.01B parameters), activations bf16 on accelerators.
    "gpu_1b": (dict(vocab_size=32000, d_model=2048, num_layers=16, num_heads=16, num_kv_heads=1,
                    head_dim=128, mlp_dim=8192, dtype="auto", scan_layers=True), 2048, 16),
}


def synthetic_batch(batch: int, length: int, vocab: int, packed: bool, seed: int = 0) -> dict:
  rng = np.random.RandomState(seed)
  tokens = rng.randint(2, vocab, size=(batch, length)).astype(np.int32)
  out = {
      "decoder_target_tokens": tokens,
      "decoder_input_tokens": np.concatenate([np.zeros((batch, 1), np.int32), tokens[:, :-1]], 1),
      "decoder_loss_weights": np.ones((batch, length), np.int32),
  }
  if packed:  # what seqio's packing emits; without it the fused core needs no mask at all
    out["decoder_segment_ids"] = np.ones((batch, length), np.int32)
    out["decoder_positions"] = np.broadcast_to(np.arange(length, dtype=np.int32),
                                               (batch, length)).copy()
  return out


def run_one(shape: str, attention: str, seq: int | None, remat: str | None, steps: int,
            peak_mode: str, packed: bool) -> dict:
  """One configuration, in this process."""

  cfg_kwargs, length, batch = SHAPES[shape]
  if seq is not None:
    batch, length = max(1, batch * length // seq), seq
  cfg_kwargs = dict(cfg_kwargs, attention_impl=attention)
  if remat is not None:
    cfg_kwargs["remat_policy"] = remat
  cfg = DecoderConfig(**cfg_kwargs)
  part = partitioning.Partitioner({"data": -1})
  sched = optim.make_schedule(kind="constant", base_learning_rate=1e-3, warmup_steps=0)
  tx = optim.make_optimizer(sched)
  builder = steps_lib.StepBuilder(cfg, part, tx, sched, steps_lib.StepSettings())
  params = builder.init_params(0)
  state = builder.make_state(0, params, builder.init_opt_state(params))
  local = synthetic_batch(batch, length, cfg.vocab_size, packed)
  step = builder.jit_train_step({k: v.shape for k, v in local.items()})
  with part.activation_context():
    gbatch = partitioning.host_local_to_global(local, part)
    t0 = time.perf_counter()
    state, m = step(state, gbatch)  # compile
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      state, m = step(state, gbatch)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t)
  step_time = float(np.median(times))
  device = jax.devices()[0]
  if peak_mode == "measured" or mfu.datasheet_peak(device.device_kind) is None:
    n = 2048 if device.platform == "cpu" else 8192
    peak = mfu.measure_matmul_peak(n=n, dtype=cfg.compute_dtype) * jax.device_count()
    source = f"{cfg.compute_dtype.name} {n}^3 matmul measured in this process"
  else:
    peak, source = mfu.datasheet_peak(device.device_kind)
    peak *= jax.device_count()
  stats = device.memory_stats() or {}
  tokens_per_second = batch * length / step_time
  return dict(shape=shape, attention=attention,
              attention_used=attention_lib.resolve_impl(cfg, cached=False),
              remat=cfg.remat_policy, seq=length, batch=batch, packed=packed,
              dtype=cfg.compute_dtype.name, device=device.device_kind, devices=jax.device_count(),
              params_non_embedding=cfg.num_params(False), compile_s=compile_s,
              step_time_s=step_time, tokens_per_second=tokens_per_second,
              mfu=tokens_per_second * mfu.model_flops_per_token(cfg, length) / peak,
              peak_flops=peak, peak_source=source,
              peak_memory_gib=stats.get("peak_bytes_in_use", float("nan")) / 2 ** 30,
              final_loss=float(m["loss"]))


def run_isolated(args, shape, attention, seq, remat) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--one", "--shape", shape, "--attention",
         attention, "--steps", str(args.steps), "--peak", args.peak]
  cmd += ["--seq", str(seq)] if seq else []
  cmd += ["--remat", remat] if remat else []
  cmd += [] if args.packed else ["--unpacked"]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode == 0 and lines:
    return json.loads(lines[-1])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
  error = "out of memory" if "RESOURCE_EXHAUSTED" in proc.stderr else " | ".join(tail)
  return dict(shape=shape, attention=attention, seq=seq, remat=remat, error=error)


def _csv(value: str | None) -> list:
  return [None] if value is None else [v or None for v in value.split(",")]


def _gib(value: float) -> str:
  return "n/a" if value != value else f"{value:.1f}"  # NaN: the backend keeps no memory stats


def print_table(results: list[dict]) -> None:
  print(f"\n{'shape':<10}{'attention':>10}{'used':>8}{'seq':>6}{'batch':>6}{'remat':>26}"
        f"{'tokens/s':>11}{'MFU':>7}{'peak GiB':>9}{'compile s':>10}")
  for r in results:
    if "error" in r:
      print(f"{r['shape']:<10}{r['attention']:>10}{'':>8}{r['seq'] or '':>6}{'':>6}"
            f"{r['remat'] or '':>26}  FAILED: {r['error']}")
      continue
    print(f"{r['shape']:<10}{r['attention']:>10}{r['attention_used']:>8}{r['seq']:>6}"
          f"{r['batch']:>6}{r['remat']:>26}{r['tokens_per_second']:>11,.0f}{r['mfu']:>7.3f}"
          f"{_gib(r['peak_memory_gib']):>9}{r['compile_s']:>10.1f}")
  ok = [r for r in results if "error" not in r]
  if ok:
    print(f"peak: {ok[0]['peak_source']} ({ok[0]['device']} x{ok[0]['devices']})")
  best = {}
  for r in ok:  # the fastest remat policy per (shape, seq, attention)
    key = (r["shape"], r["seq"], r["attention"])
    if key not in best or r["tokens_per_second"] > best[key]["tokens_per_second"]:
      best[key] = r
  for (shape, seq, attention), r in sorted(best.items()):
    print(f"best remat {shape} T={seq} {attention}: {r['remat']} ({r['tokens_per_second']:,.0f} "
          f"tokens/s, MFU {r['mfu']:.3f})")
  for (shape, seq, attention), r in sorted(best.items()):
    ref = best.get((shape, seq, "xla"))
    if attention != "xla" and ref:
      print(f"{attention} / xla at T={seq} (each at its best remat): "
            f"{r['tokens_per_second'] / ref['tokens_per_second']:.2f}x")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shape", action="append", choices=sorted(SHAPES))
  parser.add_argument("--attention", default="auto",
                      help="comma-separated attention_impl values: auto, xla, cudnn, jax_nn")
  parser.add_argument("--seq", default=None, help="comma-separated sequence lengths")
  parser.add_argument("--remat", default=None, help="comma-separated remat policies")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--peak", choices=["auto", "measured"], default="auto")
  parser.add_argument("--unpacked", dest="packed", action="store_false",
                      help="no segment ids / positions in the batch (seqio pack=False)")
  parser.add_argument("--json", default=None, help="append one JSON line per configuration")
  parser.add_argument("--budget_s", type=float, default=None,
                      help="start no configuration after this many seconds")
  parser.add_argument("--in_process", action="store_true",
                      help="run configurations in this process (CPU; no per-config memory)")
  parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    seq = int(args.seq) if args.seq else None
    print(json.dumps(run_one(args.shape[0], args.attention, seq, args.remat, args.steps,
                             args.peak, args.packed)))
    return
  start, results = time.perf_counter(), []
  # Remat outermost: under --budget_s every core and length gets its first policy before any
  # gets a second.
  for shape in args.shape or ["cpu_512x8", "tiny"]:
    for remat in _csv(args.remat):
      for seq in _csv(args.seq):
        for attention in _csv(args.attention):
          if args.budget_s and time.perf_counter() - start > args.budget_s:
            print(f"budget spent: skipping {shape} {attention} T={seq} remat={remat}")
            continue
          seq_len = int(seq) if seq else None
          if args.in_process:
            r = run_one(shape, attention, seq_len, remat, args.steps, args.peak, args.packed)
          else:
            r = run_isolated(args, shape, attention, seq_len, remat)
          results.append(r)
          print(json.dumps(r), flush=True)
          if args.json:
            with open(args.json, "a") as f:
              f.write(json.dumps(r) + "\n")
  print_table(results)


if __name__ == "__main__":
  main()
