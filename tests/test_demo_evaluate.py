"""The demo evaluation against hand-built cases: a model stub whose log-likelihoods and outputs are
known, infilling prompts laid out by hand from the R denoiser's definition, the Flan normalized
score by its published definition, the seed summary by hand-computed means."""

import copy
import json
import shutil

import jax
import pytest

from helpers import copy_bbh_subtasks
from ul2flan import row_layout
from ul2flan import stop_sequences
from ul2flan import vocabularies
from ul2flan.demo import evaluate
from ul2flan.demo import probes
from ul2flan.demo import tasks as demo_tasks
from ul2flan.demo import world
from ul2flan.evaluation import harness
from ul2flan.evaluation import suite
from ul2flan.inference import generator as generator_lib
from ul2flan.pipeline import benchmark_eval
from ul2flan.pipeline import evaluators
from ul2flan.pipeline import settings
from ul2flan.pipeline import report as pipeline_report
from ul2flan.pipeline import runner
from ul2flan.ul2 import trained

VOCAB = vocabularies.get_vocabulary()
EOS = vocabularies.EOS_ID


class StubModel:
  """The `Generator` surface the demo evaluation uses, with canned answers.

  `option_scores(prompt, option)` and `id_scores(prompt_ids, target_ids)` are the log-likelihoods;
  `texts[prompt]` the greedy generations; `infills(prompt_ids)` the generated ids.
  """

  def __init__(self, *, prefix_lm=False, prompt_eos=None, option_scores=None, id_scores=None,
               texts=None, infills=None):
    self.vocabulary = VOCAB
    prompt_eos = prefix_lm if prompt_eos is None else prompt_eos
    kind = (row_layout.PREFIX_LM if prefix_lm else
            row_layout.PREFIX_LM_CAUSAL if prompt_eos else row_layout.LM)
    self.layout = row_layout.RowLayout(kind)
    self.option_scores, self.id_scores = option_scores, id_scores
    self.texts, self.infills = texts or {}, infills
    self.calls = []

  prefix_lm = property(lambda self: self.layout.bidirectional_inputs)
  prompt_eos = property(lambda self: self.layout.prompt_ends_with_eos)

  def with_layout(self, layout):
    view = copy.copy(self)
    view.layout = layout
    return view

  def generate(self, prompts, *, max_new_tokens):
    return [[self.texts.get(p, "")] for p in prompts]

  def score_options(self, prompts, options):
    return [[self.option_scores(p, o) for o in opts] for p, opts in zip(prompts, options)]

  def score_ids(self, prompts, targets, *, prompt_eos=None):
    self.calls.append(("score_ids", prompt_eos))
    return [self.id_scores(list(p), list(t)) for p, t in zip(prompts, targets)]

  def generate_ids(self, prompts, *, max_new_tokens, prompt_eos=None):
    self.calls.append(("generate_ids", prompt_eos))
    return [self.infills(list(p)) for p in prompts]


def _example(task, question, options, gold, chance):
  return {"task": task, "inputs": question, "options": options, "targets": gold,
          "chance": chance}


def test_heldout_rank_classification_and_normalized_scores():
  # Task a (chance 25): 4 questions; task b (chance 50): 2 questions.
  examples = [_example("demo_heldout_a", f"qa{i}", ["w", "x", "y", "z"], "x", 25)
              for i in range(4)]
  examples += [_example("demo_heldout_b", f"qb{i}", ["yes", "no"], "no", 50) for i in range(2)]
  # Known log-likelihoods: the gold option is the best in qa0, qa1 and qb0 only.
  best = {"qa0": "x", "qa1": "x", "qa2": "w", "qa3": "z", "qb0": "no", "qb1": "yes"}
  scores = lambda prompt, option: -1.0 if option == best[prompt] else -5.0 - len(option)
  # Generations: a CoT answer, a first line, a wrong answer, an answer outside the options.
  texts = {"qa0": "x is in the box. So the answer is x.", "qa1": "x\nmore text",
           "qa2": "y", "qa3": "banana", "qb0": "no.", "qb1": "No"}
  model = StubModel(option_scores=scores, texts=texts)
  out = evaluate.heldout_eval(model, examples, max_new_tokens=8)
  assert [r["ranked_choice"] for r in out["rows"]] == ["x", "x", "w", "z", "no", "yes"]
  assert [r["correct"] for r in out["rows"]] == [True, True, False, False, True, True]
  a, b = out["tasks"]["demo_heldout_a"], out["tasks"]["demo_heldout_b"]
  assert (a["accuracy"], a["rank_accuracy"], b["accuracy"], b["rank_accuracy"]) == (50, 50, 100,
                                                                                    50)
  # Flan's normalized score, 100 (acc - chance) / (100 - chance), by hand:
  # a: (50 - 25) / 75 = 1/3; b: gen (100 - 50) / 50 = 1, rank (50 - 50) / 50 = 0.
  m = out["metrics"]
  assert m["heldout_generation_normalized"] == pytest.approx((100 / 3 + 100) / 2)
  assert m["heldout_rank_normalized"] == pytest.approx((100 / 3 + 0) / 2)
  assert m["heldout_valid_answer_rate"] == pytest.approx((75 + 100) / 2)  # "banana" is not one
  assert m["heldout_a_generation_accuracy"] == 50 and m["heldout_b_rank_accuracy"] == 50


