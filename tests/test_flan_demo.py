"""The embedded demo instruction tasks and the held-out evaluation tasks."""

import re
import string

import pytest
import seqio

import ul2flan_tasks  # noqa: F401  (registers demo_flan / demo_heldout)
from ul2flan import vocabularies as vocab
from ul2flan.demo import world
from ul2flan.demo import tasks as demo_tasks
from ul2flan.flan import sources
from ul2flan.flan import templates

TRAIN_TASKS = [f.task for f in demo_tasks.TRAIN_FAMILIES]
HELDOUT_TASKS = [f.task for f in demo_tasks.HELDOUT_FAMILIES]
WORLD = world.make_world(0)


def all_training_examples():
  return [e for t in TRAIN_TASKS for s in demo_tasks.TRAIN_SPLITS
          for e in sources.formatted_examples(t, s)]


def test_mixtures_are_registered_with_their_splits():
  train = seqio.MixtureRegistry.get("demo_flan")
  assert sorted(t.name for t in train.tasks) == sorted(TRAIN_TASKS)
  for task in train.tasks:
    assert set(task.splits) == {"train", "validation"}
    assert set(task.output_features) == {"inputs", "targets"}
    assert all(f.add_eos for f in task.output_features.values())
  heldout = seqio.MixtureRegistry.get("demo_heldout")
  assert sorted(t.name for t in heldout.tasks) == sorted(HELDOUT_TASKS)
  assert all(set(t.splits) == {"validation", "test"} for t in heldout.tasks)


def test_training_data_covers_every_format():
  types = {e.template_type for e in all_training_examples()}
  for expected in ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt", "zs_opt_cot", "zs_noopt_cot",
                   "fs_opt_cot", "fs_noopt_cot", "zs_noopt_inv"):
    assert expected in types
  for task in TRAIN_TASKS:
    n_templates = len(templates.default_registry().family(
        task.replace("demo_flan_", "demo_")).templates)
    used = {e.template_idx for e in sources.formatted_examples(task, "train")}
    assert len(used) == n_templates, task


def test_every_demo_example_fits_the_demo_lengths():
  v = vocab.get_vocabulary()
  lengths = demo_tasks.DEMO_SEQUENCE_LENGTH
  for ex in all_training_examples() + [e for t in HELDOUT_TASKS for s in demo_tasks.HELDOUT_SPLITS
                                       for e in sources.formatted_examples(t, s)]:
    n_inputs, n_targets = len(v.encode(ex.inputs)), len(v.encode(ex.targets))
    assert n_inputs + 1 <= lengths["inputs"], (ex.task, n_inputs)  # + EOS
    assert n_targets + 1 <= lengths["targets"], (ex.task, n_targets)
    if ex.num_shots:
      assert n_inputs <= demo_tasks.DEMO_FEW_SHOT.budget_tokens


def test_cot_targets_end_with_the_answer_cue():
  for ex in all_training_examples():
    if ex.template_type.endswith("_cot"):
      assert ex.targets.endswith(f" So the answer is {ex.answer}.")
    elif not ex.template_type.endswith("_inv"):
      assert ex.targets == ex.answer


def test_fact_labels_agree_with_the_world():
  for split in ("train", "validation"):
    for ex in demo_tasks.fact_qa_examples(split, 200):
      assert ex["answer"] == str(getattr(WORLD.person(ex["name"]), ex["attribute"]))
      assert ex["answer"] in ex["options"] and len(set(ex["options"])) == 4
    for ex in demo_tasks.fact_check_examples(split, 200):
      p = WORLD.person(ex["name"])
      truths = {f"{p.name} lives in {p.city}.", f"{p.name} works as a {p.job}.",
                f"{p.name}'s favorite color is {p.color}.", f"{p.name} has a pet {p.pet}.",
                f"{p.name} is {p.age} years old."}
      assert ex["answer"] == ("true" if ex["statement"] in truths else "false")


def _values(person):
  return {"city": person.city, "job": person.job, "color": person.color, "pet": person.pet,
          "age": str(person.age)}


def test_fact_pick_and_who_labels_agree_with_the_world():
  pools = {"city": set(world.CITIES), "job": set(world.JOBS), "color": set(world.COLORS),
           "pet": set(world.PETS), "age": {str(a) for a in range(18, 81)}}
  for split in ("train", "validation"):
    for ex in demo_tasks.fact_pick_examples(split, 200):
      # The options are all of one kind, and the person's value of that kind is the answer.
      (kind,) = [k for k, pool in pools.items() if set(ex["options"]) <= pool]
      assert ex["answer"] == _values(WORLD.person(ex["name"]))[kind]
      assert len(set(ex["options"])) == 4
    for ex in demo_tasks.who_examples(split, 200):
      asked = re.search(r"(?:lives in|works as a|color is|pet) (\w+)\?", ex["question"]).group(1)
      holders = [o for o in ex["options"] if asked in _values(WORLD.person(o)).values()]
      assert holders == [ex["answer"]] and len(set(ex["options"])) == 4


