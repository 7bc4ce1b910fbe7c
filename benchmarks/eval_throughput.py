"""Evaluation throughput: `ul2flan eval`'s path against transformers' batched `generate`.

  python benchmarks/eval_throughput.py --hf_dir /path/to/hf_model [--num_examples 90]
      [--tasks boolean_expressions,causal_judgement,date_understanding] [--max_new_tokens 8,task]
      [--batch_size 16] [--torch_threads 2] [--steady_passes 2] [--output eval_throughput.json]

One process scores the same N BBH prompts (N / 3 from each of 3 tasks, 3-shot, direct) twice
over: with ul2flan (the Hugging Face model imported here into a temporary dir with `import-hf`,
then `harness.evaluate_task` over `load_generator`, as `ul2flan eval` runs it) and with
transformers (`AutoModelForCausalLM`, float32, greedy `generate` over batches of `--batch_size`
prompts sorted by length and left-padded, `torch.set_num_threads(--torch_threads)`). Both get
the same prompt texts (through the tokenizer's chat template when it has one, as `ul2flan eval`
does by default), the same `max_new_tokens` and the same stop sequences (transformers'
`stop_strings`; ul2flan's in-loop stop matcher), and both cut and score continuations the same
way. Token counts differ by the one start slot ul2flan puts before every prompt.

Per `max_new_tokens` setting (8, and `task`: the task's own, 64 for BBH direct): pass 1 of each
system is timed cold (ul2flan compiles its programs in it; transformers warms up), then
`--steady_passes` more passes of each, alternating so that drifting load on a shared machine
hits both. Reported: examples/s of each pass, the compile-inclusive ratio (ul2flan / transformers,
pass 1) and the steady-state ratio (median over the later passes of each pass's ratio), the
accuracy of each and how often their extracted answers agree. Written to `--output` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from ul2flan import stop_sequences  # noqa: E402
from ul2flan.evaluation import bbh, common, harness  # noqa: E402
from ul2flan.hf import importer  # noqa: E402
from ul2flan.inference import generator as generator_lib  # noqa: E402

DEFAULT_TASKS = "boolean_expressions,causal_judgement,date_understanding"  # the first 3 by name


def select_task(data_dir: str, tasks: list[str], num_examples: int):
  """The BBH direct task over `tasks` and the first num_examples / len(tasks) of each."""
  task = bbh.build_task(data_dir, "direct", tasks=tasks)
  per_task = num_examples // len(tasks)
  if per_task < 1:
    raise SystemExit(f"--num_examples {num_examples} is less than one per task")
  return task, harness.select_examples(task, per_task), per_task


class HfRunner:
  """transformers' batched greedy generation over the same prompts and stops."""

  def __init__(self, hf_dir: str, threads: int, batch_size: int, add_special_tokens: bool):
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads)
    self.torch = torch
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, padding_side="left")
    if self.tokenizer.pad_token is None:
      self.tokenizer.pad_token = self.tokenizer.eos_token
    self.model = transformers.AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=torch.float32).eval()
    self.batch_size = batch_size
    self.add_special_tokens = add_special_tokens

  def count_tokens(self, text: str) -> int:
    return len(self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"])

  def generate(self, prompts: list[str], max_new_tokens: int, stops: tuple[str, ...]) -> list[str]:
    order = sorted(range(len(prompts)), key=lambda i: self.count_tokens(prompts[i]))
    texts = [""] * len(prompts)
    for begin in range(0, len(order), self.batch_size):
      batch = order[begin:begin + self.batch_size]
      encoded = self.tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                               add_special_tokens=self.add_special_tokens)
      with self.torch.no_grad():
        out = self.model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                  stop_strings=list(stops) or None, tokenizer=self.tokenizer,
                                  pad_token_id=self.tokenizer.pad_token_id)
      new = out[:, encoded["input_ids"].shape[1]:]
      for i, ids in zip(batch, new):
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        texts[i] = stop_sequences.truncate(text, stops)
    return texts


def hf_pass(runner: HfRunner, task, examples, prompts, max_new_tokens: int) -> dict:
  start = time.perf_counter()
  texts = runner.generate(prompts, max_new_tokens, tuple(task.stop_sequences))
  answers = [task.extract_answer(stop_sequences.truncate(t, task.stop_sequences), e)
             for t, e in zip(texts, examples)]
  seconds = time.perf_counter() - start
  correct = [task.is_correct(a, e) for a, e in zip(answers, examples)]
  return {"seconds": seconds, "examples_per_second": len(examples) / seconds,
          "accuracy": 100.0 * sum(correct) / len(correct), "answers": answers}