def _span_by_hand(tokens, prefix, gold):
  """Token positions (i, j) of the gold span: the text before i is the prefix without its
  trailing space (a word's "▁" belongs to the word), the text up to j ends with the gold."""
  starts = [i for i in range(len(tokens) + 1) if VOCAB.decode(tokens[:i]) == prefix.rstrip()]
  ends = [j for j in range(len(tokens) + 1) if VOCAB.decode(tokens[:j]) == prefix + gold]
  assert len(starts) == 1 and len(ends) == 1, (prefix, gold)
  return starts[0], ends[0]


@pytest.mark.parametrize("item", probes.infilling_context_items(6) + probes.infilling_fact_items(3),
                         ids=lambda it: f"{it['probe']}-{it['kind']}")
def test_infilling_prompt_is_the_r_denoisers_inputs_layout(item):
  """R denoiser inputs: mode token "[NLU]" (U-PaLM's R), the text's own tokens, the noise span
  replaced by sentinel 0 = the vocabulary's last id (T5: vocab_size - 1)."""
  text = item["prefix"] + item["gold"] + item["suffix"]
  tokens = list(VOCAB.encode(text))
  i, j = _span_by_hand(tokens, item["prefix"], item["gold"])
  sentinel0 = VOCAB.vocab_size - 1
  assert vocabularies.sentinel_ids(VOCAB)[0] == sentinel0
  expected = list(VOCAB.encode("[NLU]")) + tokens[:i] + [sentinel0] + tokens[j:]
  assert probes.infilling_prompt_ids(VOCAB, item) == expected
  assert text.count(item["gold"]) >= (2 if item["probe"] == "context" else 1)


def test_infilled_span_reads_the_text_for_sentinel_zero():
  s0, s1 = VOCAB.vocab_size - 1, VOCAB.vocab_size - 2
  paris = list(VOCAB.encode("Paris"))
  assert probes.infilled_span(VOCAB, [s0] + paris + [s1] + list(VOCAB.encode("junk"))) == "Paris"
  assert probes.infilled_span(VOCAB, paris + [EOS, 5, 6]) == "Paris"
  assert probes.infilled_span(VOCAB, [s0, EOS]) == ""


def test_infilling_eval_scores_spans_per_probe():
  items = probes.infilling_context_items(3) + probes.infilling_fact_items(2)
  s0 = VOCAB.vocab_size - 1
  prompt_gold = {tuple(probes.infilling_prompt_ids(VOCAB, it)): it["gold"] for it in items}
  # Context items: `<extra_id_0> gold EOS`; fact items: the gold without the sentinel, then a
  # wrong word.
  def infills(prompt):
    gold = prompt_gold[tuple(prompt)]
    context = any(it["gold"] == gold and it["probe"] == "context" for it in items)
    return [s0] + list(VOCAB.encode(gold)) + [EOS] if context else list(VOCAB.encode("Oslo"))
  model = StubModel(infills=infills)
  metrics, rows = evaluate.infilling_eval(model, items)
  assert metrics["infilling_context_accuracy"] == 100
  assert metrics["infilling_context_sentinel_rate"] == 100
  assert metrics["infilling_fact_sentinel_rate"] == 0
  assert metrics["infilling_fact_accuracy"] == 100 * sum(
      it["gold"] == "Oslo" for it in items[3:]) / 2
  assert model.calls == [("generate_ids", None)]  # each model's own prompt layout


