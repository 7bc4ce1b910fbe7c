"""Throughput of the UL2R input pipeline against the identity pipeline on the same corpus.

Both pipelines read the same corpus, tokenize, and pack with the seqio feature converter the trainer
uses, into rows of inputs_length + targets_length tokens:

- identity: text -> tokens -> `LMFeatureConverter(pack=True)` (what causal pre-training reads);
- concat: text -> tokens -> documents concatenated and cut to the row length -> the same converter
  (isolates tokenization: UL2R / concat is the cost of the denoisers alone);
- UL2R: text -> tokens -> mixture of denoisers (segments sized to fill decoder rows) -> the
  trainer's `PrefixLMFeatureConverter(pack=True)`;
- UL2R-pf: the same with segments sized per feature (`fill_rows=False`, T5's encoder-decoder
  sizing, what ul2flan did before): the padding that row filling removes.

Reported per pipeline: packed rows/s, examples/s (before packing), non-pad tokens/s (text,
sentinels, mode tokens, EOS) and row tokens/s (rows x row length, what the trainer consumes).
Targets: UL2R / identity >= 0.5x on non-pad tokens/s; UL2R row tokens/s >= 10x the trainer's
tokens/s (pass --trainer_tokens_per_second). The trainer's gain from row filling is the ratio of
non-pad shares (it trains on rows, whatever they hold): (1 - padding UL2R) / (1 - padding UL2R-pf).

  python benchmarks/ul2r_pipeline.py [--corpus demo] [--inputs_length 1024 --targets_length 1024]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import seqio
import tensorflow as tf

from ul2flan import vocabularies as vocab_lib
from ul2flan.training import data
from ul2flan.ul2 import denoisers
from ul2flan.ul2 import preprocessors
from ul2flan.ul2 import sources as corpus_sources
from ul2flan.ul2 import tasks as ul2_tasks


@dataclasses.dataclass
class Throughput:
  rows_per_s: float
  examples_per_s: float
  nonpad_tokens_per_s: float
  row_tokens_per_s: float

  @property
  def padding(self) -> float:
    return 1 - self.nonpad_tokens_per_s / self.row_tokens_per_s


def _concatenate_and_chunk(dataset: tf.data.Dataset, sequence_length=None) -> tf.data.Dataset:
  """Documents concatenated and cut to row length - 1 (the EOS comes next): no packing work."""
  return preprocessors.concatenate_and_chunk(dataset, sequence_length["targets"] - 1,
                                             denoisers.DEFAULT_DOCS_PER_GROUP)


def _lm_task(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
             concatenate: bool) -> seqio.Task:
  """Causal-LM reading of the corpus: tokenize (and optionally concatenate), nothing else."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  preprocessors = [functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
                   seqio.preprocessors.tokenize]
  if concatenate:
    preprocessors.append(_concatenate_and_chunk)
  preprocessors.append(seqio.preprocessors.append_eos_after_trim)
  return seqio.TaskRegistry.add(
      name, source=source, preprocessors=preprocessors,
      output_features={"targets": seqio.Feature(vocabulary, add_eos=True)}, metric_fns=[])


def _measure(task: seqio.Task, converter: seqio.FeatureConverter, lengths: dict[str, int],
             args: argparse.Namespace) -> Throughput:
  examples = task.get_dataset(lengths, split=args.split, shuffle=args.shuffle, seed=args.seed,
                              num_epochs=None)
  rows = converter(examples, lengths).batch(args.batch_size).prefetch(2)
  iterator = rows.as_numpy_iterator()
  for _ in range(args.warmup_batches):
    next(iterator)
  nonpad_tokens = row_tokens = num_rows = examples_in_rows = 0
  start = time.perf_counter()
  while time.perf_counter() - start < args.seconds:
    batch = next(iterator)
    targets = batch["decoder_target_tokens"]
    nonpad_tokens += int((targets != 0).sum())
    row_tokens += targets.size
    num_rows += targets.shape[0]
    segments = batch.get("decoder_segment_ids")
    if segments is None:  # unpacked rows hold one example each
      examples_in_rows += targets.shape[0]
    else:
      examples_in_rows += int(segments.max(axis=1).sum())
  elapsed = time.perf_counter() - start
  return Throughput(num_rows / elapsed, examples_in_rows / elapsed, nonpad_tokens / elapsed,
                    row_tokens / elapsed)