def test_arithmetic_options_hold_the_answer_once():
  for ex in demo_tasks.arithmetic_examples("train", 300):
    assert ex["options"].count(ex["answer"]) == 1 and len(set(ex["options"])) == 4
    assert all(int(o) >= 0 for o in ex["options"])


def test_validation_facts_are_not_asked_in_training():
  train = {(e["name"], e["attribute"]) for e in demo_tasks.fact_qa_examples("train", 2000)}
  val = {(e["name"], e["attribute"]) for e in demo_tasks.fact_qa_examples("validation", 200)}
  assert val and not train & val


# --------------------------------------------------------------------------------------------
# Held out.

def _literal_fragments(pattern: str) -> list[str]:
  return [text.strip() for text, *_ in string.Formatter().parse(pattern) if len(text.strip()) >= 8]


def test_heldout_families_never_leak_into_training():
  train_mixture = seqio.MixtureRegistry.get("demo_flan")
  assert not {t.name for t in train_mixture.tasks} & set(HELDOUT_TASKS)
  registry = templates.default_registry()
  train_families = [registry.family(f.template_family) for f in demo_tasks.TRAIN_FAMILIES]
  heldout_families = [registry.family(f.template_family) for f in demo_tasks.HELDOUT_FAMILIES]
  assert not {f.name for f in train_families} & {f.name for f in heldout_families}
  train_patterns = {t.inputs for f in train_families for t in f.templates}
  train_inputs = [e.inputs for e in all_training_examples()]
  train_text = "\n".join(train_inputs + [e.targets for e in all_training_examples()])
  for family in heldout_families:
    for template in family.templates:
      assert template.inputs not in train_patterns
      for fragment in _literal_fragments(template.inputs):  # no held-out wording is trained on
        assert fragment not in train_text, fragment
  heldout_inputs = {e["inputs"] for s in demo_tasks.HELDOUT_SPLITS
                    for e in demo_tasks.heldout_eval_examples(s)}
  assert not heldout_inputs & set(train_inputs)
  # The held-out questions themselves are never asked in training.
  for task in HELDOUT_TASKS:
    for word in NOVEL_WORDING[task]:
      assert word not in train_text.lower(), (task, word)


# Words that name what each held-out family asks; none of them occurs in any training example.
NOVEL_WORDING = {
    "demo_heldout_country": ("country",),
    "demo_heldout_age_compare": ("older", "born earlier"),
    "demo_heldout_move_count": ("how many times", "moves of the"),
    "demo_heldout_story_person": ("besides", "apart from", "other than"),
    "demo_heldout_start_place": ("before anyone", "start out", "original"),
    "demo_heldout_given_away": ("give away", "handed", "parted with"),
}


def _word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
  words = re.findall(r"[a-z']+", text.lower())
  return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_heldout_templates_share_no_wording_with_training():
  """No three consecutive words of a held-out template's own wording (the text between its
  placeholders) occur in any training template or in any formatted training example."""
  registry = templates.default_registry()
  train_families = [registry.family(f.template_family) for f in demo_tasks.TRAIN_FAMILIES]
  train_grams = set()
  for family in train_families:
    for template in family.templates:
      for text, *_ in string.Formatter().parse(template.inputs + " " + template.targets):
        train_grams |= _word_ngrams(text, 3)
    for trigger in family.cot_triggers:
      train_grams |= _word_ngrams(trigger, 3)
  for e in all_training_examples():
    train_grams |= _word_ngrams(e.inputs, 3) | _word_ngrams(e.targets, 3)
  assert set(NOVEL_WORDING) == set(HELDOUT_TASKS)
  for f in demo_tasks.HELDOUT_FAMILIES:
    family = registry.family(f.template_family)
    for template in family.templates:
      for text, *_ in string.Formatter().parse(template.inputs):
        shared = _word_ngrams(text, 3) & train_grams
        assert not shared, (f.task, template.inputs, sorted(shared))


def _people_named(text):
  return [p for p in WORLD.people if re.search(rf"\b{p.name}\b", text)]