def test_infilling_candidates_are_the_gold_and_other_values_of_its_kind():
  people = {p.name for p in world.make_world().people}
  pools = {"name": people, "number": {str(k) for k in range(2, 31)},
           "container": set(world.CONTAINERS),
           "city": set(world.CITIES), "job": set(world.JOBS),
           "color": set(world.COLORS)}
  items = probes.infilling_context_items(30) + probes.infilling_fact_items(30)
  for it in items:
    cands = it["candidates"]
    assert cands[0] == it["gold"] and len(set(cands)) == len(cands)
    assert set(cands) <= pools[it["kind"]]
    assert len(cands) == min(8, len(pools[it["kind"]])), it["kind"]
  # The distractors come from their own random stream: the items are those drawn without them.
  assert [it["gold"] for it in probes.infilling_context_items(6)] == [
      it["gold"] for it in items[:6]]


@pytest.mark.parametrize("item", probes.infilling_context_items(6) + probes.infilling_fact_items(3),
                         ids=lambda it: f"{it['probe']}-{it['kind']}")
def test_candidate_span_ids_fill_the_prompts_gap(item):
  """Every candidate's ids, put in the gap of the gold's prompt, give the text with that value."""
  prompt = probes.infilling_prompt_ids(VOCAB, item)
  gap = prompt.index(VOCAB.vocab_size - 1)
  head, tail = prompt[len(VOCAB.encode("[NLU]")):gap], prompt[gap + 1:]
  spans = probes.candidate_span_ids(VOCAB, item)
  assert len(spans) == len(item["candidates"])
  for value, span in zip(item["candidates"], spans):
    filled = head + span + tail
    assert VOCAB.decode(filled) == item["prefix"] + value + item["suffix"]


def test_infilling_rank_eval_picks_the_most_likely_candidate():
  items = probes.infilling_context_items(3) + probes.infilling_fact_items(2)
  s0 = VOCAB.vocab_size - 1
  # The stub prefers the gold on context items and the first distractor on fact items; every
  # target must be laid out as R-denoiser targets of one span: sentinel 0, the span, EOS.
  preferred = {tuple(probes.infilling_prompt_ids(VOCAB, it)):
               it["gold"] if it["probe"] == "context" else it["candidates"][1] for it in items}
  def id_scores(prompt, target):
    assert target[0] == s0 and target[-1] == EOS
    return 0.0 if VOCAB.decode(target[1:-1]).strip() == preferred[tuple(prompt)] else -3.0
  model = StubModel(id_scores=id_scores)
  metrics, rows = evaluate.infilling_rank_eval(model, items)
  assert [r["rank_choice"] for r in rows] == [preferred[tuple(probes.infilling_prompt_ids(
      VOCAB, it))] for it in items]
  assert metrics["infilling_context_rank_accuracy"] == 100
  assert metrics["infilling_fact_rank_accuracy"] == 0
  # Chance: 1 / number of candidates, averaged (containers have 6 values, the rest 8 here).
  expected_chance = sum(100 / len(it["candidates"]) for it in items[:3]) / 3
  assert metrics["infilling_context_rank_chance"] == pytest.approx(expected_chance)
  assert model.calls == [("score_ids", None)]


@pytest.mark.parametrize("prefix_lm", [False, True])
def test_knowledge_check_ranks_every_value_of_the_attribute(prefix_lm):
  items = probes.knowledge_items("corpus") + probes.knowledge_items("heldout")
  s2s = list(VOCAB.encode("[S2S]"))
  gold_of = {}
  for it in items:
    ids = list(VOCAB.encode(it["prompt"]))
    gold_of[tuple((s2s if prefix_lm else []) + ids)] = it
  # Known scores: the gold value is best for every "city" and "pet" cloze, a wrong one otherwise.
  def id_scores(prompt, target):
    it = gold_of[tuple(prompt)]  # KeyError if the prompt is not laid out as expected
    value = VOCAB.decode(target).rstrip(".")
    wanted = it["gold"] if it["attribute"] in ("city", "pet") else next(
        v for v in it["pool"] if v != it["gold"])
    return 0.0 if value == wanted else -3.0
  model = StubModel(prefix_lm=prefix_lm, prompt_eos=prefix_lm, id_scores=id_scores)
  metrics, rows = evaluate.knowledge_check(model)
  assert len(rows) == 2 * 40 * 5
  assert metrics["knowledge_corpus_accuracy"] == pytest.approx(40.0)  # 2 attributes of 5
  assert metrics["knowledge_heldout_city_accuracy"] == 100
  assert metrics["knowledge_heldout_job_accuracy"] == 0
  # normalized: city 100, pet 100, country (0 - 100/7) / (100 - 100/7) ... by the definition.
  chance = {a: 100 / len(probes.attribute_pool(a)) for a in probes.KNOWLEDGE_ATTRIBUTES}
  expected = sum(100 * ((100 if a in ("city", "pet") else 0) - c) / (100 - c)
                 for a, c in chance.items()) / 5
  assert metrics["knowledge_corpus_normalized"] == pytest.approx(expected)
  assert metrics["knowledge_chance"] == pytest.approx((100 / 16 + 100 / 10 + 100 / 12 + 12.5
                                                       + 12.5) / 5)
  # Causal models (Flan-base too) continue the text without the EOS of an instruction prompt; a
  # prefix LM's prompts are laid out as its rows were (its layout's EOS, if any).
  assert model.calls == [("score_ids", None if prefix_lm else False)]


