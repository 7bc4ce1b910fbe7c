"""`ul2flan infer`: generate text from a checkpoint (greedy, sampled or self-consistency voted).

  ul2flan infer --checkpoint PATH --prompt TEXT [--prompt TEXT ...] [--max_new_tokens N]
      [--temperature T] [--top_k K] [--top_p P] [--num_samples N] [--self_consistency]
      [--stop TEXT ...]
      [--gin_file FILE ...] [--gin.NAME=VALUE ...] [--prefix_lm | --no-prefix_lm] [--json]

Without gin files the model is described by the run.json the trainer wrote into the model dir,
which also says whether it is a prefix LM. `--self_consistency` samples chains (default 40 at
temperature 0.7, top-k 40, the self-consistency paper's setting) and majority-votes the answers
extracted from them ("... the answer is X").
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

from ul2flan import config as config_lib
from ul2flan.commands import configurables  # noqa: F401  pylint: disable=unused-import
from ul2flan.evaluation import self_consistency
from ul2flan.inference import decoding
from ul2flan.inference import generator as generator_lib

SC_DEFAULTS = {"temperature": 0.7, "top_k": 40, "num_samples": 40}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--checkpoint", required=True,
                      help="Model dir, its checkpoints dir, or one step dir.")
  parser.add_argument("--prompt", action="append", required=True,
                      help="Prompt text (repeatable; prompts are decoded as one batch).")
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--temperature", type=float, default=None,
                      help="0 = greedy (default; 0.7 with --self_consistency).")
  parser.add_argument("--top_k", type=int, default=None,
                      help="Sample among the K most likely tokens (default off; 40 with "
                           "--self_consistency).")
  parser.add_argument("--top_p", type=float, default=None, help="Nucleus sampling mass.")
  parser.add_argument("--num_samples", type=int, default=None,
                      help="Continuations per prompt (default 1; 40 with --self_consistency).")
  parser.add_argument("--self_consistency", action="store_true",
                      help="Majority-vote the answers extracted from the sampled chains.")
  parser.add_argument("--stop", action="append", default=[],
                      help="Stop sequence (repeatable): generation ends at the first one, and "
                           "the text is cut there.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch_size", type=int, default=16, help="Sequences per decode call.")
  parser.add_argument("--prefix_lm", action=argparse.BooleanOptionalAction, default=None,
                      help="Attend bidirectionally over the prompt (default: from the "
                           "checkpoint's run.json).")
  parser.add_argument("--json", action="store_true", help="One JSON object per prompt.")
  parser.add_argument("--gin_file", action="append", default=[],
                      help="Gin file(s) of the model (default: the model dir's run.json).")
  # `--gin.NAME=VALUE` bindings are split off by ul2flan.config.split_gin_args: `args.gin`.


def sampling_settings(args: argparse.Namespace) -> dict:
  """temperature / top_k / top_p / num_samples after defaults, checked before any loading."""
  defaults = SC_DEFAULTS if args.self_consistency else {"temperature": 0.0, "top_k": None,
                                                        "num_samples": 1}
  settings = {
      "temperature": defaults["temperature"] if args.temperature is None else args.temperature,
      "top_k": defaults["top_k"] if args.top_k is None else args.top_k,
      "top_p": args.top_p,
      "num_samples": defaults["num_samples"] if args.num_samples is None else args.num_samples,
  }
  if args.max_new_tokens < 1:
    raise ValueError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
  decoding.check_sampling(settings["temperature"], settings["top_k"], settings["top_p"],
                          settings["num_samples"])
  if args.self_consistency and settings["temperature"] == 0 and settings["num_samples"] > 1:
    raise ValueError("--self_consistency with --temperature 0 would vote over identical greedy "
                     "chains; use a temperature > 0.")
  if args.batch_size < 1:
    raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
  if any(not p.strip() for p in args.prompt):
    raise ValueError("--prompt must not be empty")
  return settings


def _print_text(prompt: str, index: int, record: dict) -> None:
  print(f"=== prompt {index + 1}: {prompt}")
  if "answer" in record:
    counts = collections.Counter(a for a in record["answers"] if a)
    votes = ", ".join(f"{a!r} x{n}" for a, n in counts.most_common(5)) or "none"
    print(f"answer: {record['answer']!r}  (votes: {votes}; {len(record['answers'])} chains)")
    print(f"--- first chain:\n{record['samples'][0]}")
    return
  for n, sample in enumerate(record["samples"]):
    if len(record["samples"]) > 1:
      print(f"--- sample {n + 1}")
    print(sample)


def load_generator(args: argparse.Namespace, **kwargs) -> generator_lib.Generator:
  """The checkpoint's generator: described by its run.json, or by --gin_file/--gin bindings."""
  run_info = None
  if args.gin and not args.gin_file:
    raise ValueError("--gin.NAME=VALUE bindings describe a model given by --gin_file; without "
                     "gin files the model is the one its run.json describes")
  if args.gin_file:
    config_lib.parse_gin(args.gin_file, args.gin, optional_macros=config_lib.RUN_INFO_MACROS)
    run_info = config_lib.run_info_from_gin()
  return generator_lib.load_generator(args.checkpoint, run_info, **kwargs)


def run(args: argparse.Namespace) -> int:
  settings = sampling_settings(args)
  generator = load_generator(args, prefix_lm=args.prefix_lm, batch_size=args.batch_size)
  sampling = self_consistency.Sampling(
      num_samples=settings["num_samples"], max_new_tokens=args.max_new_tokens,
      temperature=settings["temperature"], top_k=settings["top_k"], top_p=settings["top_p"],
      seed=args.seed, stop_sequences=tuple(args.stop))
  if args.self_consistency:
    voted = self_consistency.self_consistency(generator, args.prompt, sampling)
    records = [{"answer": v.answer, "answers": v.answers, "samples": v.samples} for v in voted]
  else:
    outputs = generator.generate(args.prompt, **sampling.generate_kwargs())
    records = [{"samples": samples} for samples in outputs]
  for index, (prompt, record) in enumerate(zip(args.prompt, records)):
    if args.json:
      print(json.dumps({"prompt": prompt, **record}, ensure_ascii=False))
    else:
      _print_text(prompt, index, record)
  stats = generator.last_stats
  print(f"[{generator.layout_name}] {stats['generated_tokens']} tokens "
        f"for {stats['examples']} prompts in {stats['seconds']:.2f}s: "
        f"{stats['examples_per_second']:.2f} examples/s, {stats['tokens_per_second']:.1f} "
        f"tokens/s (first call includes compilation)", file=sys.stderr)
  return 0
