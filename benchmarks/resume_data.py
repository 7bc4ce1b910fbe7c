"""Time to the first training batch after a resume at step N vs at step 0 (data side, one run).

The trainer's input is `ul2flan.training.data.HostIterator`. A checkpoint holds, with the train
state, each data shard's tf.data iterator state (`HostIterator.snapshot`); a resume restores it
(`HostIterator(cfg, resume=...)`) instead of rebuilding the pipeline and skipping the N consumed
batches (the old replay, still the fallback for checkpoints without states).

This script, in one process:
  1. runs the pipeline straight for N batches (default 20,000 of the demo UL2R task with
     `gin_configs/runs/ul2r.gin`'s settings: batch 32, 128 + 128, shuffled) and snapshots it;
  2. times, --repeats times each, alternating: a fresh iterator's first batch (step 0), and a
     resumed iterator's first batch (step N, from the snapshot), checking that the resumed batch
     is the straight run's batch N + 1 and that no replay happened;
  3. the replay cost: measured with --measure_replay (a fresh iterator skips N batches, then the
     first batch), otherwise estimated as first batch at step 0 + the straight run's time for N
     batches (the replay produces exactly those batches; labelled as an estimate).

Target: resume at N / start at 0 <= 2x (median times). The model's checkpoint restore is left out:
it does not depend on N.

  python benchmarks/resume_data.py [--steps 20000] [--measure_replay]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import tensorflow as tf

from ul2flan.training import data


def _first_batch(cfg: data.DatasetConfig, resume=None) -> tuple[float, dict, data.HostIterator]:
  start = time.perf_counter()
  iterator = data.HostIterator(cfg, 0, 1, resume=resume)
  batch = next(iterator)
  return time.perf_counter() - start, batch, iterator


def _same(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", default="demo_ul2r")
  parser.add_argument("--module", default="ul2flan_tasks")
  parser.add_argument("--steps", type=int, default=20000, help="resume step N")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--inputs_length", type=int, default=128)
  parser.add_argument("--targets_length", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--measure_replay", action="store_true",
                      help="time the old replay (another N batches) instead of estimating it")
  args = parser.parse_args(argv)

  cfg = data.DatasetConfig(
      mixture_or_task_name=args.task, module=args.module, feature_converter="prefix_lm",
      task_feature_lengths={"inputs": args.inputs_length, "targets": args.targets_length},
      batch_size=args.batch_size, shuffle=True, seed=0)
  print(f"task {args.task!r}, batch {args.batch_size} x ({args.inputs_length} + "
        f"{args.targets_length}), shuffled, one data shard; resume at step {args.steps}")

  # 1. The straight run to step N (also warms up imports, registration and tracing).
  start = time.perf_counter()
  straight = data.HostIterator(cfg, 0, 1)
  for _ in range(args.steps):
    next(straight)
  straight_s = time.perf_counter() - start
  files = straight.snapshot()
  state_bytes = sum(len(v) for v in files.values())
  expected = next(straight)
  straight.close()
  print(f"straight run: {args.steps} batches in {straight_s:.1f} s "
        f"({args.steps / straight_s:.1f} batches/s); saved iterator state {state_bytes / 1e6:.2f} MB")

  # 2. First batch at step 0 and at step N, alternating.
  resume = {"batches_consumed": args.steps, "files": files}
  at_zero, at_n = [], []
  for _ in range(args.repeats):
    seconds, _, iterator = _first_batch(cfg)
    iterator.close()
    at_zero.append(seconds)
    seconds, batch, iterator = _first_batch(cfg, resume)
    if not iterator.restored:
      raise SystemExit("the resume replayed instead of restoring the iterator state")
    if not _same(batch, expected):
      raise SystemExit(f"the resumed first batch is not the straight run's batch {args.steps + 1}")
    iterator.close()
    at_n.append(seconds)
  zero, resumed = statistics.median(at_zero), statistics.median(at_n)
  print(f"first batch at step 0: median {zero:.2f} s  ({', '.join(f'{s:.2f}' for s in at_zero)})")
  print(f"first batch at step {args.steps} (restored, no replay; equals the straight run's next "
        f"batch): median {resumed:.2f} s  ({', '.join(f'{s:.2f}' for s in at_n)})")
  print(f"resume at {args.steps} / start at 0: {resumed / zero:.2f}x (target <= 2x)")

  # 3. The old replay.
  if args.measure_replay:
    start = time.perf_counter()
    replayed = data.HostIterator(cfg, 0, 1, start_batch=args.steps)
    batch = next(replayed)
    replay_s = time.perf_counter() - start
    replayed.close()
    assert _same(batch, expected), "the replay is not exact"
    how = "measured"
  else:
    replay_s = zero + straight_s
    how = "estimated: first batch at 0 + the straight run's time for the same batches"
  print(f"old replay to step {args.steps}: {replay_s:.1f} s ({how}); "
        f"{replay_s / resumed:.0f}x the restore")
  return 0


if __name__ == "__main__":
  tf.get_logger().setLevel("ERROR")
  raise SystemExit(main())
