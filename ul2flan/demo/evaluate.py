"""The demo's evaluator ("demo", registered with `ul2flan.pipeline.evaluators` on import):
knowledge, held-out tasks, infilling.

Every model is prompted, and its answer read, in the layout it was trained in (the `Generator`
reads the row layout from run.json: a causal LM gets `BOS ids`, a prefix LM and a causal prefix
LM such as Flan-base `BOS ids EOS`; `Layout` adds what UL2R's S denoiser puts around a text: its
mode token, and sentinel 0 where the S layout has one, after which the answer is read).
What is measured (`result["metrics"]`, one flat dict per model; `probes` defines the items):

* Knowledge check (`knowledge_*`): cloze accuracy, the true value ranked by log-likelihood among
  every value of its attribute. Causal models continue the text; a prefix LM gets it as the
  S denoiser's inputs (`[S2S]` + text, then the value after the inputs' EOS if its rows had
  one: `RowLayout.inputs_eos`). A prefix LM is also read
  causally (`knowledge_causal_*`: the same weights as the causal LM they were pre-trained as, no
  mode token, no EOS, causal attention), which tells lost knowledge from a layout it cannot
  yet answer in.
* Held-out tasks (`heldout_*`, `demo_heldout`, never trained on): greedy generation, the answer
  extracted as the Flan harness does ("... the answer is X", else the first line), exact match;
  and rank classification (the option with the highest log-likelihood). Per task, accuracy and
  the Flan paper's chance-normalized score; `heldout_valid_answer_rate` is how often the
  generated answer is one of the listed options at all. The U-model (UL2R's output, trained only
  on mode-token rows) gets the question as S inputs too; Flan models as Flan trained them. A
  prefix LM is also read causally (`heldout_causal_*`; a causal model's are its `heldout_*`).
* Infilling (`infilling_context_*`, `infilling_fact_*`): the R denoiser's inputs with one span
  replaced by sentinel 0; the model must write that span after `<extra_id_0>`. Also by rank
  (`infilling_*_rank_accuracy`): the gold span among other values of its kind, each scored as
  the target `<extra_id_0> value EOS`.

The model is reached only through `generate`, `generate_ids`, `score_options` and `score_ids`
(`inference.generator.Generator`), so tests can hand in a stub with known log-likelihoods.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Sequence

import jax

from ul2flan import paths
from ul2flan import vocabularies
from ul2flan.demo import probes
from ul2flan.demo import report as demo_report
from ul2flan.demo import tasks as demo_tasks
from ul2flan.evaluation import scoring
from ul2flan.pipeline import evaluators
from ul2flan.pipeline import settings as settings_lib
from ul2flan.ul2 import trained as ul2_trained

logger = logging.getLogger(__name__)


def extract_answer(prediction: str) -> str:
  cot = scoring.extract_cot_answer(prediction)
  return (cot if cot else prediction).split("\n")[0]


def is_correct(prediction: str, gold: str) -> bool:
  return probes.normalize_text(extract_answer(prediction)) == probes.normalize_text(gold)


def _mean(xs) -> float:
  xs = list(xs)
  return float(sum(xs)) / len(xs) if xs else 0.0


def ranked_choice(options: Sequence[str], log_likelihoods: Sequence[float]) -> str:
  """Rank classification: the option with the highest log-likelihood (the first on a tie)."""
  return options[max(range(len(options)), key=lambda i: log_likelihoods[i])] if options else ""


# ---- reading a model in its training layout ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Layout:
  """What goes around a text in a prompt, and where the model's answer starts.

  `before` / `after`: ids around the text's own ids (UL2R's S denoiser: its mode token before,
  and sentinel 0 after where its inputs end with one); `answer`: the ids its targets begin with
  (that sentinel), which the answer follows. The generator adds the row layout itself (BOS, the
  EOS that ends a prefix LM's inputs).
  """
  before: tuple[int, ...] = ()
  after: tuple[int, ...] = ()
  answer: tuple[int, ...] = ()

  def prompt(self, ids: Sequence[int]) -> list[int]:
    return [*self.before, *ids, *self.after]

  def read(self, tokens: Sequence[int], eos_id: int) -> list[int]:
    """The answer in generated tokens: after the leading `answer` ids if written, up to EOS."""
    tokens = list(tokens)
    if self.answer and tokens[:len(self.answer)] == list(self.answer):
      tokens = tokens[len(self.answer):]
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens


def s_denoiser_layout(vocabulary, reading: ul2_trained.SReading = ul2_trained.PRESET_S_READING
                      ) -> Layout:
  """A text continued as the S denoiser of `reading` laid out its rows: its mode token, the text,
  then (`reading.sentinel`: its inputs end and its targets start with sentinel 0) the answer after
  it."""
  first = tuple(vocabularies.sentinel_ids(vocabulary)[:1]) if reading.sentinel else ()
  return Layout(tuple(vocabulary.encode(reading.mode_token)), first, first)


def causal_view(gen):
  """The same weights read as the causal LM they were pre-trained as: causal attention, no EOS
  after the prompt (a U-model's or a Flan model's knowledge, apart from its new layout)."""
  return gen.with_layout(gen.layout.as_causal_lm())


# ---- knowledge ----------------------------------------------------------------------------------
def continuation_layout(gen, reading: ul2_trained.SReading = ul2_trained.PRESET_S_READING
                        ) -> Layout:
  """How `gen` continues a text: a prefix LM as the inputs of its S denoiser `reading` (its answer
  read after the sentinel where that S layout has one), any causal model (a causal prefix LM
  included) as the causal LM it was pre-trained as."""
  return s_denoiser_layout(gen.vocabulary, reading) if gen.prefix_lm else Layout()


def knowledge_check(gen, max_people: int | None = None, layout: Layout | None = None
                    ) -> tuple[dict, list[dict]]:
  """Cloze accuracy per phrasing (`corpus`, `heldout`) and attribute, and its normalized form;
  over the first `max_people` people of the world (None: all), every attribute of each. Each
  value is scored after the layout's `answer` ids (the same for every value, so they do not
  change the ranking); `layout` defaults to `continuation_layout(gen)`."""
  vocab = gen.vocabulary
  layout = continuation_layout(gen) if layout is None else layout
  items = probes.knowledge_items("corpus") + probes.knowledge_items("heldout")
  people = list(dict.fromkeys(it["name"] for it in items))[:max_people]
  items = [it for it in items if it["name"] in people]
  prompts, targets = [], []
  for it in items:
    ids = layout.prompt(vocab.encode(it["prompt"]))
    for value in it["pool"]:
      prompts.append(ids)
      targets.append([*layout.answer, *vocab.encode(f"{value}.")])
  # A prefix LM's prompts as its rows (its layout's EOS, if any); a causal one's with none.
  flat = gen.score_ids(prompts, targets, prompt_eos=None if gen.prefix_lm else False)
  rows, k = [], 0
  for it in items:
    choice = ranked_choice(it["pool"], flat[k:k + len(it["pool"])])
    k += len(it["pool"])
    rows.append({**{x: it[x] for x in ("name", "attribute", "phrasing", "prompt", "gold")},
                 "choice": choice, "correct": choice == it["gold"]})
  metrics = {"knowledge_chance": probes.knowledge_chance()}
  for phrasing in ("corpus", "heldout"):
    acc = {a: 100.0 * _mean(r["correct"] for r in rows
                            if r["phrasing"] == phrasing and r["attribute"] == a)
           for a in probes.KNOWLEDGE_ATTRIBUTES}
    metrics[f"knowledge_{phrasing}_accuracy"] = _mean(acc.values())
    metrics[f"knowledge_{phrasing}_normalized"] = _mean(
        scoring.normalized_score(acc[a], 100.0 / len(probes.attribute_pool(a))) for a in acc)
    for a, value in acc.items():
      metrics[f"knowledge_{phrasing}_{a}_accuracy"] = value
  return metrics, rows


# ---- held-out tasks -----------------------------------------------------------------------------
def heldout_eval(gen, examples: Sequence[dict], max_new_tokens: int,
                 layout: Layout | None = None) -> dict:
  """Held-out tasks by generation and by rank classification: rows, per-task and averages.
  With a `layout` (a U-model's S denoiser), questions are laid out and answers read by it."""
  if layout is None or layout == Layout():
    preds = [c[0] for c in gen.generate([e["inputs"] for e in examples],
                                        max_new_tokens=max_new_tokens)]
    scores = gen.score_options([e["inputs"] for e in examples],
                               [list(e["options"]) for e in examples])
  else:
    preds, scores = _heldout_in_layout(gen, examples, max_new_tokens, layout)
  rows = []
  for e, p, ll in zip(examples, preds, scores):
    ranked, extracted = ranked_choice(e["options"], ll), extract_answer(p)
    options = {probes.normalize_text(o) for o in e["options"]}
    rows.append({"task": e["task"], "prompt": e["inputs"], "prediction": p,
                 "extracted": extracted, "gold": e["targets"],
                 "correct": is_correct(p, e["targets"]), "chance": e["chance"],
                 "valid_answer": probes.normalize_text(extracted) in options,
                 "option_log_likelihoods": ll, "ranked_choice": ranked,
                 "rank_correct": probes.normalize_text(ranked) == probes.normalize_text(
                     e["targets"])})
  tasks = {}
  for task in sorted({r["task"] for r in rows}):
    rs = [r for r in rows if r["task"] == task]
    acc, rank_acc = (100.0 * _mean(r[k] for r in rs) for k in ("correct", "rank_correct"))
    chance = rs[0]["chance"]
    tasks[task] = {"accuracy": acc, "rank_accuracy": rank_acc, "chance": chance, "n": len(rs),
                   "valid_answer_rate": 100.0 * _mean(r["valid_answer"] for r in rs),
                   "normalized": scoring.normalized_score(acc, chance),
                   "rank_normalized": scoring.normalized_score(rank_acc, chance)}
  metrics = {"heldout_generation_normalized": _mean(t["normalized"] for t in tasks.values()),
             "heldout_rank_normalized": _mean(t["rank_normalized"] for t in tasks.values()),
             "heldout_generation_accuracy": _mean(t["accuracy"] for t in tasks.values()),
             "heldout_rank_accuracy": _mean(t["rank_accuracy"] for t in tasks.values()),
             "heldout_valid_answer_rate": _mean(t["valid_answer_rate"] for t in tasks.values())}
  for task, t in tasks.items():
    short = task.replace("demo_heldout_", "")
    metrics[f"heldout_{short}_generation_accuracy"] = t["accuracy"]
    metrics[f"heldout_{short}_rank_accuracy"] = t["rank_accuracy"]
  return {"rows": rows, "tasks": tasks, "metrics": metrics}


def _heldout_in_layout(gen, examples: Sequence[dict], max_new_tokens: int,
                       layout: Layout) -> tuple[list[str], list[list[float]]]:
  """(greedy answers, option log-likelihoods) with questions laid out by `layout`."""
  vocab, eos = gen.vocabulary, gen.vocabulary.eos_id
  prompts = [layout.prompt(vocab.encode(e["inputs"])) for e in examples]
  outs = gen.generate_ids(prompts, max_new_tokens=max_new_tokens + len(layout.answer))
  preds = [vocab.decode(layout.read(o, eos)) for o in outs]
  flat_prompts = [p for p, e in zip(prompts, examples) for _ in e["options"]]
  flat_targets = [[*layout.answer, *vocab.encode(o), eos] for e in examples for o in e["options"]]
  flat = gen.score_ids(flat_prompts, flat_targets)
  scores, k = [], 0
  for e in examples:
    scores.append(flat[k:k + len(e["options"])])
    k += len(e["options"])
  return preds, scores


# ---- infilling ----------------------------------------------------------------------------------
def infilling_eval(gen, items: Sequence[dict], max_new_tokens: int = 8) -> tuple[dict, list[dict]]:
  """Greedy infills of the probe items (in the model's own prompt layout); exact-match metrics."""
  vocab = gen.vocabulary
  first_sentinel = vocabularies.sentinel_ids(vocab)[0]
  outs = gen.generate_ids([probes.infilling_prompt_ids(vocab, it) for it in items],
                          max_new_tokens=max_new_tokens)
  rows = []
  for item, toks in zip(items, outs):
    span = probes.infilled_span(vocab, toks)
    rows.append({**item, "completion": vocab.decode(list(toks)), "span": span,
                 "starts_with_sentinel": bool(len(toks) and toks[0] == first_sentinel),
                 "correct": probes.normalize_text(span) == probes.normalize_text(item["gold"])})
  metrics = {}
  for probe in sorted({r["probe"] for r in rows}):
    rs = [r for r in rows if r["probe"] == probe]
    metrics[f"infilling_{probe}_accuracy"] = 100.0 * _mean(r["correct"] for r in rs)
    metrics[f"infilling_{probe}_sentinel_rate"] = 100.0 * _mean(
        r["starts_with_sentinel"] for r in rs)
    for kind in sorted({r["kind"] for r in rs}):
      metrics[f"infilling_{probe}_{kind}_accuracy"] = 100.0 * _mean(
          r["correct"] for r in rs if r["kind"] == kind)
  return metrics, rows


def infilling_rank_eval(gen, items: Sequence[dict]) -> tuple[dict, list[dict]]:
  """Infilling by rank, teacher-forced: each candidate written as the R denoiser's target for the
  gap (`<extra_id_0> value EOS`) after the item's prompt; the model's choice is the candidate of
  highest log-likelihood (the first on a tie). Rows align with `items`."""
  vocab = gen.vocabulary
  first_sentinel = vocabularies.sentinel_ids(vocab)[0]
  prompts, targets = [], []
  for it in items:
    prompt = probes.infilling_prompt_ids(vocab, it)
    for span in probes.candidate_span_ids(vocab, it):
      prompts.append(prompt)
      targets.append([first_sentinel] + span + [vocab.eos_id])
  flat = gen.score_ids(prompts, targets)
  rows, k = [], 0
  for it in items:
    n = len(it["candidates"])
    choice = ranked_choice(it["candidates"], flat[k:k + n])
    k += n
    rows.append({"rank_choice": choice, "rank_correct": choice == it["gold"],
                 "rank_chance": 100.0 / n})
  metrics = {}
  for probe in sorted({it["probe"] for it in items}):
    rs = [r for it, r in zip(items, rows) if it["probe"] == probe]
    metrics[f"infilling_{probe}_rank_accuracy"] = 100.0 * _mean(r["rank_correct"] for r in rs)
    metrics[f"infilling_{probe}_rank_chance"] = _mean(r["rank_chance"] for r in rs)
  return metrics, rows


# ---- one model ----------------------------------------------------------------------------------
def evaluate_generator(gen, settings: dict, out_dir=None, name: str = "model",
                       u_model: bool = False,
                       s_reading: ul2_trained.SReading = ul2_trained.PRESET_S_READING) -> dict:
  """Every demo measurement of one model; per-example rows go to `out_dir` when given.
  `u_model`: UL2R's output, whose every training row began with a mode token: held-out
  questions reach it as S denoiser inputs. `s_reading`: the S denoiser a prefix LM is read
  through (its mode token, and sentinel 0 where its S layout has one)."""
  result: dict = {"layout": getattr(gen, "layout_name", None), "seconds": {}}
  metrics: dict = {}
  t = time.time()
  max_people = settings.get("knowledge_max_people")
  knowledge, knowledge_rows = knowledge_check(gen, max_people,
                                              continuation_layout(gen, s_reading))
  metrics.update(knowledge)
  causal, causal_rows = knowledge, []
  if gen.prefix_lm:  # the same weights read causally: knowledge apart from the new layout
    causal, causal_rows = knowledge_check(causal_view(gen), max_people, Layout())
  # A causal model's only reading is its causal one: every model has both columns.
  metrics.update({k.replace("knowledge_", "knowledge_causal_", 1): v for k, v in causal.items()
                  if k != "knowledge_chance"})
  result["seconds"]["knowledge"] = time.time() - t

  t = time.time()
  examples = demo_tasks.heldout_eval_examples(settings["heldout_split"],
                                              num_shots=settings["heldout_shots"])
  cap = settings.get("heldout_max_examples")
  if cap:  # evenly spaced, so that every held-out family keeps its share
    examples = examples[::max(1, len(examples) // cap)][:cap]
  heldout = heldout_eval(gen, examples, settings["max_new_tokens"],
                         s_denoiser_layout(gen.vocabulary, s_reading) if u_model else None)
  metrics.update(heldout["metrics"])
  result["tasks"] = heldout["tasks"]
  causal_heldout = heldout
  if gen.prefix_lm:  # as for knowledge: the same questions to the causal LM it was pre-trained as
    causal_heldout = heldout_eval(causal_view(gen), examples, settings["max_new_tokens"])
  metrics.update({k.replace("heldout_", "heldout_causal_", 1): v
                  for k, v in causal_heldout["metrics"].items()})
  result["seconds"]["heldout"] = time.time() - t

  t = time.time()
  n = settings["infilling_examples"]
  items = probes.infilling_context_items(n) + probes.infilling_fact_items(n)
  infilling, infill_rows = infilling_eval(gen, items)
  ranked, rank_rows = infilling_rank_eval(gen, items)
  metrics.update(infilling)
  metrics.update(ranked)
  infill_rows = [{**row, **rank} for row, rank in zip(infill_rows, rank_rows)]
  result["seconds"]["infilling"] = time.time() - t
  result["metrics"] = metrics
  if out_dir is not None:
    _write_jsonl(out_dir / f"{name}.knowledge.jsonl", knowledge_rows)
    if causal_rows:
      _write_jsonl(out_dir / f"{name}.knowledge_causal.jsonl", causal_rows)
    _write_jsonl(out_dir / f"{name}.heldout.jsonl", heldout["rows"])
    if causal_heldout is not heldout:
      _write_jsonl(out_dir / f"{name}.heldout_causal.jsonl", causal_heldout["rows"])
    _write_jsonl(out_dir / f"{name}.infilling.jsonl", infill_rows)
  return result


def _write_jsonl(path, rows: list[dict]) -> None:
  if jax.process_index() == 0:
    paths.resolve(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _s_reading(model_dir) -> ul2_trained.SReading:
  """The S denoiser the model in `model_dir` was trained with; the preset's where it saved none."""
  return ul2_trained.trained_s_reading(model_dir) or ul2_trained.PRESET_S_READING


class DemoEvaluator:
  """The pipeline evaluator "demo" (`ul2flan.pipeline.evaluators`): knowledge cloze, held-out
  demo tasks and the infilling probes, on every model of the pipeline."""
  name = "demo"
  headline = demo_report.HEADLINE_METRICS

  def check(self, settings) -> None:
    if settings.heldout_split not in ("train", "validation", "test"):
      raise ValueError(f"evaluation_settings.heldout_split must be 'train', 'validation' or "
                       f"'test', got {settings.heldout_split!r}")

  def evaluate(self, gen, request) -> dict:
    result = evaluate_generator(gen, request.settings.as_dict(), paths.resolve(request.out_dir),
                                request.model, u_model=request.model == settings_lib.U_MODEL,
                                s_reading=_s_reading(request.checkpoint_dir))
    result["heldout_split"] = request.settings.heldout_split
    result["heldout_shots"] = request.settings.heldout_shots
    return result

  def report_lines(self, results_by_seed, summary) -> list[str]:
    return demo_report.section(results_by_seed, summary)


evaluators.register(DemoEvaluator())
