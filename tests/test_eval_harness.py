"""The evaluation harness end to end with fake generators on the real sample files.

The fakes answer from gold tables this test reads from the raw files with csv/json (not through
the loaders), and find the question by parsing the prompt formats documented in
docs/evaluation.md. Expected scores are hand-computed: an oracle scores 100, a uniform guesser
normalizes to about 0, a constant answer scores the gold frequency of that answer.
"""

import collections
import csv
import glob
import json
import os
import pathlib
import random
import re

import pytest

from ul2flan.evaluation import common
from ul2flan.evaluation import harness
from ul2flan.evaluation import mmlu
from ul2flan.evaluation import scoring
from ul2flan.evaluation import suite
from ul2flan.evaluation import tydiqa
from ul2flan.hf_vocab import chat_template as chat_template_lib

EVAL_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval"
needs_data = pytest.mark.skipif(not EVAL_DIR.is_dir(),
                                reason=f"real evaluation sample files not found at {EVAL_DIR}")


class FakeGenerator:
  """A `Generator` whose continuation of each prompt is `respond(prompt, sample_index)`."""

  def __init__(self, respond):
    self.respond = respond
    self.calls = []

  def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
               num_samples=1, seed=0):
    self.calls.append({"batch": len(prompts), "max_new_tokens": max_new_tokens,
                       "temperature": temperature, "top_k": top_k, "top_p": top_p,
                       "num_samples": num_samples, "seed": seed})
    return [[self.respond(p, i) for i in range(num_samples)] for p in prompts]


# ------------------------------------------------------------ gold tables from the raw files

def mmlu_gold_table(split="test"):
  """(question, choices) -> queue of answer letters, in file order."""
  table = collections.defaultdict(collections.deque)
  for path in sorted(glob.glob(str(EVAL_DIR / f"mmlu/data/{split}/*_{split}.csv"))):
    with open(path, encoding="utf-8", newline="") as f:
      for row in csv.reader(f):
        table[(row[0].strip(), tuple(c.strip() for c in row[1:5]))].append(row[5])
  return table


def bbh_gold_table():
  """input -> (task, queue of targets); identical inputs (causal_judgement) queue up."""
  table = {}
  for path in sorted(glob.glob(str(EVAL_DIR / "bbh/bbh/*.json"))):
    task = os.path.basename(path)[:-len(".json")]
    for example in json.loads(pathlib.Path(path).read_text())["examples"]:
      table.setdefault(example["input"].strip(), (task, collections.deque()))[1].append(
          example["target"])
  return table


def tydiqa_gold_table():
  table = {}
  for path in glob.glob(str(EVAL_DIR / "tydiqa_goldp/dev_subset_30/*.json")):
    for article in json.loads(pathlib.Path(path).read_text())["data"]:
      for paragraph in article["paragraphs"]:
        for qa in paragraph["qas"]:
          table[(paragraph["context"], qa["question"])] = (qa["id"], qa["answers"][0]["text"])
  return table


def mgsm_gold_table():
  table = {}
  for path in glob.glob(str(EVAL_DIR / "mgsm/mgsm_*.tsv")):
    with open(path, encoding="utf-8") as f:
      for line in f:
        question, answer = line.rstrip("\n").split("\t")
        table[question] = answer
  return table


# ------------------------------------------------------------ prompt parsing (documented formats)

MMLU_QUERY_RE = re.compile(
    r"^(.*?)\n\(A\) (.*?)\n\(B\) (.*?)\n\(C\) (.*?)\n\(D\) (.*?)\nA:", re.DOTALL)


def last_qa_block(prompt):
  return prompt.rsplit("\n\nQ: ", 1)[1]


def mmlu_key(prompt):
  match = MMLU_QUERY_RE.match(last_qa_block(prompt))
  return match.group(1), match.groups()[1:]


def bbh_input(prompt):
  return last_qa_block(prompt).rsplit("\nA:", 1)[0]


def tydiqa_key(prompt):
  block = prompt.rsplit("\n\nPassage: ", 1)[1]
  context, rest = block.split("\nQuestion: ", 1)
  return context, rest.rsplit("\nAnswer:", 1)[0]


def mgsm_question(prompt):
  first_line = prompt.rsplit("\n\n", 1)[1].split("\n", 1)[0]
  return re.split(r"[:：]\s?", first_line, maxsplit=1)[1]


