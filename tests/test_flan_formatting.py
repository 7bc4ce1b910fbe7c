"""The Flan formatting engine and the template registry.

Exact strings are written out by hand from the format definitions (docs/flan.md), using a
one-template, one-delimiter, one-option-style registry so no random choice is left open.
"""

import collections
import random

import pytest

from ul2flan import vocabularies as vocab
from ul2flan.flan import formatting
from ul2flan.flan import templates as T

FAMILY = T.Family("toy", (T.Template("Q? {question}{options}"),
                          T.Template("Inv: {answer}", targets="{question}", inverted=True)),
                  cot_triggers=("Think.",))
DELIMS = (T.Delimiter("Q: ", "A: "),)
STYLES = (T.OptionStyle("\nOptions: ", "{option}", ", ", "."),)
EX0 = {"question": "What is 2 + 3?", "answer": "5", "options": ["4", "5", "6"],
       "rationale": "2 plus 3 makes 5."}
EX1 = {"question": "What is 1 + 1?", "answer": "2", "options": ["1", "2"],
       "rationale": "1 plus 1 makes 2."}


def words(text: str) -> int:
  return len(text.split())


def toy(fmt: str, **kw) -> formatting.Formatter:
  kw.setdefault("few_shot", formatting.FewShotConfig(min_shots=1, max_shots=1))
  return formatting.Formatter("toy_task", FAMILY, [fmt], count_tokens=words, delimiters=DELIMS,
                              option_styles=STYLES, **kw)


@pytest.mark.parametrize("fmt, inputs, targets", [
    ("zs_opt", "Q? What is 2 + 3?\nOptions: 4, 5, 6.", "5"),
    ("zs_noopt", "Q? What is 2 + 3?", "5"),
    ("zs_opt_cot", "Q? What is 2 + 3?\nOptions: 4, 5, 6.\nThink.",
     "2 plus 3 makes 5. So the answer is 5."),
    ("zs_noopt_cot", "Q? What is 2 + 3?\nThink.", "2 plus 3 makes 5. So the answer is 5."),
    ("zs_noopt_inv", "Inv: 5", "What is 2 + 3?"),
    ("fs_opt", "Q: Q? What is 1 + 1?\nOptions: 1, 2.\nA: 2\n\nQ: Q? What is 2 + 3?\nOptions: "
     "4, 5, 6.\nA:", "5"),
    ("fs_noopt", "Q: Q? What is 1 + 1?\nA: 2\n\nQ: Q? What is 2 + 3?\nA:", "5"),
    ("fs_noopt_cot", "Q: Q? What is 1 + 1?\nThink.\nA: 1 plus 1 makes 2. So the answer is 2.\n\n"
     "Q: Q? What is 2 + 3?\nThink.\nA:", "2 plus 3 makes 5. So the answer is 5."),
    ("fs_opt_cot", "Q: Q? What is 1 + 1?\nOptions: 1, 2.\nThink.\nA: 1 plus 1 makes 2. So the "
     "answer is 2.\n\nQ: Q? What is 2 + 3?\nOptions: 4, 5, 6.\nThink.\nA:",
     "2 plus 3 makes 5. So the answer is 5."),
    ("fs_noopt_inv", "Q: Inv: 2\nA: What is 1 + 1?\n\nQ: Inv: 5\nA:", "What is 2 + 3?"),
])
def test_each_format_renders_exactly(fmt, inputs, targets):
  ex = toy(fmt, seed=7).format_one([EX0, EX1], 0, "train")
  assert (ex.inputs, ex.targets) == (inputs, targets)
  assert ex.template_type == fmt
  assert ex.num_shots == (1 if fmt.startswith("fs") else 0)
  assert ex.answer == "5" and ex.options == ("4", "5", "6")


def test_format_names_round_trip_and_reject_garbage():
  for name in ("zs_opt", "fs_noopt", "fs_opt_cot", "zs_noopt_inv"):
    assert formatting.Format.parse(name).name == name
  for bad in ("opt", "xs_opt", "zs_maybe", "zs_opt_cot_cot", "zs_opt_cot_inv"):
    with pytest.raises(ValueError):
      formatting.Format.parse(bad)


