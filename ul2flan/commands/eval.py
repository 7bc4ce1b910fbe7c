"""`ul2flan eval`: run the Flan-paper evaluation suite on a checkpoint.

  ul2flan eval --checkpoint PATH --benchmark {mmlu,bbh,tydiqa,mgsm,all} --data_dir DIR
      [--mode direct|cot|both] [--output_dir DIR] [--batch_size N] [--max_examples N]
      [--self_consistency N] [--[no-]chat_template] [--gin_file FILE ...] [--gin.NAME=VALUE ...]

The data is checked before the checkpoint is loaded, so a wrong --data_dir fails in seconds. Each
task's prompts go to the generator in one call, so it can batch them by length; generation stops
at the task's stop sequences (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from ul2flan.commands import infer
from ul2flan.evaluation import common
from ul2flan.evaluation import harness
from ul2flan.evaluation import suite

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--checkpoint", required=True, help="Checkpoint directory to evaluate.")
  parser.add_argument("--benchmark", default="all", choices=suite.BENCHMARKS + ("all",))
  parser.add_argument("--data_dir", required=True,
                      help="Folder holding mmlu/, bbh/, tydiqa_goldp/ and mgsm/ in their public "
                           "formats (e.g. shared/data/eval).")
  parser.add_argument("--mode", default="both", choices=suite.MODES,
                      help="direct, cot or both (TyDi QA is always direct, MGSM always CoT).")
  parser.add_argument("--output_dir", default=None,
                      help="Where results.json and <task>.predictions.jsonl go "
                           "(default: <checkpoint>/eval).")
  parser.add_argument("--batch_size", type=int, default=16,
                      help="Prompts decoded together (rows of one decode call).")
  parser.add_argument("--max_examples", type=int, default=None,
                      help="Evaluate only the first N examples of each subtask (quick runs).")
  parser.add_argument("--self_consistency", type=int, default=1,
                      help="Sampled chains per CoT question, majority-voted (1 = greedy).")
  parser.add_argument("--sc_temperature", type=float, default=0.7)
  parser.add_argument("--sc_top_k", type=int, default=40)
  parser.add_argument("--max_prompt_tokens", type=int, default=None,
                      help="Prompt token budget; exemplars are dropped from the front to fit "
                           "(default: the generator's max_prompt_tokens attribute, if any).")
  parser.add_argument("--max_new_tokens", type=int, default=None,
                      help="Override each task's generation length.")
  parser.add_argument("--mmlu_split", default="test", choices=("val", "test"))
  parser.add_argument("--mmlu_cot_prompts", default=None,
                      help="JSON subject -> CoT prompt text (e.g. the Flan mmlu-cot.json); "
                           "without it MMLU CoT uses the dev exemplars with answers only.")
  parser.add_argument("--chat_template", action=argparse.BooleanOptionalAction, default=None,
                      help="Send prompts through the tokenizer's chat template as one user turn "
                           "(default: when the model's vocabulary has one).")
  parser.add_argument("--chat_system_prompt", default=None,
                      help="System turn for the chat template (default: the template's own).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="Gin file(s) of the model, for building the generator.")
  # `--gin.NAME=VALUE` bindings are split off by ul2flan.config.split_gin_args: `args.gin`.


def run(args: argparse.Namespace) -> int:
  # Settings and data are checked before the (slow) checkpoint load.
  try:
    if args.batch_size < 1:
      raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    config = harness.HarnessConfig(
        batch_size=None, max_examples_per_subtask=args.max_examples,
        self_consistency=args.self_consistency, sc_temperature=args.sc_temperature,
        sc_top_k=args.sc_top_k, max_new_tokens=args.max_new_tokens, seed=args.seed,
        chat_template=args.chat_template, chat_system_prompt=args.chat_system_prompt)
    tasks = suite.build_tasks(args.data_dir, args.benchmark, args.mode,
                              mmlu_split=args.mmlu_split, mmlu_cot_prompts=args.mmlu_cot_prompts)
  except common.EvalDataError as e:
    raise ValueError(str(e)) from None
  for task in tasks:
    if task.missing:
      logger.warning("%s: no data for %d subtasks: %s", task.name, len(task.missing),
                      ", ".join(task.missing))

  generator = infer.load_generator(args, batch_size=args.batch_size)
  # A generator that knows its input length limit says so; the flag overrides it.
  output_dir = args.output_dir or os.path.join(args.checkpoint, "eval")
  config = dataclasses.replace(harness.fitted_to(config, generator, args.max_prompt_tokens),
                               output_dir=output_dir)
  summary = harness.run_suite(generator, tasks, config)
  print(harness.format_summary(summary))
  print(f"results: {os.path.join(output_dir, 'results.json')}")
  return 0