def oracle():
  """Gold answers in each benchmark's output format, with text after them to be cut off."""
  # Repeated questions queue their golds in file order, once per mode (direct, CoT).
  mmlu_tables = {False: mmlu_gold_table(), True: mmlu_gold_table()}
  bbh_tables = {False: bbh_gold_table(), True: bbh_gold_table()}
  tydiqa_table, mgsm_table = tydiqa_gold_table(), mgsm_gold_table()

  def respond(prompt, _):
    cot = prompt.endswith("Let's think step by step.")
    if "multiple choice questions (with answers)" in prompt:
      letter = mmlu_tables[cot][mmlu_key(prompt)].popleft()
      if cot:
        return f" (A) looks tempting, but no. So the answer is ({letter}).\n\nQ: Next?"
      return f" ({letter})\n\nQ: Next?"
    if prompt.endswith("\nAnswer:"):
      return f" {tydiqa_table[tydiqa_key(prompt)][1]}\nPassage: more"
    if "\n\nQ: " in prompt:
      target = bbh_tables[cot][bbh_input(prompt)][1].popleft()
      if cot:
        return f" First 1 + 1 = 2.\nThen more. So the answer is {target}.\n\nQ: next"
      return f" {target}\nQ: next"
    gold = mgsm_table[mgsm_question(prompt)]
    return f" 3 + 4 = 7 und 7 * 2 = 14. The answer is {gold}.\n\nFrage: 99?"

  return respond


# ------------------------------------------------------------ scores on the real files

@needs_data
def test_oracle_scores_100_on_all_six_and_normalized_average_100():
  tasks = suite.build_tasks(str(EVAL_DIR), "all", "both")
  generator = FakeGenerator(oracle())
  summary = harness.run_suite(generator, tasks, harness.HarnessConfig(batch_size=64))
  assert set(summary["tasks"]) == set(scoring.FLAN_NORMALIZED_AVERAGE_TASKS)
  for name, result in summary["tasks"].items():
    assert result["score"] == 100.0, name
    assert result["normalized_score"] == pytest.approx(100.0), name
  assert summary["normalized_average"] == pytest.approx(100.0)
  assert summary["tasks"]["bbh_cot"]["num_examples"] == 6511
  assert summary["tasks"]["mgsm_cot"]["num_examples"] == 2500
  assert summary["tasks"]["tydiqa_direct"]["num_subtasks_in_mean"] == 8
  assert summary["examples_per_second"] > 0
  # Greedy everywhere without self-consistency; batches of at most 64 prompts.
  assert {c["temperature"] for c in generator.calls} == {0.0}
  assert max(c["batch"] for c in generator.calls) == 64


@needs_data
def test_uniform_guesser_normalizes_to_about_zero():
  bbh_table = bbh_gold_table()
  label_sets = collections.defaultdict(set)
  for task, targets in bbh_table.values():
    label_sets[task].update(targets)
  rng = random.Random(1234)

  def respond(prompt, _):
    if "multiple choice questions (with answers)" in prompt:
      return f" ({rng.choice('ABCD')})"
    text = bbh_input(prompt)
    letters = re.findall(r"^\(([A-Z])\)", text.rsplit("Options:", 1)[-1], re.MULTILINE)
    if letters:
      return f" ({rng.choice(letters)})"
    labels = sorted(label_sets[bbh_table[text][0]])
    return f" {rng.choice(labels)}" if len(labels) == 2 else " no idea"

  tasks = suite.build_tasks(str(EVAL_DIR), "mmlu", "direct") + suite.build_tasks(
      str(EVAL_DIR), "bbh", "direct")
  summary = harness.run_suite(FakeGenerator(respond), tasks, harness.HarnessConfig(batch_size=256))
  mmlu_result, bbh_result = summary["tasks"]["mmlu_direct"], summary["tasks"]["bbh_direct"]
  assert abs(mmlu_result["score"] - 25.0) < 5
  assert abs(mmlu_result["normalized_score"]) < 7
  assert abs(bbh_result["normalized_score"]) < 5
  for free_form in ("dyck_languages", "multistep_arithmetic_two", "object_counting",
                    "word_sorting"):
    assert bbh_result["subtasks"][free_form]["accuracy"] == 0.0
    assert bbh_result["subtasks"][free_form]["normalized"] == 0.0