def test_answer_cue_drops_a_trailing_period_of_the_answer():
  ex = dict(EX0, answer="5.", options=[])
  assert toy("zs_noopt_cot").format_one([ex], 0, "x").targets.endswith("So the answer is 5.")


def test_few_shot_without_any_other_example_falls_back_or_drops():
  fell_back = toy("fs_opt").format_one([EX0], 0, "train")
  assert fell_back.template_type == "zs_opt" and fell_back.num_shots == 0
  assert fell_back.inputs == "Q? What is 2 + 3?\nOptions: 4, 5, 6."
  drop = formatting.FewShotConfig(min_shots=1, max_shots=1, fallback="drop")
  assert toy("fs_opt", few_shot=drop).format_one([EX0], 0, "train") is None


def _coded_examples(n: int, prefix: str = "item", filler: int = 0) -> list[dict]:
  """Examples whose answer string occurs nowhere else, optionally padded with filler words."""
  pad = " ".join(["pad"] * filler)
  return [{"question": f"{prefix} {i}: what is the code? {pad}".strip(), "answer": f"zq{i}x",
           "options": [f"zq{i}x", f"other{i}"]} for i in range(n)]


def test_few_shot_respects_budget_hides_own_answer_and_uses_same_task():
  v = vocab.get_vocabulary()
  budget = 200  # about three exemplars: longer draws must be pruned
  examples = _coded_examples(300, "alpha", filler=2)
  formatter = formatting.Formatter(
      "alpha_task", T.default_registry().family("generic_qa"), ["fs_opt", "fs_noopt"], seed=3,
      few_shot=formatting.FewShotConfig(min_shots=1, max_shots=5, budget_tokens=budget),
      count_tokens=lambda s: len(v.encode(s)))
  out = formatter.format_all(examples, "train")
  assert len(out) == 300
  shots = collections.Counter(e.num_shots for e in out)
  assert shots[0] < 30 and max(shots) >= 3, shots
  for i, ex in enumerate(out):
    if ex.num_shots:
      assert len(v.encode(ex.inputs)) <= budget
      assert ex.template_type.startswith("fs_")
    else:
      assert ex.template_type.startswith("zs_")
    # The query's own answer appears only among its own listed options, never as an
    # exemplar's answer (exemplars are other examples)...
    assert ex.inputs.count(f"zq{i}x") == (1 if "_opt" in ex.template_type else 0)
    # ... and every exemplar is an "alpha" example: one per shot plus the query.
    assert ex.inputs.count("alpha ") == ex.num_shots + 1


def test_duplicate_of_the_query_is_never_an_exemplar():
  base = _coded_examples(3)
  examples = base * 4  # every example appears four times
  f = toy("fs_noopt", few_shot=formatting.FewShotConfig(min_shots=2, max_shots=2))
  for i in range(len(examples)):
    ex = f.format_one(examples, i, "train")
    assert f"zq{i % 3}x" not in ex.inputs
    assert ex.num_shots == 2


def test_exemplars_can_come_from_another_split_pool():
  pool = _coded_examples(5, "dev")
  queries = _coded_examples(5, "test")
  out = toy("fs_opt").format_all(queries, "test", exemplar_pool=pool)
  for ex in out:
    assert ex.inputs.count("dev ") == 1 and ex.inputs.count("test ") == 1


def test_choices_are_deterministic_per_seed_and_index_and_cover_all_options():
  registry = T.default_registry()
  family = registry.family("generic_qa")
  examples = [dict(e, context=f"Some text number {i}.") for i, e in
              enumerate(_coded_examples(400))]

  def make(seed):
    return formatting.Formatter("det", family, {"zs_opt": 1, "fs_opt": 1, "zs_noopt_inv": 1},
                                seed=seed, count_tokens=words)

  a, b, c = make(0).format_all(examples, "train"), make(0).format_all(examples, "train"), \
      make(1).format_all(examples, "train")
  assert a == b
  assert a != c
  # Shard-safe: example i renders the same when formatted alone, whatever else is formatted.
  for i in random.Random(0).sample(range(400), 20):
    assert make(0).format_one(examples, i, "train") == a[i]
  # Every template, format and delimiter is used.
  assert {e.template_idx for e in a} == set(range(len(family.templates)))
  assert {e.template_type for e in a} == {"zs_opt", "fs_opt", "zs_noopt_inv"}
  fs_prompts = [e.inputs for e in a if e.num_shots]
  for d in registry.delimiters:
    if d.input_prefix:
      assert any(p.startswith(d.input_prefix) for p in fs_prompts), d
  # Different splits draw differently.
  assert make(0).format_all(examples, "validation") != a