def _knowledge_prompts(before=(), after=()):
  return {tuple([*before, *VOCAB.encode(it["prompt"]), *after]): it
          for it in probes.knowledge_items("corpus") + probes.knowledge_items("heldout")}


def test_knowledge_is_read_after_the_sentinel_of_an_s_layout_that_has_one():
  """S with sentinel 0 (T5's span layout, one span at the end): inputs `[S2S] text <s0>`, targets
  `<s0> value ...`; the value is scored after the sentinel."""
  s0 = VOCAB.vocab_size - 1
  items = _knowledge_prompts(VOCAB.encode("[S2S]"), [s0])

  def id_scores(prompt, target):
    it = items[tuple(prompt)]  # KeyError if the prompt is not `[S2S] text <s0>`
    assert target[0] == s0
    return 0.0 if VOCAB.decode(target[1:]).rstrip(".") == it["gold"] else -3.0
  model = StubModel(prefix_lm=True, id_scores=id_scores)
  layout = evaluate.continuation_layout(model, trained.SReading("[S2S]", sentinel=True))
  assert layout == evaluate.Layout(tuple(VOCAB.encode("[S2S]")), (s0,), (s0,))
  metrics, _ = evaluate.knowledge_check(model, layout=layout)
  assert metrics["knowledge_corpus_accuracy"] == metrics["knowledge_heldout_accuracy"] == 100


def test_a_prefix_lm_is_also_read_causally():
  """Through `[S2S]` this stub prefers a wrong value; the same stub read causally (plain text, no
  EOS, causal attention) prefers the gold: the causal reading reports the knowledge."""
  s2s = VOCAB.encode("[S2S]")
  layouts = {**{k: ("s2s", it) for k, it in _knowledge_prompts(s2s).items()},
             **{k: ("causal", it) for k, it in _knowledge_prompts().items()}}

  def id_scores(prompt, target):
    how, it = layouts[tuple(prompt)]
    wanted = it["gold"] if how == "causal" else next(v for v in it["pool"] if v != it["gold"])
    return 0.0 if VOCAB.decode(target).rstrip(".") == wanted else -3.0
  model = StubModel(prefix_lm=True, id_scores=id_scores)
  as_trained, _ = evaluate.knowledge_check(model)
  causal, _ = evaluate.knowledge_check(evaluate.causal_view(model), layout=evaluate.Layout())
  assert as_trained["knowledge_corpus_accuracy"] == 0 and causal["knowledge_corpus_accuracy"] == 100
  assert model.calls == [("score_ids", None), ("score_ids", False)]
  assert model.prefix_lm and model.prompt_eos  # the view is a copy


def test_the_s_layout_is_read_from_the_config_the_model_was_trained_with(tmp_path):
  assert trained.trained_s_reading(tmp_path) is None  # nothing saved: an import
  config = tmp_path / "config.operative.gin"
  config.write_text("TRAIN_STEPS = 4\n")
  assert trained.trained_s_reading(tmp_path) is None  # trained, but on no UL2 preset
  config.write_text("ul2r_preset.rates = (0.5, 0.25, 0.25)\nul2r_preset.s_sentinel = False\n")
  assert trained.trained_s_reading(tmp_path) == trained.SReading("[S2S]", sentinel=False)
  config.write_text("# Parameters for ul2r_preset:\nul2r_preset.s_sentinel = True\n")
  assert trained.trained_s_reading(tmp_path) == trained.SReading("[S2S]", sentinel=True)
  config.write_text("ul2_preset.mode_tokens = ('<r>', '<x>', '<s>')\n")
  assert trained.trained_s_reading(tmp_path) == trained.SReading("<s>", sentinel=False)


def test_layout_reads_the_answer_after_its_leading_ids_up_to_eos():
  s0 = VOCAB.vocab_size - 1
  layout = evaluate.Layout((9,), (s0,), (s0,))
  assert layout.prompt([5, 6]) == [9, 5, 6, s0]
  assert layout.read([s0, 7, 8, EOS, 4], EOS) == [7, 8]
  assert layout.read([7, 8], EOS) == [7, 8]  # a model that skips the sentinel is still read
  assert evaluate.Layout().read([7, EOS], EOS) == [7]


