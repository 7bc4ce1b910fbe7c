"""Evaluation of the demo pipeline's models: held-out tasks, an infilling probe, benchmarks.

- Held-out tasks (`demo_heldout`, never trained on): greedy generation, the answer extracted as
  the Flan harness does for CoT ("... the answer is X"), exact match against the gold answer;
  accuracy per task and the Flan paper's chance-normalized score.
- Infilling probe (U-PaLM): a world fact with one span replaced by sentinel 0, prompted as
  `[NLU] text-with-<extra_id_0>` — mode token, then the sentinel in the prompt; the model must
  answer `<extra_id_0> span`. A causal LM was never taught sentinels; a UL2R model was.
- Optionally the real Flan benchmarks (MMLU, BBH, TyDiQA, MGSM) on a data dir, capped per subtask.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time

import jax

from ul2flan import paths
from ul2flan import vocabularies
from ul2flan.demo import tasks as demo_tasks
from ul2flan.demo import world
from ul2flan.evaluation import harness
from ul2flan.evaluation import scoring
from ul2flan.evaluation import suite
from ul2flan.inference import generator as generator_lib

logger = logging.getLogger(__name__)


def _normalize(text: str) -> str:
  text = text.strip().lower()
  text = re.sub(r"[\s]+", " ", text)
  return text.strip(" .,!?;:\"'")


def extract_answer(prediction: str) -> str:
  cot = scoring.extract_cot_answer(prediction)
  text = cot if cot else prediction
  return text.split("\n")[0]


def is_correct(prediction: str, gold: str) -> bool:
  return _normalize(extract_answer(prediction)) == _normalize(gold)


def infilling_probe(n: int, seed: int = 1234) -> list[dict]:
  """Facts stated as in the corpus, with the value span masked: (prefix, suffix, gold)."""
  w = world.make_world()
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    p = rng.choice(w.people)
    kind = rng.choice(["city", "job", "color"])
    if kind == "city":
      prefix, gold, suffix = f"{p.name} lives in ", p.city, f". {p.name} is a {p.job}."
    elif kind == "job":
      prefix, gold, suffix = f"{p.name} works as a ", p.job, f". {p.name} lives in {p.city}."
    else:
      prefix, gold, suffix = f"{p.name}'s favorite color is ", p.color, f". {p.name} owns a {p.pet}."
    out.append({"prefix": prefix, "suffix": suffix, "gold": gold, "kind": kind})
  return out


def _infilling_prompt_tokens(vocabulary, item: dict, mode_token: str = "[NLU]") -> list[int]:
  """`[NLU]` + the sentence's tokens with the answer's tokens replaced by sentinel 0.

  Exactly the R denoiser's input layout: the mode token encoded on its own, then the segment's
  own tokenization with the noise span cut out (so no boundary re-tokenization).
  """
  sentinel = vocabularies.sentinel_ids(vocabulary)[0]
  head = list(vocabulary.encode(item["prefix"].rstrip()))
  full = list(vocabulary.encode(item["prefix"] + item["gold"] + item["suffix"]))
  span = len(list(vocabulary.encode(item["prefix"] + item["gold"]))) - len(head)
  if full[:len(head)] != head:  # the answer merged with the prefix's last piece: mask from there
    head = head[:-1]
    span += 1
  return list(vocabulary.encode(mode_token)) + head + [sentinel] + full[len(head) + span:]


def score_infill(vocabulary, tokens: list[int], gold: str) -> tuple[str, bool]:
  """The span the model wrote after sentinel 0 (up to the next sentinel / EOS)."""
  sentinels = vocabularies.sentinel_ids(vocabulary)
  toks = list(tokens)
  if toks and toks[0] == sentinels[0]:
    toks = toks[1:]
  span = []
  for t in toks:
    if t == vocabularies.EOS_ID or t in sentinels:
      break
    span.append(t)
  text = vocabulary.decode(span)
  return text, _normalize(text) == _normalize(gold)


def evaluate_model(name: str, checkpoint_dir: str, model_dir: str, settings: dict) -> dict:
  """Evaluates one checkpoint; results are cached in MODEL_DIR/eval/<name>.json."""
  out_dir = paths.resolve(model_dir) / "eval"
  cache = out_dir / f"{name}.json"
  if cache.exists():
    logger.info("[eval] %s: cached results %s", name, cache)
    return json.loads(cache.read_text())
  if jax.process_index() == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
  logger.info("[eval] %s: evaluating the checkpoint %s", name, checkpoint_dir)
  t0 = time.time()
  gen = generator_lib.load_generator(checkpoint_dir, batch_size=settings["batch_size"])
  result: dict = {"model": name, "checkpoint": checkpoint_dir, "tasks": {}}

  examples = demo_tasks.heldout_eval_examples(settings["heldout_split"],
                                              num_shots=settings["heldout_shots"])
  preds = [c[0] for c in gen.generate([e["inputs"] for e in examples],
                                      max_new_tokens=settings["max_new_tokens"])]
  scores = gen.score_options([e["inputs"] for e in examples],
                             [list(e["options"]) for e in examples])
  rows = []
  for e, p, ll in zip(examples, preds, scores):
    ranked = e["options"][max(range(len(ll)), key=ll.__getitem__)] if ll else ""
    rows.append({"task": e["task"], "prompt": e["inputs"], "prediction": p,
                 "extracted": extract_answer(p), "gold": e["targets"],
                 "correct": is_correct(p, e["targets"]), "chance": e["chance"],
                 "option_log_likelihoods": ll, "ranked_choice": ranked,
                 "rank_correct": _normalize(ranked) == _normalize(e["targets"])})
  _write_jsonl(out_dir / f"{name}.heldout.jsonl", rows)
  for task in sorted({r["task"] for r in rows}):
    rs = [r for r in rows if r["task"] == task]
    acc = 100.0 * sum(r["correct"] for r in rs) / len(rs)
    rank_acc = 100.0 * sum(r["rank_correct"] for r in rs) / len(rs)
    chance = rs[0]["chance"]
    result["tasks"][task] = {"accuracy": acc, "rank_accuracy": rank_acc, "chance": chance,
                             "n": len(rs),
                             "normalized": 100.0 * (acc - chance) / (100.0 - chance),
                             "rank_normalized": 100.0 * (rank_acc - chance) / (100.0 - chance)}
  n_tasks = max(len(result["tasks"]), 1)
  result["heldout_normalized_average"] = sum(
      t["normalized"] for t in result["tasks"].values()) / n_tasks
  result["heldout_rank_normalized_average"] = sum(
      t["rank_normalized"] for t in result["tasks"].values()) / n_tasks

  probe = infilling_probe(settings["infilling_examples"])
  vocabulary = gen.vocabulary
  prompts = [_infilling_prompt_tokens(vocabulary, item) for item in probe]
  outs = gen.generate_ids(prompts, max_new_tokens=8)
  infill_rows = []
  for item, toks in zip(probe, outs):
    text, ok = score_infill(vocabulary, toks, item["gold"])
    infill_rows.append({**item, "completion": vocabulary.decode(list(toks)), "span": text,
                        "correct": ok})
  _write_jsonl(out_dir / f"{name}.infilling.jsonl", infill_rows)
  result["infilling_accuracy"] = 100.0 * sum(r["correct"] for r in infill_rows) / len(infill_rows)

  if settings.get("benchmarks") and settings.get("benchmarks_data_dir"):
    result["benchmarks"] = _run_benchmarks(gen, settings, str(out_dir / name))
  result["eval_seconds"] = time.time() - t0
  if jax.process_index() == 0:
    cache.write_text(json.dumps(result, indent=1))
  return result


def _run_benchmarks(gen, settings, out_dir) -> dict:
  scores = {}
  for bench in settings["benchmarks"]:
    tasks = suite.build_tasks(settings["benchmarks_data_dir"], benchmark=bench, mode="both")
    cfg = harness.HarnessConfig(batch_size=settings["batch_size"],
                                max_examples_per_subtask=settings["benchmark_max_examples"],
                                output_dir=paths.join(out_dir, bench))
    summary = harness.run_suite(gen, tasks, cfg)
    scores[bench] = summary
  return scores


def _write_jsonl(path, rows: list[dict]) -> None:
  if jax.process_index() == 0:
    paths.resolve(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