def test_bad_examples_and_configs_get_clear_errors():
  with pytest.raises(ValueError, match="not one of its options"):
    toy("zs_opt").format_one([dict(EX0, answer="7")], 0, "train")
  with pytest.raises(ValueError, match="no template .* fits"):
    toy("zs_noopt_cot").format_one([{"question": "q", "answer": "a"}], 0, "train")
  with pytest.raises(ValueError, match="count_tokens"):
    formatting.Formatter("t", FAMILY, ["fs_opt"], delimiters=DELIMS, option_styles=STYLES)
  with pytest.raises(ValueError, match="inverted"):
    formatting.Formatter("t", T.Family("d", (T.Template("{question}"),)), ["zs_opt_inv"],
                         delimiters=DELIMS, option_styles=STYLES)
  with pytest.raises(ValueError, match="fallback"):
    formatting.FewShotConfig(fallback="maybe")


def test_registry_extends_from_python_and_json(tmp_path):
  registry = T.TemplateRegistry()
  registry.add_family("py_family", ["Say {answer}!"])
  path = tmp_path / "t.json"
  path.write_text('{"families": {"json_family": {"templates": [{"inputs": "J {question}", '
                  '"targets": "<{answer}>"}]}}, "delimiters": [{"input_prefix": "In: ", '
                  '"target_prefix": "Out: "}], "option_styles": [{"prefix": " [", "suffix": "]"}]}')
  registry.load_json(str(path))
  f = formatting.Formatter("j", registry.family("json_family"), ["fs_opt"], count_tokens=words,
                           delimiters=registry.delimiters, option_styles=registry.option_styles)
  ex = f.format_one([{"question": "a", "answer": "b", "options": ["b", "c"]},
                     {"question": "d", "answer": "e"}], 1, "s")
  assert ex.inputs == "In: J a [b, c]\nOut: <b>\n\nIn: J d\nOut:"
  assert ex.targets == "<e>"
  assert registry.family("py_family").templates[0].fields == {"answer"}
  with pytest.raises(ValueError, match="already registered"):
    registry.add_family("py_family", ["x"])
  with pytest.raises(KeyError, match="no template family"):
    registry.family("nope")


@pytest.mark.parametrize("bad", [
    '{"families": {"f": {"templates": [{"inputs": "{question:>5}"}]}}}',
    '{"families": {"f": {"templates": [{"inputs": "{0}"}]}}}',
    '{"families": {"f": {"templates": [{"inputs": "x", "target": "y"}]}}}',
    '{"families": {"f": {"templates": []}}}',
    '{"familes": {}}',
    '{"families": {"f": {"templates": [{"inputs": "ok"}]}}',
])
def test_bad_template_json_is_rejected(tmp_path, bad):
  path = tmp_path / "bad.json"
  path.write_text(bad)
  with pytest.raises(ValueError):
    T.TemplateRegistry().load_json(str(path))


def test_shipped_templates_load():
  registry = T.default_registry()
  for name in ("generic_qa", "demo_fact_qa", "demo_arithmetic", "demo_heldout_country"):
    assert registry.family(name).templates
  assert len(registry.delimiters) >= 4 and len(registry.option_styles) >= 2


@pytest.mark.parametrize("budget, shots", [(35, 3), (34, 2), (26, 2), (25, 1), (17, 1), (16, 0)])
def test_pruning_drops_exemplars_until_the_prompt_fits(budget, shots):
  # Each exemplar block "Q: Q? What is a + b?\nA: c" is 9 words, the query block 8 words.
  examples = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 5)]
  f = toy("fs_noopt", few_shot=formatting.FewShotConfig(min_shots=3, max_shots=3,
                                                         budget_tokens=budget))
  ex = f.format_one(examples, 0, "train")
  assert ex.num_shots == shots
  assert words(ex.inputs) == (8 + 9 * shots if shots else 6)  # zero-shot: "Q? What is 1 + 1?"
  assert words(ex.inputs) <= budget or shots == 0