def test_u_model_gets_heldout_questions_as_s_denoiser_inputs():
  s0 = VOCAB.vocab_size - 1
  layout = evaluate.s_denoiser_layout(VOCAB, trained.SReading("[S2S]", sentinel=True))
  examples = [_example("demo_heldout_a", "Where is the key?", ["box", "bag"], "box", 50),
              _example("demo_heldout_a", "Who has it?", ["Olga", "Omar"], "Omar", 50)]
  prompts = {tuple(layout.prompt(VOCAB.encode(e["inputs"]))): e for e in examples}
  answers = {"Where is the key?": "box", "Who has it?": "Olga"}

  def infills(prompt):
    return [s0, *VOCAB.encode(answers[prompts[tuple(prompt)]["inputs"]]), EOS, 5]

  def id_scores(prompt, target):
    assert target[0] == s0 and target[-1] == EOS
    return 0.0 if VOCAB.decode(target[1:-1]) == prompts[tuple(prompt)]["targets"] else -2.0
  model = StubModel(prefix_lm=True, infills=infills, id_scores=id_scores)
  out = evaluate.heldout_eval(model, examples, max_new_tokens=4, layout=layout)
  assert [r["prediction"] for r in out["rows"]] == ["box", "Olga"]
  assert [r["correct"] for r in out["rows"]] == [True, False]
  assert [r["rank_correct"] for r in out["rows"]] == [True, True]


@pytest.mark.parametrize("prefix_lm", [True, False])
def test_a_prefix_lm_also_answers_heldout_questions_causally(prefix_lm, tmp_path):
  """Through `[S2S]` this stub writes nothing; given the plain question (the causal reading), it
  writes the gold answer and ranks it first. A causal model's causal reading is its only one."""
  gold = {e["inputs"]: e["targets"] for e in demo_tasks.heldout_eval_examples("test")}
  model = StubModel(prefix_lm=prefix_lm, texts=gold, infills=lambda prompt: [EOS],
                    id_scores=lambda prompt, target: 0.0,
                    option_scores=lambda prompt, option: 0.0 if option == gold[prompt] else -1.0)
  run_settings = {"knowledge_max_people": 1, "heldout_split": "test", "heldout_shots": 0,
                  "heldout_max_examples": 6, "max_new_tokens": 4, "infilling_examples": 1}
  out = evaluate.evaluate_generator(model, run_settings, tmp_path, "ul2r", u_model=prefix_lm)
  m = out["metrics"]
  assert m["heldout_causal_generation_accuracy"] == m["heldout_causal_rank_accuracy"] == 100
  assert m["heldout_generation_accuracy"] == (0 if prefix_lm else 100)
  causal_rows = tmp_path / "ul2r.heldout_causal.jsonl"
  assert causal_rows.exists() == prefix_lm
  if prefix_lm:
    rows = [json.loads(line) for line in causal_rows.read_text().splitlines()]
    assert len(rows) == 6 and all(r["prediction"] == gold[r["prompt"]] for r in rows)


def _result(gen, infill, knowledge=50.0):
  return {"metrics": {"heldout_generation_normalized": gen, "heldout_rank_normalized": gen / 2,
                      "infilling_context_accuracy": infill, "infilling_fact_accuracy": 0.0,
                      "knowledge_corpus_accuracy": knowledge,
                      "knowledge_heldout_accuracy": knowledge - 10},
          "evaluators": {"demo": {"tasks": {"demo_heldout_a": {
              "accuracy": 1.0, "rank_accuracy": 2.0, "chance": 25}}}}}


