"""Show a seqio task's examples after preprocessing, with per-denoiser statistics.

`ul2flan inspect-task NAME [--split S] [--num_examples N] [--format text|jsonl] [--stats]
[--rates] [--module MOD]`. Works on any registered task or mixture; UL2 tasks also get their
denoiser, sentinels rendered as `<extra_id_k>`, and span statistics.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import difflib
import importlib
import json
import sys
from typing import Any, Iterable, Mapping, Sequence, TextIO

import seqio
import tensorflow as tf

from ul2flan import config as config_lib
from ul2flan import row_layout
from ul2flan import vocabularies
from ul2flan.commands import configurables  # noqa: F401  pylint: disable=unused-import
from ul2flan.flan import rates
from ul2flan.training import data
from ul2flan.ul2 import lengths as ul2_lengths
from ul2flan.ul2 import tasks as ul2_tasks

DEFAULT_MODULE = "ul2flan_tasks"
NO_DENOISER = "(none)"


class InspectError(Exception):
  """A user error: printed without a traceback, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("name", help="seqio task or mixture name, e.g. demo_ul2r")
  parser.add_argument("--split", default="train")
  parser.add_argument("--num_examples", type=int, default=None,
                      help="examples to print (default 5; 0 with --stats or --rates)")
  parser.add_argument("--format", choices=("text", "jsonl"), default="text")
  parser.add_argument("--stats", action="store_true",
                      help="per-denoiser share, corruption rate, mean span length, lengths and "
                           "padding waste after packing")
  parser.add_argument("--stats_examples", type=int, default=2000,
                      help="examples measured by --stats")
  parser.add_argument("--rates", action="store_true",
                      help="print the mixture's rates table (ul2flan.flan.rates)")
  parser.add_argument("--module", action="append", default=None,
                      help=f"module(s) that register tasks (default {DEFAULT_MODULE})")
  parser.add_argument("--sequence_length", default=None,
                      help="e.g. inputs=128,targets=128 (default: a UL2 task's own lengths)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file applied before the task module is imported (repeatable)")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
  out = out or sys.stdout
  try:
    return _run(args, out)
  except InspectError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------------------
# Setup.

def _apply_gin(args: argparse.Namespace) -> None:
  bindings = getattr(args, "gin", None) or []
  if args.gin_file or bindings:
    config_lib.parse_gin(args.gin_file, bindings)


def _import_modules(modules: Sequence[str]) -> None:
  for module in modules:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise InspectError(f"cannot import task module {module!r} (--module): {e}") from None


def _get_task(name: str):
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    names = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InspectError(f"no task or mixture named {name!r} is registered{hint} (registered: "
                       f"{len(names)}; import another module with --module)") from None


def _parse_sequence_length(text: str | None) -> dict[str, int] | None:
  if not text:
    return None
  lengths = {}
  for item in text.split(","):
    key, sep, value = item.partition("=")
    if not sep or not value.strip().isdigit():
      raise InspectError(f"bad --sequence_length {text!r}; expected e.g. inputs=128,targets=128")
    lengths[key.strip()] = int(value)
  return lengths


def _task_mixtures(task) -> dict[str, Any]:
  """{task name: DenoiserMixture} for the UL2 tasks inside `task` (a task or a mixture)."""
  subtasks = getattr(task, "tasks", None) or [task]
  found = {t.name: ul2_tasks.task_mixture(t.name) for t in subtasks}
  return {k: v for k, v in found.items() if v is not None}


def _default_sequence_length(mixtures: Mapping[str, Any]) -> dict[str, int] | None:
  lengths = {(m.inputs_length, m.targets_length) for m in mixtures.values()}
  if len(lengths) == 1:
    inputs, targets = lengths.pop()
    return {"inputs": inputs, "targets": targets}
  return None


# ------------------------------------------------------------------------------------------------
# Rendering.

@dataclasses.dataclass
class _Renderer:
  """Decodes ids, showing sentinels as <extra_id_k> whatever the vocabulary calls those ids."""
  vocabulary: Any
  sentinel_names: Mapping[int, str] = dataclasses.field(default_factory=dict)

  def decode(self, ids: Sequence[int]) -> str:
    if not self.sentinel_names:
      return self.vocabulary.decode(list(ids))
    parts, run = [], []
    for i in ids:
      if i in self.sentinel_names:
        if run:
          parts.append(self.vocabulary.decode(run))
          run = []
        parts.append(self.sentinel_names[i])
      else:
        run.append(i)
    if run:
      parts.append(self.vocabulary.decode(run))
    return " ".join(p for p in parts if p)