@needs_data
def test_constant_cot_answer_scores_the_gold_frequency_per_task():
  """ "So the answer is (B)." everywhere: per task, the share of "(B)" targets; mean unweighted."""
  task = suite.build_tasks(str(EVAL_DIR), "bbh", "cot")[0]
  generator = FakeGenerator(lambda prompt, _: " Hmm, thinking.\nSo the answer is (B).")
  result = harness.evaluate_task(generator, task, harness.HarnessConfig(batch_size=512))
  expected = {}
  for path in glob.glob(str(EVAL_DIR / "bbh/bbh/*.json")):
    targets = [e["target"] for e in json.loads(pathlib.Path(path).read_text())["examples"]]
    expected[os.path.basename(path)[:-5]] = 100.0 * targets.count("(B)") / len(targets)
  assert expected["hyperbaton"] == pytest.approx(100 * 129 / 250)
  for name, accuracy in expected.items():
    assert result["subtasks"][name]["accuracy"] == pytest.approx(accuracy), name
  assert result["score"] == pytest.approx(sum(expected.values()) / 27)
  per_task = [100 * (expected[t] - s["chance"]) / (100 - s["chance"])
              for t, s in result["subtasks"].items()]
  assert result["normalized_score"] == pytest.approx(sum(per_task) / 27)


@needs_data
def test_tydiqa_mean_leaves_english_out():
  table = tydiqa_gold_table()

  def english_only(prompt, _):
    question_id, answer = table[tydiqa_key(prompt)]
    return f" {answer}" if question_id.startswith("english") else " wrong"

  task = tydiqa.build_task(str(EVAL_DIR))
  result = harness.evaluate_task(FakeGenerator(english_only), task)
  assert result["subtasks"]["en"]["accuracy"] == 100.0
  assert result["subtasks"]["en"]["in_mean"] is False
  assert result["score"] == 0.0 and result["num_subtasks_in_mean"] == 8
  assert result["excluded_from_mean"] == ["en"]

  def all_but_english(prompt, _):
    question_id, answer = table[tydiqa_key(prompt)]
    return " wrong" if question_id.startswith("english") else f" The {answer}."

  result = harness.evaluate_task(FakeGenerator(all_but_english), task)
  assert result["score"] == 100.0  # SQuAD normalisation drops "The" and the period


# ------------------------------------------------------------ hand-made data

def write_mmlu(root, subjects):
  """subjects: name -> test answer letters; dev rows always answer A."""
  for split in ("dev", "test"):
    (root / split).mkdir(parents=True, exist_ok=True)
  for name, letters in subjects.items():
    with open(root / "dev" / f"{name}_dev.csv", "w", newline="") as f:
      csv.writer(f).writerows([[f"dev {name} {i} words words", "w", "x", "y", "z", "A"]
                               for i in range(5)])
    with open(root / "test" / f"{name}_test.csv", "w", newline="") as f:
      csv.writer(f).writerows([[f"{name} question {i}?", "w", "x", "y", "z", letter]
                               for i, letter in enumerate(letters)])


def test_mmlu_mean_is_unweighted_over_subjects(tmp_path):
  write_mmlu(tmp_path, {"big": "AAAB", "small": "BC"})
  task = mmlu.build_task(str(tmp_path), "direct")
  result = harness.evaluate_task(FakeGenerator(lambda p, _: " (A)"), task)
  assert result["subtasks"]["big"]["accuracy"] == 75.0
  assert result["subtasks"]["small"]["accuracy"] == 0.0
  assert result["score"] == 37.5  # a pooled mean would be 50
  # 100 * (75 - 25) / 75 = 66.7 and 100 * (0 - 25) / 75 = -33.3
  assert result["normalized_score"] == pytest.approx((200.0 / 3 - 100.0 / 3) / 2)
  assert result["chance"] == 25.0


def test_batches_and_max_examples_per_subtask(tmp_path):
  write_mmlu(tmp_path, {"one": "ABCDABCDAB", "two": "ABCDAB"})
  task = mmlu.build_task(str(tmp_path), "direct")
  generator = FakeGenerator(lambda p, _: " (A)")
  result = harness.evaluate_task(generator, task, harness.HarnessConfig(batch_size=4))
  assert [c["batch"] for c in generator.calls] == [4, 4, 4, 4]  # 16 prompts
  assert [c["seed"] for c in generator.calls] == [0, 4, 8, 12]
  generator.calls.clear()
  config = harness.HarnessConfig(batch_size=4, max_examples_per_subtask=3)
  result = harness.evaluate_task(generator, task, config)
  assert [c["batch"] for c in generator.calls] == [4, 2]
  assert {s: v["num_examples"] for s, v in result["subtasks"].items()} == {"one": 3, "two": 3}
  assert {c["max_new_tokens"] for c in generator.calls} == {task.max_new_tokens}