def ul2flan_pass(generator, task, config) -> dict:
  output_dir = tempfile.mkdtemp(prefix="eval_throughput_out_")
  result = harness.evaluate_task(generator, task,
                                 harness.HarnessConfig(**{**config, "output_dir": output_dir}))
  with open(result["predictions_file"], encoding="utf-8") as f:
    answers = [json.loads(line)["extracted"] for line in f]
  return {"seconds": result["seconds"], "examples_per_second": result["examples_per_second"],
          "accuracy": result["score"], "answers": answers,
          "generator": {k: v for k, v in generator.last_stats.items()
                        if k in ("decode_calls", "decode_steps", "prompt_tokens",
                                 "padded_prompt_tokens", "generated_tokens")}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--hf_dir", required=True, help="A Hugging Face causal LM dir.")
  parser.add_argument("--data_dir", default=os.path.join(REPO, "..", "shared", "data", "eval"))
  parser.add_argument("--tasks", default=DEFAULT_TASKS, help="Comma-separated BBH tasks.")
  parser.add_argument("--num_examples", type=int, default=90)
  parser.add_argument("--max_new_tokens", default="8,task",
                      help="Comma-separated settings; 'task' is the task's own (64).")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--torch_threads", type=int, default=2)
  parser.add_argument("--steady_passes", type=int, default=2)
  parser.add_argument("--scan_layers", action="store_true", help="Import with scanned layers.")
  parser.add_argument("--chat_template", action=argparse.BooleanOptionalAction, default=None,
                      help="Default: when the tokenizer has one (as `ul2flan eval`).")
  parser.add_argument("--output", default="eval_throughput.json")
  args = parser.parse_args()

  task, examples, per_task = select_task(args.data_dir, args.tasks.split(","), args.num_examples)
  model_dir = os.path.join(tempfile.mkdtemp(prefix="eval_throughput_"), "model")
  start = time.perf_counter()
  importer.import_hf(args.hf_dir, model_dir, scan_layers=args.scan_layers)
  print(f"imported {args.hf_dir} in {time.perf_counter() - start:.1f}s", flush=True)
  generator = generator_lib.load_generator(model_dir, batch_size=args.batch_size)
  base_config = {"batch_size": None, "max_examples_per_subtask": per_task,
                 "chat_template": args.chat_template}
  wrap = harness.prompt_wrapper(generator, harness.HarnessConfig(**base_config))
  prompts = [common.fit_prompt(e, None, None, wrap).text for e in examples]
  runner = HfRunner(args.hf_dir, args.torch_threads, args.batch_size,
                    add_special_tokens=wrap is None)
  prompt_tokens = {"ul2flan": [len(generator.encode(p)) for p in prompts],
                   "transformers": [runner.count_tokens(p) for p in prompts]}

  settings = []
  for setting in args.max_new_tokens.split(","):
    max_new_tokens = task.max_new_tokens if setting == "task" else int(setting)
    config = {**base_config, "max_new_tokens": max_new_tokens}
    passes = {"ul2flan": [], "transformers": []}
    for index in range(1 + args.steady_passes):
      passes["ul2flan"].append(ul2flan_pass(generator, task, config))
      passes["transformers"].append(hf_pass(runner, task, examples, prompts, max_new_tokens))
      ours, theirs = passes["ul2flan"][-1], passes["transformers"][-1]
      print(f"max_new_tokens {max_new_tokens} pass {index + 1}: ul2flan "
            f"{ours['examples_per_second']:.2f} ex/s ({ours['seconds']:.1f}s), transformers "
            f"{theirs['examples_per_second']:.2f} ex/s ({theirs['seconds']:.1f}s): "
            f"{ours['examples_per_second'] / theirs['examples_per_second']:.2f}x", flush=True)
    ratios = [o["examples_per_second"] / t["examples_per_second"]
              for o, t in zip(passes["ul2flan"], passes["transformers"])]
    agree = [a == b for a, b in zip(passes["ul2flan"][0]["answers"],
                                    passes["transformers"][0]["answers"])]
    settings.append({
        "max_new_tokens": max_new_tokens,
        "ratio_with_compile": ratios[0],
        "ratio_steady": statistics.median(ratios[1:]) if ratios[1:] else None,
        "ratios": ratios,
        "ul2flan_examples_per_second": [p["examples_per_second"] for p in passes["ul2flan"]],
        "transformers_examples_per_second": [p["examples_per_second"]
                                             for p in passes["transformers"]],
        "accuracy": {name: p[0]["accuracy"] for name, p in passes.items()},
        "answers_agree": sum(agree) / len(agree),
        "ul2flan_generator": passes["ul2flan"][-1]["generator"],
    })
    print(json.dumps({k: v for k, v in settings[-1].items() if k != "ratios"}), flush=True)

  report = {"hf_dir": args.hf_dir, "tasks": args.tasks.split(","), "num_examples": len(examples),
            "batch_size": args.batch_size, "torch_threads": args.torch_threads,
            "chat_template": wrap is not None, "stop_sequences": list(task.stop_sequences),
            "prompt_tokens_mean": {k: statistics.mean(v) for k, v in prompt_tokens.items()},
            "settings": settings, "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg()}
  with open(args.output, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