def _as_python(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if hasattr(value, "tolist"):
    value = value.tolist()
    return _as_python(value) if isinstance(value, bytes) else value
  return value


def _print_examples(examples: Iterable[Mapping[str, Any]], renderers: Mapping[str, _Renderer],
                    fmt: str, out: TextIO) -> None:
  for index, ex in enumerate(examples):
    record = {"denoiser": _as_python(ex["denoiser"]) if "denoiser" in ex else None}
    for key, value in ex.items():
      if key != "denoiser":
        record[key] = _as_python(value)
    if fmt == "jsonl":
      for key, renderer in renderers.items():
        if key in ex:
          record[f"{key}_text"] = renderer.decode(record[key])
      print(json.dumps(record, ensure_ascii=False), file=out)
      continue
    lengths = ", ".join(f"{k} {len(record[k])}" for k in renderers if k in ex)
    denoiser = record["denoiser"] or NO_DENOISER
    print(f"--- example {index}  denoiser: {denoiser}  ({lengths} tokens)", file=out)
    for key, renderer in renderers.items():
      if key in ex:
        print(f"{key + ':':9s}{renderer.decode(record[key])}", file=out)


# ------------------------------------------------------------------------------------------------
# Statistics.

@dataclasses.dataclass
class _Tally:
  examples: int = 0
  inputs_tokens: int = 0
  targets_tokens: int = 0
  max_inputs: int = 0
  max_targets: int = 0
  noise_tokens: int = 0
  segment_tokens: int = 0
  spans: int = 0
  members: list = dataclasses.field(default_factory=list)


def _strip_eos(ids: list[int], eos_id: int) -> list[int]:
  return ids[:-1] if ids and ids[-1] == eos_id else ids


def _span_statistics(ex: Mapping[str, Any], compiled, eos_id: int) -> tuple[int, int, int] | None:
  """(noise tokens, segment tokens, spans) of a UL2 example, from its ids alone."""
  name = _as_python(ex["denoiser"])
  by_name = {c.denoiser.name: c for c in compiled.denoisers}
  if name not in by_name:
    return None
  c = by_name[name]
  inputs = _strip_eos(_as_python(ex["inputs"]), eos_id)[len(c.mode_ids):]
  targets = _strip_eos(_as_python(ex["targets"]), eos_id)
  if not c.denoiser.is_span_corruption:
    return len(targets), len(inputs) + len(targets), 1
  sentinels = set(compiled.sentinel_ids)
  spans = sum(1 for i in inputs if i in sentinels)
  noise = len(targets) - spans
  return noise, noise + len(inputs) - spans, spans


def _packing_waste(examples: Sequence[Mapping[str, Any]],
                   sequence_length: Mapping[str, int] | None) -> float:
  """Fraction of padding in the packed rows the trainer's feature converter would build."""
  if not examples:
    return float("nan")
  keys = [k for k in ("inputs", "targets") if k in examples[0]]
  if sequence_length and all(sequence_length.get(k) for k in keys):
    lengths = {k: sequence_length[k] for k in keys}  # the row the trainer packs into
  else:
    lengths = {k: max(len(ex[k]) for ex in examples) for k in keys}
  columns = {k: tf.ragged.constant([_as_python(ex[k]) for ex in examples], dtype=tf.int32)
             for k in keys}
  ds = tf.data.Dataset.from_tensor_slices(columns).map(lambda x: {k: x[k] for k in keys})
  converter = (row_layout.RowLayout("prefix_lm").feature_converter(pack=True) if keys == ["inputs", "targets"]
               else seqio.LMFeatureConverter(pack=True))
  tokens = total = 0
  for row in converter(ds, lengths).as_numpy_iterator():
    tokens += int((row["decoder_target_tokens"] != 0).sum())
    total += row["decoder_target_tokens"].size
  return 1 - tokens / total


def _print_stats(examples: Sequence[Mapping[str, Any]], mixtures: Mapping[str, Any],
                 vocabulary, sequence_length: Mapping[str, int] | None, out: TextIO) -> None:
  compiled = {name: ul2_lengths.compile_mixture(m, vocabulary, sequence_length)
              for name, m in mixtures.items()}
  configured = collections.defaultdict(float)
  for m in mixtures.values():  # across several UL2 tasks the task rates are not known: sum
    for d, rate in zip(m.denoisers, m.rates):
      configured[d.name] += rate / len(mixtures)
  tallies: dict[str, _Tally] = collections.defaultdict(_Tally)
  eos_id = vocabulary.eos_id
  for ex in examples:
    name = _as_python(ex.get("denoiser", NO_DENOISER))
    tally = tallies[name]
    tally.examples += 1
    tally.members.append(ex)
    for key in ("inputs", "targets"):
      if key in ex:
        n = len(ex[key])
        setattr(tally, f"{key}_tokens", getattr(tally, f"{key}_tokens") + n)
        setattr(tally, f"max_{key}", max(getattr(tally, f"max_{key}"), n))
    for c in compiled.values():
      stats = _span_statistics(ex, c, eos_id) if "denoiser" in ex else None
      if stats:
        tally.noise_tokens += stats[0]
        tally.segment_tokens += stats[1]
        tally.spans += stats[2]
        break
  header = (f"{'denoiser':22s} {'share':>6s} {'rate':>6s} {'corrupt':>7s} {'span':>7s} "
            f"{'inputs mean/max':>16s} {'targets mean/max':>17s} {'pad waste':>9s}")
  print(f"{len(examples)} examples of split; lengths {sequence_length or 'as produced'}", file=out)
  print(header, file=out)
  for name in sorted(tallies):
    t = tallies[name]
    rate = f"{configured[name]:.3f}" if name in configured else "-"
    corrupt = f"{t.noise_tokens / t.segment_tokens:.3f}" if t.segment_tokens else "-"
    span = f"{t.noise_tokens / t.spans:.2f}" if t.spans else "-"
    inputs = f"{t.inputs_tokens / t.examples:.1f}/{t.max_inputs}" if t.max_inputs else "-"
    targets = f"{t.targets_tokens / t.examples:.1f}/{t.max_targets}" if t.max_targets else "-"
    waste = _packing_waste(t.members, sequence_length)
    print(f"{name:22s} {t.examples / len(examples):6.3f} {rate:>6s} {corrupt:>7s} {span:>7s} "
          f"{inputs:>16s} {targets:>17s} {waste:9.3f}", file=out)
  print(f"{'all (packed together)':22s} {1:6.3f} {'':>6s} {'':>7s} {'':>7s} {'':>16s} {'':>17s} "
        f"{_packing_waste(examples, sequence_length):9.3f}", file=out)
  print("corrupt: noise (S: target) tokens / segment tokens; span: mean noise span length; "
        "pad waste: padding share of packed rows of inputs + targets tokens (the trainer's "
        "feature converter, pack=True)", file=out)


# ------------------------------------------------------------------------------------------------

def _print_rates(name: str, split: str, out: TextIO) -> None:
  print(rates.rates_table(name, split), file=out)


def _run(args: argparse.Namespace, out: TextIO) -> int:
  _apply_gin(args)
  _import_modules(args.module or [DEFAULT_MODULE])
  task = _get_task(args.name)
  if args.rates:
    _print_rates(args.name, args.split, out)
  num_examples = args.num_examples
  if num_examples is None:
    num_examples = 0 if (args.stats or args.rates) else 5
  mixtures = _task_mixtures(task)
  sequence_length = _parse_sequence_length(args.sequence_length) or _default_sequence_length(
      mixtures)
  wanted = max(num_examples, args.stats_examples if args.stats else 0)
  if wanted <= 0:
    return 0
  try:
    ds = task.get_dataset(sequence_length, split=args.split, shuffle=False, seed=args.seed)
    examples = list(ds.take(wanted).as_numpy_iterator())
  except ValueError as e:  # unknown split, a mixture that does not fit the lengths, ...
    raise InspectError(f"cannot build {args.name!r} split {args.split!r}: {e}") from None
  except FileNotFoundError as e:
    raise InspectError(str(e)) from None
  except tf.errors.OpError as e:  # bad data; main frees the pipeline and exits 2
    raise data.InputPipelineError(f"reading {args.name!r} split {args.split!r} failed: "
                                  f"{data.pipeline_error_message(e)}") from None
  if not examples:
    raise InspectError(f"{args.name!r} split {args.split!r} produced no examples")
  feature_vocabularies = {k: f.vocabulary for k, f in task.output_features.items()}
  names: dict[int, str] = {}
  if mixtures:
    any_vocab = next(iter(feature_vocabularies.values()))
    for m in mixtures.values():
      compiled = ul2_lengths.compile_mixture(m, any_vocab, sequence_length)
      names.update(vocabularies.sentinel_names(compiled.sentinel_ids))
  renderers = {k: _Renderer(v, names) for k, v in feature_vocabularies.items()}
  _print_examples(examples[:num_examples], renderers, args.format, out)
  if args.stats:
    vocabulary = (feature_vocabularies.get("targets")
                  or next(iter(feature_vocabularies.values())))
    _print_stats(examples[:args.stats_examples], mixtures, vocabulary, sequence_length, out)
  return 0