def _print(name: str, t: Throughput) -> None:
  print(f"{name:9s} rows/s {t.rows_per_s:10.1f}  examples/s {t.examples_per_s:10.1f}  "
        f"non-pad tokens/s {t.nonpad_tokens_per_s:12.0f}  row tokens/s {t.row_tokens_per_s:12.0f}  "
        f"padding {t.padding:6.1%}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--corpus", default="demo", help="corpus spec, see corpus_sources")
  parser.add_argument("--preset", default="UL2R", choices=sorted(denoisers.PRESETS))
  parser.add_argument("--inputs_length", type=int, default=1024)
  parser.add_argument("--targets_length", type=int, default=1024)
  parser.add_argument("--split", default="train")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--seconds", type=float, default=15.0, help="measured time per pipeline")
  parser.add_argument("--warmup_batches", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--shuffle", action="store_true",
                      help="shuffle examples (off: a shuffle buffer drained during the measured "
                           "window would inflate the figures)")
  parser.add_argument("--trainer_tokens_per_second", type=float, default=None,
                      help="the trainer's consumption (row tokens/s) to compare against")
  args = parser.parse_args(argv)

  vocabulary = vocab_lib.get_vocabulary()
  source = corpus_sources.source_from_spec(args.corpus)
  row_length = args.inputs_length + args.targets_length
  mixture = denoisers.get_preset(args.preset, inputs_length=args.inputs_length,
                                 targets_length=args.targets_length)
  ul2_task = ul2_tasks.register_ul2_task("bench_ul2r", source, mixture, vocabulary,
                                         overwrite=True)
  per_feature_task = ul2_tasks.register_ul2_task(
      "bench_ul2r_pf", source, dataclasses.replace(mixture, fill_rows=False), vocabulary,
      overwrite=True)
  print(f"corpus {args.corpus!r}, preset {args.preset}, rows of {args.inputs_length} + "
        f"{args.targets_length} tokens, batches of {args.batch_size}, {args.seconds:g} s per "
        f"pipeline, tf.data defaults (AUTOTUNE)")
  lm_lengths = {"targets": row_length}
  identity = _measure(_lm_task("bench_identity", source, vocabulary, concatenate=False),
                      seqio.LMFeatureConverter(pack=True), lm_lengths, args)
  _print("identity", identity)
  concat = _measure(_lm_task("bench_concat", source, vocabulary, concatenate=True),
                    seqio.LMFeatureConverter(pack=True), lm_lengths, args)
  _print("concat", concat)
  prefix_lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  ul2r = _measure(ul2_task, data.PrefixLMFeatureConverter(pack=True), prefix_lengths, args)
  _print(args.preset, ul2r)
  per_feature = _measure(per_feature_task, data.PrefixLMFeatureConverter(pack=True),
                         prefix_lengths, args)
  _print(f"{args.preset}-pf", per_feature)
  ratio = ul2r.nonpad_tokens_per_s / identity.nonpad_tokens_per_s
  print(f"{args.preset} / identity: non-pad tokens/s {ratio:.2f}x (target >= 0.5x), "
        f"rows/s {ul2r.rows_per_s / identity.rows_per_s:.2f}x")
  print(f"{args.preset} / concat (denoising cost alone): non-pad tokens/s "
        f"{ul2r.nonpad_tokens_per_s / concat.nonpad_tokens_per_s:.2f}x")
  print(f"row filling: padding {per_feature.padding:.1%} -> {ul2r.padding:.1%}; text tokens per "
        f"trained row {(1 - ul2r.padding) / (1 - per_feature.padding):.2f}x (the trainer's "
        f"tokens/s gain); pipeline non-pad tokens/s "
        f"{ul2r.nonpad_tokens_per_s / per_feature.nonpad_tokens_per_s:.2f}x")
  if args.trainer_tokens_per_second:
    supply = ul2r.row_tokens_per_s / args.trainer_tokens_per_second
    print(f"{args.preset} row tokens/s / trainer tokens/s: {supply:.1f}x (target >= 10x)")
  return 0


if __name__ == "__main__":
  tf.get_logger().setLevel("ERROR")
  raise SystemExit(main())