def test_self_consistency_samples_and_votes(tmp_path):
  write_mmlu(tmp_path, {"s": "BC"})
  chains = ["So the answer is (A).", "I get (C). So the answer is (B).", "The answer is (B)"]
  generator = FakeGenerator(lambda prompt, i: " " + chains[i % 3])
  config = harness.HarnessConfig(self_consistency=3, output_dir=str(tmp_path / "out"))
  cot = mmlu.build_task(str(tmp_path), "cot")
  result = harness.evaluate_task(generator, cot, config)
  assert generator.calls[0] | {"batch": 0} == {
      "batch": 0, "max_new_tokens": cot.max_new_tokens, "temperature": 0.7, "top_k": 40,
      "top_p": None, "num_samples": 3, "seed": 0}
  assert result["subtasks"]["s"]["accuracy"] == 50.0  # voted (B): right, then wrong
  records = [json.loads(line) for line in open(tmp_path / "out" / "mmlu_cot.predictions.jsonl")]
  assert [r["extracted"] for r in records] == ["(B)", "(B)"]
  assert records[0]["sample_answers"] == ["(A)", "(B)", "(B)"]
  assert [r["correct"] for r in records] == [True, False]
  # Direct tasks stay greedy with one sample even when self-consistency is on.
  generator.calls.clear()
  harness.evaluate_task(generator, mmlu.build_task(str(tmp_path), "direct"), config)
  assert generator.calls[0]["temperature"] == 0.0 and generator.calls[0]["num_samples"] == 1


def test_prompt_budget_drops_exemplars_from_the_front(tmp_path):
  write_mmlu(tmp_path, {"s": "A"})
  example = mmlu.build_task(str(tmp_path), "direct").examples[0]

  def count_words(text):
    return len(text.split())

  # Budget for the header, the last two exemplars and the query, but not a third exemplar.
  two = "\n\n".join([example.header, *example.exemplars[-2:], example.query])
  fitted = common.fit_prompt(example, count_words, count_words(two) + 2)
  assert fitted.text == two and fitted.num_exemplars == 2 and not fitted.over_budget
  assert "dev s 4 " in fitted.text and "dev s 2 " not in fitted.text
  too_small = common.fit_prompt(example, count_words, 3)
  assert too_small.over_budget and too_small.num_exemplars == 0
  assert too_small.text.endswith(example.query)  # whole question, never cut mid-text
  generator = FakeGenerator(lambda p, _: " (A)")
  task = mmlu.build_task(str(tmp_path), "direct")
  config = harness.HarnessConfig(max_prompt_tokens=3, count_tokens=count_words)
  assert harness.evaluate_task(generator, task, config)["num_over_budget_prompts"] == 1
  with pytest.raises(ValueError, match="count_tokens"):
    harness.HarnessConfig(max_prompt_tokens=100)


def test_predictions_jsonl_and_results_json(tmp_path):
  write_mmlu(tmp_path / "mmlu", {"s": "AB"})
  out = tmp_path / "out"
  tasks = [mmlu.build_task(str(tmp_path), "direct")]
  summary = harness.run_suite(FakeGenerator(lambda p, _: " (A)\nQ: junk"), tasks,
                              harness.HarnessConfig(output_dir=str(out)))
  records = [json.loads(line) for line in open(out / "mmlu_direct.predictions.jsonl")]
  assert [(r["prediction"], r["extracted"], r["gold"], r["correct"]) for r in records] == [
      (" (A)", "(A)", "(A)", True), (" (A)", "(A)", "(B)", False)]
  assert records[0]["prompt"].endswith("(D) z\nA:") and records[0]["num_exemplars"] == 5
  saved = json.loads((out / "results.json").read_text())
  assert saved["tasks"]["mmlu_direct"]["score"] == 50.0
  assert saved["normalized_average"] is None
  assert "mgsm_cot" in saved["normalized_average_missing"]
  assert summary["tasks"]["mmlu_direct"]["examples_per_second"] > 0
  assert "mmlu_direct" in harness.format_summary(summary)


