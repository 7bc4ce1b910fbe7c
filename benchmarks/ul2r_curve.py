"""UL2R's denoisers over training steps: does R need more steps, or is its layout at fault?

  python benchmarks/ul2r_curve.py train --base runs/demo/base --out runs/ul2r_curve \
      [--steps 600] [--every 100]
  python benchmarks/ul2r_curve.py measure --out runs/ul2r_curve [--examples 48]

`train` runs two UL2R stages from the demo's base with `ul2flan train` and the demo's UL2R
settings (tiny model, `demo_ul2r`, 128 + 128, batch 16, 3e-3 cosine): `r_only` (R alone: the S
and X rates set to 1e-6) and `mixture` (U-PaLM's 50% S / 25% R / 25% X), each evaluated and
checkpointed every `--every` steps. Teacher-forced token accuracy per denoiser comes from the
eval pass (`metrics_eval.jsonl`: `accuracy/R`, `accuracy/X`, `accuracy/S`).

`measure` loads every checkpoint of both runs (and the base) and decodes, greedily and in the
trained layout (`[mode] inputs EOS`, bidirectional), `--examples` validation examples of each
denoiser: for R and X, whether the first span written after sentinel 0 is the gold span exactly;
for S, whether the first 4 target tokens are. It writes `OUT/curve.json` and a Markdown table
`OUT/curve.md` (docs/ul2r.md, "The R learning curve", has the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import seqio

import ul2flan_tasks  # noqa: F401  (registers demo_ul2r)
from ul2flan import checkpoints, vocabularies
from ul2flan.inference import generator as generator_lib

LENGTHS = {"inputs": 128, "targets": 128}
RUNS = {"r_only": ["ul2r_preset.rates = (1e-6, 1.0, 1e-6)"], "mixture": []}
KINDS = ("R", "X", "S")
S_PREFIX_TOKENS = 4  # S: the first tokens of the continuation that must be exact


def train(base: str, out: str, steps: int, every: int) -> None:
  for name, bindings in RUNS.items():
    model_dir = os.path.join(out, name)
    command = [sys.executable, "-m", "ul2flan.commands.main", "train",
               "--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/ul2r.gin",
               f"--model_dir={model_dir}", f"--gin.INITIAL_CHECKPOINT_PATH='{base}'",
               f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=16", "--gin.LEARNING_RATE=3e-3",
               "--gin.make_schedule.end_learning_rate=3e-5", f"--gin.EVAL_PERIOD={every}",
               "--gin.EvalConfig.steps=8", f"--gin.CheckpointConfig.save_period={every}",
               "--gin.CheckpointConfig.keep=None"]
    command += [f"--gin.{b.replace(' = ', '=')}" for b in bindings]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)


def validation_examples(per_kind: int) -> dict[str, list[dict]]:
  """`per_kind` demo_ul2r validation examples of each denoiser kind (inputs, targets ids)."""
  task = seqio.get_mixture_or_task("demo_ul2r")
  found = {k: [] for k in KINDS}
  for ex in task.get_dataset(LENGTHS, split="validation", shuffle=False,
                             seed=0).as_numpy_iterator():
    kind = ex["denoiser"].decode()[0]
    if len(found[kind]) < per_kind:
      found[kind].append({"inputs": ex["inputs"].tolist(), "targets": ex["targets"].tolist()})
    if all(len(v) == per_kind for v in found.values()):
      break
  return found


def first_span(tokens: list[int], sentinels: set[int], eos_id: int) -> list[int] | None:
  """The tokens after a leading sentinel up to the next sentinel or EOS (None: no sentinel
  first)."""
  if not tokens or tokens[0] not in sentinels:
    return None
  span = []
  for t in tokens[1:]:
    if t in sentinels or t == eos_id:
      break
    span.append(t)
  return span


def exact_rates(gen, examples: dict[str, list[dict]]) -> dict[str, float]:
  vocab = gen.vocabulary
  sentinels, eos = set(vocabularies.sentinel_ids(vocab)), int(vocab.eos_id)
  rates = {}
  for kind, rows in examples.items():
    prompts = [r["inputs"][:-1] for r in rows]  # the layout adds the inputs' EOS back
    outputs = gen.generate_ids(prompts, max_new_tokens=12)
    hits = 0
    for row, out in zip(rows, outputs):
      gold = row["targets"]
      if kind == "S":
        hits += out[:S_PREFIX_TOKENS] == gold[:S_PREFIX_TOKENS]
      else:
        span = first_span(list(out), sentinels, eos)
        hits += span is not None and span == first_span(gold, sentinels, eos)
    rates[kind] = 100.0 * hits / len(rows)
  return rates


def eval_accuracy(model_dir: str) -> dict[int, dict[str, float]]:
  """{step: {kind: teacher-forced token accuracy}} from the run's eval pass."""
  out = {}
  with open(os.path.join(model_dir, "metrics_eval.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      acc = {k: row[f"accuracy/{k}"] for k in KINDS if f"accuracy/{k}" in row}
      if acc:
        out[int(row["step"])] = acc
  return out


def measure(out: str, base: str, per_kind: int) -> dict:
  examples = validation_examples(per_kind)
  results = {"examples_per_kind": per_kind, "runs": {}}
  base_rates = exact_rates(generator_lib.load_generator(base), examples)
  for name in RUNS:
    model_dir = os.path.join(out, name)
    teacher = eval_accuracy(model_dir)
    rows = [{"step": 0, "exact": base_rates, "token_accuracy": teacher.get(0, {})}]
    ckpt_dir = checkpoints.checkpoint_dir(model_dir)
    for step in sorted(int(d.name) for d in ckpt_dir.iterdir() if d.name.isdigit()):
      gen = generator_lib.load_generator(str(ckpt_dir / str(step)))
      rows.append({"step": step, "exact": exact_rates(gen, examples),
                   "token_accuracy": teacher.get(step, {})})
      print(name, rows[-1], flush=True)
    results["runs"][name] = rows
  with open(os.path.join(out, "curve.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  lines = [f"| run | step | {' | '.join(f'{k} exact' for k in KINDS)} | "
           f"{' | '.join(f'{k} token acc.' for k in KINDS)} |",
           "|---|---|" + "---|" * (2 * len(KINDS))]
  for name, rows in results["runs"].items():
    for r in rows:
      exact = " | ".join(f"{r['exact'][k]:.0f}" for k in KINDS)
      acc = " | ".join(f"{r['token_accuracy'][k]:.3f}" if k in r["token_accuracy"] else "-"
                       for k in KINDS)
      lines.append(f"| {name} | {r['step']} | {exact} | {acc} |")
  table = "\n".join(lines)
  with open(os.path.join(out, "curve.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  print(table)
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("command", choices=("train", "measure"))
  parser.add_argument("--base", default="runs/demo/base")
  parser.add_argument("--out", default="runs/ul2r_curve")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--every", type=int, default=100)
  parser.add_argument("--examples", type=int, default=48)
  args = parser.parse_args()
  if args.command == "train":
    train(args.base, args.out, args.steps, args.every)
  else:
    measure(args.out, args.base, args.examples)


if __name__ == "__main__":
  main()