def test_report_json_over_seeds_has_mean_min_max(tmp_path):
  by_seed = {
      0: {"base": _result(2.0, 0.0), "ul2r": _result(1.0, 60.0), "flan_base": _result(30.0, 0.0),
          "flan_ul2r": _result(34.0, 70.0)},
      1: {"base": _result(4.0, 0.0), "ul2r": _result(3.0, 50.0), "flan_base": _result(26.0, 5.0),
          "flan_ul2r": _result(31.0, 40.0)},
      2: {"base": _result(0.0, 10.0), "ul2r": _result(2.0, 55.0), "flan_base": _result(28.0, 0.0),
          "flan_ul2r": _result(25.0, 60.0)},
  }
  pipeline_report.write_report(str(tmp_path), by_seed, [evaluate.DemoEvaluator()])
  data = json.loads((tmp_path / "report.json").read_text())
  assert data["seeds"] == [0, 1, 2]
  assert list(data["models"]) == ["base", "ul2r", "flan_base", "flan_ul2r"]
  gen = data["models"]["flan_base"]["heldout_generation_normalized"]
  assert gen == {"mean": 28.0, "min": 26.0, "max": 30.0, "values": [30.0, 26.0, 28.0]}
  assert data["models"]["ul2r"]["infilling_context_accuracy"]["mean"] == pytest.approx(55.0)
  text = (tmp_path / "report.md").read_text()
  assert "28.0 [26.0, 30.0]" in text
  # Flan-base - base: +28, +22, +28: every seed, mean 26 > the spreads (4, 4): shown.
  assert ("Flan-base generalises to held-out tasks (gen, normalized) vs base: 28.0 vs 2.0 "
          "(difference +26.0, target +20; every seed, larger than the spread) -> shown.") in text
  # Flan-U - Flan: +4, +5, -3: not every seed.
  assert "Flan-U-base is at least as good as Flan-base (held-out gen, normalized): 30.0 vs " \
         "28.0 (difference +2.0; not every seed, not larger than the spread) -> NOT shown" in text


def test_report_states_the_ul2r_claims_against_their_targets():
  """Knowledge: U-base at least 90% of the base's on every seed, read as trained and causally;
  greedy infilling: U-base - base at least +30 (with one seed, +30 is above the 5-point bar)."""
  def result(knowledge, causal, infill):
    return {"metrics": {"knowledge_corpus_accuracy": knowledge,
                        "knowledge_heldout_accuracy": knowledge / 2,
                        "knowledge_causal_corpus_accuracy": causal,
                        "knowledge_causal_heldout_accuracy": causal / 2,
                        "infilling_context_accuracy": infill}}
  by_seed = {0: {"base": result(100.0, 100.0, 0.0), "ul2r": result(26.0, 98.0, 35.0)}}
  notes = "\n".join(evaluate.demo_report.direction_notes(
      pipeline_report.summarize_seeds(by_seed)))
  assert ("UL2R keeps the base's knowledge, read as trained (corpus phrasing): U-base vs base: "
          "26.0 vs 100.0 (ratio 0.26 at worst, target 0.90 on every seed) -> NOT shown") in notes
  assert ("UL2R keeps the base's knowledge, read causally (new phrasing): U-base vs base: 49.0 vs "
          "50.0 (ratio 0.98 at worst, target 0.90 on every seed) -> shown.") in notes
  assert ("U-base vs base: 35.0 vs 0.0 (difference +35.0, target +30; one seed: must exceed +30) "
          "-> shown.") in notes
  # A base at chance, or a hair above it (a smoke run read 10.0 against chance 9.9), has no
  # knowledge to keep: equal scores are not "kept".
  chance = probes.knowledge_chance()
  for base in (chance, chance + 0.1):
    by_seed = {0: {"base": result(base, base, 0.0), "ul2r": result(base, base, 0.0)}}
    notes = "\n".join(evaluate.demo_report.direction_notes(
        pipeline_report.summarize_seeds(by_seed)))
    assert (f"read causally (corpus phrasing): U-base vs base: {base:.1f} vs {base:.1f} (ratio "
            f"1.00 at worst, target 0.90 on every seed; base is not 5 points above chance "
            f"({chance:.1f}) on every seed) -> NOT shown") in notes


def test_single_seed_report_json_is_metrics_by_name(tmp_path):
  results = {"base": _result(2.0, 0.0), "flan_base": _result(30.0, 0.0)}
  pipeline_report.write_report(str(tmp_path), {0: results}, [evaluate.DemoEvaluator()])
  data = json.loads((tmp_path / "report.json").read_text())
  assert data == {"seeds": [0], "models": {m: results[m]["metrics"] for m in results}}


def test_benchmark_section_is_a_table_with_the_paper_average_only_when_all_six_ran():
  def task(mode, score, chance):
    return {"mode": mode, "score": score, "chance": chance,
            "normalized_score": 100 * (score - chance) / (100 - chance), "num_examples": 10}
  partial = {"tasks": {"mmlu_direct": task("direct", 40.0, 25.0),
                       "mmlu_cot": task("cot", 25.0, 25.0), "bbh_direct": task("direct", 30.0, 30.0)}}
  evaluator = benchmark_eval.BenchmarkEvaluator()
  lines = evaluator.report_lines({0: {"flan_base": {"evaluators": {"benchmarks": {
      "benchmarks": partial}}}}}, {})
  assert "| model | seed | task | score | chance | normalized | n |" in lines
  assert "| Flan-base | 0 | mmlu_direct | 40.0 | 25.0 | 20.0 | 10 |" in lines
  assert not any("normalized average" in line for line in lines)  # three of the six are missing
  # All six: the Flan paper's average of the six normalized scores (20 + 0 + 0 + 50 + 30 + 10) / 6.
  full = {"tasks": {**partial["tasks"], "bbh_cot": task("cot", 65.0, 30.0),
                    "tydiqa_direct": task("direct", 30.0, 0.0),
                    "mgsm_cot": task("cot", 10.0, 0.0)}}
  lines = evaluator.report_lines({0: {"flan_base": {"evaluators": {"benchmarks": {
      "benchmarks": full}}}}}, {})
  assert lines[-1] == "| Flan-base | 0 | **Flan normalized average (six)** | | | 18.3 | |"