@pytest.mark.parametrize("split", ["validation", "test"])
def test_heldout_eval_examples_are_correct_against_the_world(split):
  examples = demo_tasks.heldout_eval_examples(split)
  assert {e["task"] for e in examples} == set(HELDOUT_TASKS)
  for e in examples:
    assert set(e) == {"task", "inputs", "targets", "options", "chance"}
    assert e["targets"] in e["options"]
    assert e["chance"] == pytest.approx(100 / len(e["options"]))
    for option in e["options"]:
      assert option in e["inputs"]  # zero-shot prompts list the options
    if e["task"] == "demo_heldout_country":
      (person,) = _people_named(e["inputs"].split("\n")[0])
      assert e["targets"] == world.CITIES[person.city] == person.country and e["chance"] == 25
    elif e["task"] == "demo_heldout_age_compare":
      people = _people_named(e["inputs"].split("\n")[0])
      assert len(people) == 2 and e["chance"] == 50
      assert e["targets"] == max(people, key=lambda p: p.age).name
    elif e["task"] == "demo_heldout_move_count":
      assert int(e["targets"]) == e["inputs"].count(" moves the ") and e["chance"] == 25
    elif e["task"] == "demo_heldout_story_person":
      named = {p.name for p in _people_named(e["inputs"].split("\n")[0])}
      assert len(named) == 2 and e["targets"] in named and e["chance"] == 25
      assert re.search(rf"(Besides|Apart from|other than) (?!{e['targets']})\w+", e["inputs"])
    elif e["task"] == "demo_heldout_start_place":
      first = re.search(r"The \w+ is in the (\w+)\.", e["inputs"]).group(1)
      assert e["targets"] == first and len(e["options"]) == 3
    else:
      assert e["task"] == "demo_heldout_given_away"
      given = re.search(r"gives (\d+) \w+ away", e["inputs"]).group(1)
      assert e["targets"] == given and e["chance"] == 25


def test_heldout_splits_are_disjoint_and_match_the_seqio_tasks():
  val = demo_tasks.heldout_eval_examples("validation")
  test = demo_tasks.heldout_eval_examples("test")
  assert not {e["inputs"] for e in val} & {e["inputs"] for e in test}
  country_people = lambda exs: {p.name for e in exs if e["task"] == "demo_heldout_country"
                                for p in _people_named(e["inputs"].split("\n")[0])}
  assert not country_people(val) & country_people(test)
  # The seqio tasks serve the same zero-shot prompts.
  for task in HELDOUT_TASKS:
    seqio_side = [(e.inputs, e.answer) for e in sources.formatted_examples(task, "test")]
    api_side = [(e["inputs"], e["targets"]) for e in test if e["task"] == task]
    assert seqio_side == api_side


def test_heldout_few_shot_and_cot_prompts():
  v = vocab.get_vocabulary()
  validation_rationales = {e["rationale"] for f in demo_tasks.HELDOUT_FAMILIES
                           for e in f.raw("validation")}
  for e in demo_tasks.heldout_eval_examples("test", num_shots=2, cot=True):
    assert len(v.encode(e["inputs"])) <= demo_tasks.DEMO_FEW_SHOT.budget_tokens
  roomy = demo_tasks.heldout_eval_examples("test", num_shots=2, cot=True, budget_tokens=1000)
  for e in roomy:
    # Two exemplars and the query each carry the trigger; exemplars come from validation.
    assert e["inputs"].count("Reason step by step.") == 3
    assert any(r in e["inputs"] for r in validation_rationales)
    assert e["targets"] in e["options"]
  with pytest.raises(ValueError, match="held-out split"):
    demo_tasks.heldout_eval_examples("train")


def test_demo_mixture_packs_whole_examples_with_loss_on_targets_only():
  """Every packed segment is one formatted training example: inputs EOS targets EOS, with the
  loss exactly on the targets (and their EOS), token for token the formatter's texts encoded."""
  vocabulary = vocab.get_vocabulary()
  lengths = demo_tasks.DEMO_SEQUENCE_LENGTH
  ds = seqio.get_dataset(
      "demo_flan", task_feature_lengths=lengths, dataset_split="train",
      shuffle=True, seed=0, feature_converter=seqio.PrefixLMFeatureConverter(pack=True))
  known = {(tuple(vocabulary.encode(e.inputs)), tuple(vocabulary.encode(e.targets)))
           for t in TRAIN_TASKS for e in sources.formatted_examples(t, "train")}
  segments = 0
  for row in ds.take(4).as_numpy_iterator():
    assert row["decoder_target_tokens"].shape == (sum(lengths.values()),)
    for seg in set(row["decoder_segment_ids"].tolist()) - {0}:
      at = row["decoder_segment_ids"] == seg
      tokens, weights = row["decoder_target_tokens"][at], row["decoder_loss_weights"][at]
      split = int((weights == 0).sum())  # inputs first, then targets: one switch, no way back
      assert (weights[:split] == 0).all() and (weights[split:] == 1).all()
      inputs, targets = tokens[:split].tolist(), tokens[split:].tolist()
      assert inputs[-1] == vocab.EOS_ID and targets[-1] == vocab.EOS_ID
      assert (tuple(inputs[:-1]), tuple(targets[:-1])) in known
      segments += 1
  assert segments >= 4


def test_formatted_task_shards_partition_the_split():
  source = seqio.TaskRegistry.get("demo_flan_fact_check").source
  full = sorted(ex["inputs"] for ex in source.get_dataset(
      split="validation", shuffle=False).as_numpy_iterator())
  shards = [sorted(ex["inputs"] for ex in source.get_dataset(
      split="validation", shuffle=True, seed=i, shard_info=seqio.ShardInfo(i, 3)
  ).as_numpy_iterator()) for i in range(3)]
  assert sorted(sum(shards, [])) == full and all(shards)
  assert len(full) == demo_tasks.TRAIN_FAMILIES[1].sizes["validation"]
