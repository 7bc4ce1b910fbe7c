"""UL2R's denoisers over training steps: does R need more steps, or is its layout at fault?

  python benchmarks/ul2r_curve.py train --base runs/demo/base --out runs/ul2r_curve \
      [--steps 600] [--every 100]
  python benchmarks/ul2r_curve.py measure --out runs/ul2r_curve [--examples 48]

`train` runs two UL2R stages from the demo's base with `ul2flan train` and the demo's UL2R
settings (tiny model, `demo_ul2r`, 128 + 128, batch 16, 3e-3 cosine): `r_only` (R alone: the S
and X rates set to 1e-6) and `mixture` (U-PaLM's 50% S / 25% R / 25% X), each evaluated and
checkpointed every `--every` steps (`--runs mixture_no_inputs_eos`: the mixture laid out
`inputs targets`, no EOS between). Teacher-forced token accuracy per denoiser comes from the
eval pass (`metrics_eval.jsonl`: `accuracy/R`, `accuracy/X`, `accuracy/S`).

`measure` loads every checkpoint of both runs (and the base) and decodes, greedily and in the
trained layout (`[mode] inputs EOS`, bidirectional), `--examples` validation examples of each
denoiser: for R and X, whether the first span written after sentinel 0 is the gold span exactly;
for S, whether the first 4 target tokens are. It writes `OUT/curve.json` and a Markdown table
`OUT/curve.md` (docs/ul2r.md, "The R learning curve", has the figures).

`knowledge` asks every checkpoint (and the base) the demo's knowledge cloze read as trained
(`[S2S] prompt EOS`, the demo evaluator's reading) and causally, and what it predicts,
teacher-forced, at the EOS that ends an S example's inputs: how often sentinel 0 (the first
target of every R and X row) and how often the gold first S target token. `OUT/knowledge.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import seqio

import ul2flan_tasks  # noqa: F401  (registers demo_ul2r)
from ul2flan import checkpoints, row_layout, vocabularies
from ul2flan.demo import evaluate as demo_evaluate
from ul2flan.inference import generator as generator_lib
from ul2flan.model import decoder as decoder_lib

LENGTHS = {"inputs": 128, "targets": 128}
RUNS = {"r_only": ["ul2r_preset.rates = (1e-6, 1.0, 1e-6)"], "mixture": [],
        # The same mixture with rows `inputs targets` (no EOS between): docs/ul2r.md, "The EOS
        # after the inputs".
        "mixture_no_inputs_eos": ["ul2r_preset.inputs_eos = False"]}
KINDS = ("R", "X", "S")
R_MODE_TOKEN = "[NLU]"
S_PREFIX_TOKENS = 4  # S: the first tokens of the continuation that must be exact


def train(base: str, out: str, steps: int, every: int, runs=tuple(RUNS),
          end_learning_rate: float = 3e-5) -> None:
  for name in runs:
    bindings = RUNS[name]
    model_dir = os.path.join(out, name)
    command = [sys.executable, "-m", "ul2flan.commands.main", "train",
               "--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/ul2r.gin",
               f"--model_dir={model_dir}", f"--gin.INITIAL_CHECKPOINT_PATH='{base}'",
               f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=16", "--gin.LEARNING_RATE=3e-3",
               f"--gin.make_schedule.end_learning_rate={end_learning_rate}",
               f"--gin.EVAL_PERIOD={every}",
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
    prompts = [r["inputs"][:-1] for r in rows]  # the layout adds the inputs' EOS back, if any
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


def measure(out: str, base: str, per_kind: int, runs=tuple(RUNS)) -> dict:
  examples = validation_examples(per_kind)
  results = {"examples_per_kind": per_kind, "runs": {}}
  base_rates = exact_rates(generator_lib.load_generator(base), examples)
  for name in runs:
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


def _trained_inputs(gen, inputs: list[int]) -> list[int]:
  """A validation example's inputs (which end with EOS) as `gen`'s run laid them out: without
  that EOS where its rows had none (`ul2r_preset.inputs_eos = False`)."""
  return inputs if gen.prompt_eos else inputs[:-1]


def _argmax_predictions(gen, tokens: list[int], prefix_len: int) -> np.ndarray:
  """Greedy next-token predictions at every position of one row (`prefix_len` positions
  attended bidirectionally; 0 for causal)."""
  ids = np.asarray([tokens], np.int32)
  prefix = (np.arange(len(tokens)) < prefix_len).astype(np.int32)[None]
  logits = decoder_lib.Decoder(gen.config).apply(
      {"params": gen.params}, ids, np.ones_like(ids), None, prefix if prefix_len else None)
  return np.asarray(logits)[0].argmax(-1)


def span_diagnosis(gen_u, gen_base, rows: list[dict]) -> dict[str, float]:
  """On R examples: the U-model's teacher-forced accuracy on span tokens (content and
  sentinels apart) against causal accuracy on the same tokens in the restored text, by the base
  and by the U-model itself. A model that uses the inputs' context should predict a span at
  least as well as a causal LM that sees only its left context."""
  vocab = gen_u.vocabulary
  sentinels, eos = set(vocabularies.sentinel_ids(vocab)), int(vocab.eos_id)
  hits = {"u_span_content": [], "u_span_sentinels": [], "base_causal_same_tokens": [],
          "u_causal_same_tokens": []}
  for row in rows:
    inputs, targets = row["inputs"], row["targets"]
    # Teacher-forced: [start] inputs targets[:-1], the inputs (with the EOS where the run's rows
    # had one) bidirectional.
    u_inputs = _trained_inputs(gen_u, inputs)
    u_row = [row_layout.START_SLOT_ID] + u_inputs + targets[:-1]
    pred = _argmax_predictions(gen_u, u_row, 1 + len(u_inputs))
    first = len(u_inputs)  # the position that predicts targets[0]
    spans, current = {}, None
    for k, t in enumerate(targets[:-1]):
      ok = int(pred[first + k]) == t
      if t in sentinels:
        hits["u_span_sentinels"].append(ok)
        current = t
        spans[current] = []
      elif current is not None:
        hits["u_span_content"].append(ok)
        spans[current].append(t)
    # The restored text (mode token dropped), and where each span token sits in it.
    mode = list(vocab.encode(R_MODE_TOKEN))
    assert inputs[:len(mode)] == mode, "an R example starts with its mode token"
    text, at = [], []
    for t in inputs[len(mode):-1]:
      if t in sentinels:
        for s in spans.get(t, []):
          at.append(len(text))
          text.append(s)
      else:
        text.append(t)
    for gen, key in ((gen_base, "base_causal_same_tokens"), (gen_u, "u_causal_same_tokens")):
      pred = _argmax_predictions(gen, [row_layout.START_SLOT_ID] + text, 0)
      hits[key] += [int(pred[i]) == text[i] for i in at]  # position i predicts text[i]
  return {k: 100.0 * float(np.mean(v)) for k, v in hits.items()}


def diagnose(out: str, base: str, per_kind: int, runs=tuple(RUNS)) -> dict:
  rows = validation_examples(per_kind)["R"]
  gen_base = generator_lib.load_generator(base)
  results = {}
  for name in runs:
    ckpt_dir = checkpoints.checkpoint_dir(os.path.join(out, name))
    last = max(int(d.name) for d in ckpt_dir.iterdir() if d.name.isdigit())
    results[name] = span_diagnosis(
        generator_lib.load_generator(str(ckpt_dir / str(last))), gen_base, rows)
    print(name, last, {k: round(v, 1) for k, v in results[name].items()}, flush=True)
  with open(os.path.join(out, "diagnosis.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  return results


def first_s_target(gen, rows: list[dict]) -> dict[str, float]:
  """Teacher-forced prediction at the position that writes an S example's first target token
  (the inputs' EOS, or their last token in a run without it): % sentinel 0, % the gold token."""
  s0 = vocabularies.sentinel_ids(gen.vocabulary)[0]
  predicted = []
  for row in rows:
    inputs = _trained_inputs(gen, row["inputs"])
    tokens = [row_layout.START_SLOT_ID] + inputs + row["targets"][:1]
    predicted.append(int(_argmax_predictions(gen, tokens, 1 + len(inputs))[len(inputs)]))
  return {"first_s_target_is_sentinel0": 100.0 * np.mean([p == s0 for p in predicted]),
          "first_s_target_is_gold": 100.0 * np.mean(
              [p == r["targets"][0] for p, r in zip(predicted, rows)])}


def knowledge(out: str, base: str, per_kind: int, runs=tuple(RUNS)) -> dict:
  rows_s = validation_examples(per_kind)["S"]
  names = ("knowledge_corpus_accuracy", "knowledge_heldout_accuracy")

  def measure_one(gen) -> dict[str, float]:
    as_trained, _ = demo_evaluate.knowledge_check(gen)
    causal, _ = demo_evaluate.knowledge_check(demo_evaluate.causal_view(gen),
                                              layout=demo_evaluate.Layout())
    row = {f"as_trained/{k}": as_trained[k] for k in names}
    row.update({f"causal/{k}": causal[k] for k in names})
    if gen.prefix_lm:
      row.update(first_s_target(gen, rows_s))
    return row

  results = {"base": measure_one(generator_lib.load_generator(base)), "runs": {}}
  print("base", results["base"], flush=True)
  for name in runs:
    ckpt_dir = checkpoints.checkpoint_dir(os.path.join(out, name))
    results["runs"][name] = []
    for step in sorted(int(d.name) for d in ckpt_dir.iterdir() if d.name.isdigit()):
      row = {"step": step, **measure_one(generator_lib.load_generator(str(ckpt_dir / str(step))))}
      results["runs"][name].append(row)
      print(name, row, flush=True)
  with open(os.path.join(out, "knowledge.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("command", choices=("train", "measure", "diagnose", "knowledge"))
  parser.add_argument("--base", default="runs/demo/base")
  parser.add_argument("--out", default="runs/ul2r_curve")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--every", type=int, default=100)
  parser.add_argument("--examples", type=int, default=48)
  parser.add_argument("--runs", default="r_only,mixture",
                      help=f"comma-separated, of {sorted(RUNS)}")
  parser.add_argument("--end_learning_rate", type=float, default=3e-5,
                      help="the cosine's end (3e-3 keeps the learning rate constant)")
  args = parser.parse_args()
  runs = tuple(args.runs.split(","))
  unknown = sorted(set(runs) - set(RUNS))
  if unknown:
    parser.error(f"--runs: unknown {unknown}; choose from {sorted(RUNS)}")
  if args.command == "train":
    train(args.base, args.out, args.steps, args.every, runs, args.end_learning_rate)
  elif args.command == "diagnose":
    diagnose(args.out, args.base, args.examples, runs)
  elif args.command == "knowledge":
    knowledge(args.out, args.base, args.examples, runs)
  else:
    measure(args.out, args.base, args.examples, runs)


if __name__ == "__main__":
  main()
