"""The pipeline evaluator "text_infilling": can a model fill a gap in held-out corpus text?

U-PaLM's new ability, measured on the user's own text (the UL2R corpus's validation split, never
trained on). From each of the first documents, a word that the document states twice within a
short window is cut out at its second occurrence, so the span is recoverable from its context
without memory; the text around it (up to `text_infilling_window_words` words) is laid out as the
R denoiser's inputs (`ul2flan.ul2.infilling`). Scored two ways:

* greedy: the model writes the span after `<extra_id_0>` (exact match, case and punctuation
  ignored): `text_infilling_accuracy`;
* by rank: the gold word among 7 other words of the same document, each scored as the R target
  `<extra_id_0> word EOS`: `text_infilling_rank_accuracy` (chance `text_infilling_rank_chance`).

A causal base has never seen the layout, so it scores about 0 greedily; a U-model should not.
"""

from __future__ import annotations

import json
import random
import re
from typing import Iterator, Mapping, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from ul2flan import paths
from ul2flan.pipeline import claims
from ul2flan.pipeline import evaluators
from ul2flan.ul2 import infilling
from ul2flan.ul2 import sources

CANDIDATES = 8
WINDOW_WORDS = 120  # words of context around the gap (the prompt must fit the trained length)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]")


def _norm(text: str) -> str:
  return re.sub(r"\s+", " ", text.strip().lower()).strip(" .,!?;:\"'()")


def item_from_text(text: str, rng: random.Random, window: int = WINDOW_WORDS) -> dict | None:
  """One probe item from a document, or None when no word recurs close enough.

  The gap is the second occurrence of a word of 4+ letters (a capitalised one preferred: names
  recur) whose first occurrence lies within the window before it."""
  words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
  seen: dict[str, int] = {}
  best = None
  for j, (_, _, word) in enumerate(words):
    key = word.lower()
    if len(word) >= 4 and key in seen and j - seen[key] < window // 2:
      capitalised = word[0].isupper()
      if best is None or (capitalised and not best[2]):
        best = (seen[key], j, capitalised)
        if capitalised:
          break
    seen.setdefault(key, j)
  if best is None:
    return None
  first, second, _ = best
  lo = max(0, second - window + 20)
  hi = min(len(words), second + 20)
  start, end = words[lo][0], words[hi - 1][1]
  gap_start, gap_end, gold = words[second]
  pool = sorted({w for _, _, w in words[lo:hi] if len(w) >= 4 and w.lower() != gold.lower()})
  if len(pool) < CANDIDATES - 1:
    return None
  return {"prefix": text[start:gap_start], "gold": gold, "suffix": text[gap_end:end],
          "candidates": [gold] + rng.sample(pool, CANDIDATES - 1),
          "first_occurrence_word": first - lo}


def held_out_items(corpus: str, n: int, seed: int = 0) -> list[dict]:
  """Up to `n` items from the first documents of the corpus's validation split."""
  source = sources.source_from_spec(corpus)
  rng = random.Random(seed)
  items = []
  for example in source.get_dataset("validation", shuffle=False).as_numpy_iterator():
    item = item_from_text(example[sources.TEXT_KEY].decode("utf-8"), rng)
    if item is not None:
      items.append(item)
    if len(items) == n:
      break
  return items


def _batches(items: Sequence[dict], size: int, desc: str) -> Iterator[Sequence[dict]]:
  chunks = [items[i:i + size] for i in range(0, len(items), size)]
  yield from tqdm(chunks, desc=desc, disable=jax.process_index() != 0, leave=False)


class TextInfillingEvaluator:
  """Greedy and by-rank infilling of a word recoverable from its context, on held-out text."""
  name = "text_infilling"
  headline = (("text_infilling_accuracy", "held-out text infilling, greedy (%)"),
              ("text_infilling_rank_accuracy", "held-out text infilling by rank (%)"))

  def check(self, settings) -> None:
    if not settings.text_infilling_corpus:
      raise ValueError("evaluation_settings.text_infilling_corpus is not set (a corpus spec "
                       "such as 'jsonl:/data/corpus/*.jsonl'; the HF pipeline binds UL2R_CORPUS)")
    source = sources.source_from_spec(settings.text_infilling_corpus)
    if "validation" not in source.splits:
      raise ValueError(f"corpus {settings.text_infilling_corpus!r} has no validation split to "
                       f"take held-out text from (it has {sorted(source.splits)})")
    source.list_shards("validation")

  def evaluate(self, gen, request) -> dict:
    settings = request.settings
    items = held_out_items(settings.text_infilling_corpus, settings.text_infilling_examples)
    vocab = gen.vocabulary
    rows = []
    for batch in _batches(items, settings.batch_size, f"{request.model}: text infilling"):
      prompts = [infilling.prompt_ids(vocab, it["prefix"], it["gold"], it["suffix"])
                 for it in batch]
      spans = [infilling.candidate_span_ids(vocab, it["prefix"], it["gold"], it["suffix"],
                                            it["candidates"]) for it in batch]
      written = gen.generate_ids(prompts, max_new_tokens=max(len(s[0]) for s in spans) + 4)
      flat = gen.score_ids([p for p, s in zip(prompts, spans) for _ in s],
                           [infilling.target_ids(vocab, c) for s in spans for c in s])
      k = 0
      for it, toks, cands in zip(batch, written, spans):
        scores = flat[k:k + len(cands)]
        k += len(cands)
        span = infilling.written_span(vocab, toks)
        choice = it["candidates"][int(np.argmax(scores))]
        rows.append({**it, "written": span, "correct": _norm(span) == _norm(it["gold"]),
                     "rank_choice": choice, "rank_correct": choice == it["gold"]})
    if jax.process_index() == 0:
      path = paths.resolve(request.out_dir) / f"{request.model}.text_infilling.jsonl"
      path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    n = max(len(rows), 1)
    return {"metrics": {
        "text_infilling_accuracy": 100.0 * sum(r["correct"] for r in rows) / n,
        "text_infilling_rank_accuracy": 100.0 * sum(r["rank_correct"] for r in rows) / n,
        "text_infilling_rank_chance": 100.0 / CANDIDATES}, "examples": len(rows)}

  def report_lines(self, results_by_seed: Mapping, summary: Mapping) -> list[str]:
    if not any("text_infilling_accuracy" in m for m in summary.values()):
      return []
    return ["## Infilling on held-out corpus text", "",
            f"A word the text states twice, cut out at its second occurrence and laid out as "
            f"the R denoiser's inputs; greedy exact match, and rank among {CANDIDATES} words of "
            f"the same text (chance {100.0 / CANDIDATES:.1f}%). Rows: "
            f"`eval/<model>.text_infilling.jsonl`.", "",
            claims.claim(summary, "UL2R buys infilling (greedy): U-base vs base", "ul2r", "base",
                         "text_infilling_accuracy"),
            claims.claim(summary, "UL2R buys infilling (by rank): U-base vs base", "ul2r",
                         "base", "text_infilling_rank_accuracy"),
            claims.claim(summary, "Flan-U-base keeps it: Flan-U-base vs Flan-base (greedy)",
                         "flan_ul2r", "flan_base", "text_infilling_accuracy")]


evaluators.register(TextInfillingEvaluator())