def test_benchmark_prompts_are_fitted_as_ul2flan_eval_fits_them():
  class Model:
    max_prompt_tokens = 12
    def count_tokens(self, text):
      return len(text.split()) + 1
  config = harness.fitted_to(harness.HarnessConfig(), Model())
  assert config.max_prompt_tokens == 12 and config.count_tokens("a b c") == 4
  assert harness.fitted_to(harness.HarnessConfig(), Model(), 5).max_prompt_tokens == 5


def test_pipeline_seeds_run_each_seed_in_its_dir_and_report_over_them(tmp_path, monkeypatch):
  trained, evaluated, reports = [], [], {}

  def fake_stage(plan, spec, dirs, seed, model_gin):
    trained.append((spec.name, dirs[spec.name], dirs.get(spec.init_from), seed))
    return True

  monkeypatch.setattr(runner, "PipelineConfig", lambda: settings.PipelineConfig(seeds=[3, 5]))
  monkeypatch.setattr(runner, "EvaluationSettings",
                      lambda: settings.EvaluationSettings(evaluators=["demo"]))
  monkeypatch.setattr(runner.preflight, "check", lambda *args: None)
  monkeypatch.setattr(runner.stages, "run_stage", fake_stage)
  monkeypatch.setattr(runner.evaluators_lib, "evaluate_model",
                      lambda name, ckpt, run_dir, settings, evaluators: evaluated.append(
                          (name, run_dir)) or {"metrics": {"x": float(len(evaluated))}})
  monkeypatch.setattr(runner.report, "write_report",
                      lambda run_dir, by_seed, evaluators, dirs=None: reports.setdefault(
                          run_dir, sorted(by_seed)) and str(tmp_path / "r.md"))
  (tmp_path / "r.md").write_text("report")
  assert runner.run_pipeline(str(tmp_path)) == 0
  for seed in (3, 5):
    run_dir = str(tmp_path / f"seed_{seed}")
    stages = [t for t in trained if t[1].startswith(run_dir + "/")]
    assert [s[0] for s in stages] == ["base", "ul2r", "flan_ul2r", "flan_base"]
    assert all(s[3] == seed for s in stages)
    assert [s[2] for s in stages[1:]] == [f"{run_dir}/base", f"{run_dir}/ul2r", f"{run_dir}/base"]
    assert [e[0] for e in evaluated if e[1] == run_dir] == ["base", "ul2r", "flan_base",
                                                            "flan_ul2r"]
    assert reports[run_dir] == [seed]
  assert reports[str(tmp_path)] == [3, 5]


def test_benchmark_prompts_use_the_chat_template_only_as_the_model_was_trained(tmp_path):
  """An import (no training config) gets its own chat template when it has one (None: the
  harness decides); a model trained here only if its Flan rows were chat exchanges, and with
  `"auto"` as the harness decides for its tokenizer (the rule "auto" trained with)."""
  def request(model_dir, chat_template=True):
    return evaluators.EvalRequest("flan_base", str(model_dir), str(tmp_path / "eval"),
                                  settings.EvaluationSettings(chat_template=chat_template))
  imported, plain, chat, auto = (tmp_path / n for n in ("imported", "plain", "chat", "auto"))
  for d in (imported, plain, chat, auto):
    d.mkdir()
  (auto / "config.operative.gin").write_text("ChatFormat.enabled = 'auto'\n")
  (plain / "config.operative.gin").write_text("# Parameters for ChatFormat:\n"
                                              "ChatFormat.system_prompt = None\n")
  (chat / "config.operative.gin").write_text("ChatFormat.enabled = True\n")
  assert benchmark_eval.chat_template_setting(request(imported)) is None
  assert benchmark_eval.chat_template_setting(request(plain)) is False
  assert benchmark_eval.chat_template_setting(request(chat)) is True
  assert benchmark_eval.chat_template_setting(request(auto)) is None
  assert benchmark_eval.chat_template_setting(request(chat, chat_template=False)) is False