def test_generator_returning_the_wrong_shape_is_an_error(tmp_path):
  write_mmlu(tmp_path, {"s": "AB"})
  task = mmlu.build_task(str(tmp_path), "direct")

  class Broken:
    def generate(self, prompts, **kwargs):
      return [["(A)"]]  # one answer for a batch of two

  with pytest.raises(ValueError, match="expected 1 per prompt"):
    harness.evaluate_task(Broken(), task)
  with pytest.raises(TypeError, match="generate"):
    harness.run_suite(object(), [task])

  class Flat:
    def generate(self, prompts, **kwargs):
      return [" (A)" for _ in prompts]  # strings instead of one list per prompt

  with pytest.raises(TypeError, match=r"list\[list\[str\]\]"):
    harness.evaluate_task(Flat(), task)


# ------------------------------------------------------------ stops, order, chat template

class StoppingGenerator(FakeGenerator):
  """A `FakeGenerator` that takes stop sequences, as ul2flan's Generator does."""

  def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
               num_samples=1, seed=0, stop_sequences=()):
    outputs = super().generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, num_samples=num_samples, seed=seed)
    self.calls[-1].update(prompts=list(prompts), stop_sequences=stop_sequences)
    return outputs


def test_stops_reach_the_generator_and_prompts_go_shortest_first(tmp_path):
  write_mmlu(tmp_path, {"long": "AB", "s": "BA"})  # "long question" prompts are longer
  task = mmlu.build_task(str(tmp_path), "direct")
  generator = StoppingGenerator(lambda p, _: " (A)\nQ: more")
  result = harness.evaluate_task(generator, task, harness.HarnessConfig(
      output_dir=str(tmp_path / "out")))
  (call,) = generator.calls  # batch_size None: the whole task in one call
  assert call["stop_sequences"] == ("\n",) == tuple(task.stop_sequences)
  lengths = [len(p) for p in call["prompts"]]
  assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
  records = [json.loads(line) for line in open(result["predictions_file"])]
  assert [r["id"] for r in records] == [e.example_id for e in task.examples]  # file order
  assert [r["prediction"] for r in records] == [" (A)"] * 4  # still cut at the stop
  assert [r["correct"] for r in records] == [True, False, False, True]
  assert result["generation_stopped_early"] and not result["chat_template"]
  # Old generators without `stop_sequences` are called as before; batch_size still splits calls.
  old = FakeGenerator(lambda p, _: " (B)\nQ: more")
  result = harness.evaluate_task(old, task, harness.HarnessConfig(batch_size=3))
  assert [c["batch"] for c in old.calls] == [3, 1]
  assert not result["generation_stopped_early"] and result["score"] == 50.0


class ChatVocabulary:
  """A vocabulary with a chat template (as `ul2flan.hf_vocab.vocabulary.HfVocabulary` has)."""
  chat_template = chat_template_lib.ChatTemplate(
      "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
      "{% if add_generation_prompt %}<|assistant|>{% endif %}", {}, "test template")

  @staticmethod
  def encode(text):
    return text.split()


def test_chat_template_wraps_prompts_when_the_vocabulary_has_one(tmp_path):
  write_mmlu(tmp_path, {"s": "A"})
  task = mmlu.build_task(str(tmp_path), "direct")
  plain = task.examples[0].prompt()
  generator = StoppingGenerator(lambda p, _: " (A)")
  generator.vocabulary = ChatVocabulary()

  def sent(config):
    generator.calls.clear()
    result = harness.evaluate_task(generator, task, config)
    return generator.calls[0]["prompts"][0], result

  prompt, result = sent(harness.HarnessConfig())  # on by default: the vocabulary has one
  assert prompt == f"<|user|>{plain}<|end|><|assistant|>" and result["chat_template"]
  prompt, _ = sent(harness.HarnessConfig(chat_system_prompt="Be brief."))
  assert prompt == f"<|system|>Be brief.<|end|><|user|>{plain}<|end|><|assistant|>"
  prompt, result = sent(harness.HarnessConfig(chat_template=False))
  assert prompt == plain and not result["chat_template"]
  # The budget measures the wrapped prompt: room for the last two exemplars and the chat markers.
  two = "\n\n".join([task.examples[0].header, *task.examples[0].exemplars[-2:],
                     task.examples[0].query])
  budget = len(f"<|user|>{two}<|end|><|assistant|>".split())
  prompt, _ = sent(harness.HarnessConfig(max_prompt_tokens=budget,
                                         count_tokens=lambda text: len(text.split())))
  assert prompt == f"<|user|>{two}<|end|><|assistant|>"
  with pytest.raises(ValueError, match="chat template"):
    harness.evaluate_task(StoppingGenerator(lambda p, _: "x"), task,
                          harness.HarnessConfig(chat_template=True))