def test_the_u_model_is_also_read_as_the_causal_lm_it_was_pre_trained_as(trained_model_dir,
                                                                         tmp_path):
  """The benchmark evaluator reads the U-model twice: as trained (a prefix LM: `[S2S]` before
  the prompt, prompt EOS, bidirectional prompt; the answers those ids give, laid out by hand)
  and causally; the causal reading answers exactly as the same checkpoint loaded as the causal
  LM it is. Other models are read once, without a mode token."""
  copy_bbh_subtasks(str(tmp_path / "data"), ["boolean_expressions"])
  eval_settings = settings.EvaluationSettings(
      benchmarks_data_dir=str(tmp_path / "data"), benchmarks=["bbh"], benchmark_modes="direct",
      benchmark_max_examples=3, batch_size=4)
  u_dir = tmp_path / "u_model"  # the micro model, as if trained on UL2R
  shutil.copytree(trained_model_dir, u_dir)
  with open(u_dir / "config.operative.gin", "a") as f:
    f.write("ul2r_preset.mode_tokens = ('[NLU]', '[NLG]', '[S2S]')\n")
  def sharpened(gen):
    """Params x4: sharper logits, so that greedy answers depend on the prompt (a one-step model
    answers every prompt with EOS)."""
    gen.params = jax.tree.map(lambda x: x * 4, gen.params)
    return gen
  u_model = sharpened(generator_lib.load_generator(str(u_dir), prefix_lm=True, batch_size=4))
  assert u_model.prefix_lm and u_model.prompt_eos
  evaluator = benchmark_eval.BenchmarkEvaluator()
  out = evaluator.evaluate(u_model, evaluators.EvalRequest(
      "ul2r", str(u_dir), str(tmp_path / "eval"), eval_settings))
  causal = sharpened(generator_lib.load_generator(trained_model_dir, batch_size=4))  # an LM
  assert not causal.prefix_lm and not causal.prompt_eos
  tasks = suite.build_tasks(str(tmp_path / "data"), benchmark="bbh", mode="direct")
  reference = harness.run_suite(causal, tasks, harness.fitted_to(harness.HarnessConfig(
      batch_size=4, max_examples_per_subtask=3, output_dir=str(tmp_path / "reference")), causal))

  def rows(out_dir):
    return [json.loads(line) for path in sorted(out_dir.glob("*.predictions.jsonl"))
            for line in path.read_text().splitlines()]

  assert [r["prediction"] for r in rows(tmp_path / "eval" / "ul2r.benchmarks_causal")] == [
      r["prediction"] for r in rows(tmp_path / "reference")]
  assert [r["prompt"] for r in rows(tmp_path / "eval" / "ul2r.benchmarks_causal")] == [
      r["prompt"] for r in rows(tmp_path / "reference")]
  assert out["metrics"]["benchmark_causal_bbh_direct"] == reference["tasks"]["bbh_direct"]["score"]
  # As trained: the prompt's ids after the S mode token's, in the order the harness batches them.
  (task,) = tasks
  as_trained = sorted(rows(tmp_path / "eval" / "ul2r.benchmarks"), key=lambda r: len(r["prompt"]))
  by_hand = u_model.generate_ids(
      [VOCAB.encode("[S2S]") + VOCAB.encode(r["prompt"]) for r in as_trained],
      max_new_tokens=task.max_new_tokens, stop_sequences=task.stop_sequences)
  assert [r["prediction"] for r in as_trained] == [
      stop_sequences.truncate(u_model.decode_text(ids), task.stop_sequences) for ids in by_hand]
  without_mode = u_model.generate_ids([VOCAB.encode(r["prompt"]) for r in as_trained],
                                      max_new_tokens=task.max_new_tokens,
                                      stop_sequences=task.stop_sequences)
  assert [list(a) for a in by_hand] != [list(b) for b in without_mode]  # the mode token counts
  assert out["benchmarks"]["tasks"]["bbh_direct"]["score"] == out["metrics"]["benchmark_bbh_direct"]
  lines = "\n".join(evaluator.report_lines({0: {"ul2r": {"evaluators": {"benchmarks": out}}}}, {}))
  assert "| U-base (UL2R), read causally | 0 | bbh_direct |" in lines
  flan_u = evaluator.evaluate(u_model, evaluators.EvalRequest(
      "flan_ul2r", str(u_dir), str(tmp_path / "eval"), eval_settings))
  assert "benchmarks_causal" not in flan_u and not any("causal" in k for k in flan_u["metrics"])
