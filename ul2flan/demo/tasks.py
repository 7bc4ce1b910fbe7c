"""Embedded demo instruction tasks, generated from `ul2flan.demo.world` (the demo corpus's facts).

Training families (mixture `demo_flan`), each with train/validation splits and several formats,
so zero-shot, few-shot, options / no options, chain-of-thought and input inversion all occur:

* `demo_flan_fact_qa`: a person's city, job, favourite colour, pet or age.
* `demo_flan_fact_check`: is a statement about a person true or false (with options).
* `demo_flan_arithmetic`: word problems with rationales (`world.arithmetic_episode`).
* `demo_flan_state_tracking`: where an object ends up (`world.state_tracking_episode`).
* `demo_flan_story_qa`: a place, animal, fruit, colour or job named in a short story.
* `demo_flan_fact_pick`: a fact about a person whose kind only the listed options tell.
* `demo_flan_who`: which of four people has a given city, job, colour or pet.

Held-out families (mixture `demo_heldout`, splits validation/test), with their own templates
(`templates/heldout.json`) and data, never trained on:

* `demo_heldout_country`: the country a person lives in (2 hops: person -> city -> country).
* `demo_heldout_age_compare`: which of two people is older.
* `demo_heldout_move_count`: how many times an object was moved.
* `demo_heldout_story_person`: the other person named in a story.
* `demo_heldout_start_place`: where an object was before it was moved.
* `demo_heldout_given_away`: how many fruit were given away.

The (person, attribute) pairs of fact QA / fact check are split between train and validation,
so validation asks about facts the instruction data never asked about.
"""

from __future__ import annotations

import functools
import random
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ul2flan import registration
from ul2flan import vocabularies
from ul2flan.demo import world as world_lib
from ul2flan.flan import formatting
from ul2flan.flan import mixtures
from ul2flan.flan import sources
from ul2flan.flan import templates as templates_lib

# The tiny demo model trains on 320-token packed sequences: inputs + targets.
DEMO_SEQUENCE_LENGTH = {"inputs": 224, "targets": 96}
DEMO_FEW_SHOT = formatting.FewShotConfig(
    min_shots=1, max_shots=3, budget_tokens=DEMO_SEQUENCE_LENGTH["inputs"] - 1)  # - EOS
DEMO_CAP = 2000  # per-task cap inside a demo submixture

TRAIN_MIXTURE = "demo_flan"
HELDOUT_MIXTURE = "demo_heldout"
TRAIN_SPLITS = ("train", "validation")
HELDOUT_SPLITS = ("validation", "test")

Raw = dict[str, Any]

# --------------------------------------------------------------------------------------------
# Facts about people.

_ATTRIBUTES = ("city", "job", "color", "pet", "age")
_AGES = tuple(str(a) for a in range(18, 81))


def _value(person: world_lib.Person, attribute: str) -> str:
  return str(getattr(person, attribute))


def _pool(attribute: str) -> tuple[str, ...]:
  return {"city": tuple(sorted(world_lib.CITIES)), "job": world_lib.JOBS,
          "color": world_lib.COLORS, "pet": world_lib.PETS, "age": _AGES}[attribute]


def _question(name: str, attribute: str) -> str:
  return {"city": f"Where does {name} live?", "job": f"What is {name}'s job?",
          "color": f"What is {name}'s favorite color?", "pet": f"What pet does {name} have?",
          "age": f"How old is {name}?"}[attribute]


def _statement(name: str, attribute: str, value: str) -> str:
  return {"city": f"{name} lives in {value}.", "job": f"{name} works as a {value}.",
          "color": f"{name}'s favorite color is {value}.", "pet": f"{name} has a pet {value}.",
          "age": f"{name} is {value} years old."}[attribute]


def _with_distractors(answer: str, pool: Sequence[str], n: int, rng: random.Random) -> list[str]:
  options = [answer] + rng.sample([v for v in pool if v != answer], n - 1)
  rng.shuffle(options)
  return options


@functools.lru_cache(maxsize=None)
def _fact_pairs(split: str, seed: int) -> tuple[tuple[str, str], ...]:
  """(person, attribute) pairs of a split: 20% of all pairs are kept for validation."""
  world = world_lib.make_world(seed)
  pairs = [(p.name, a) for p in world.people for a in _ATTRIBUTES]
  random.Random(f"demo_facts/pairs/{seed}").shuffle(pairs)
  n_validation = len(pairs) // 5
  return tuple(pairs[:n_validation] if split == "validation" else pairs[n_validation:])


def _drawn_facts(family: str, split: str, n: int, seed: int,
                 attributes: Sequence[str] = _ATTRIBUTES):
  """`n` draws of a (person, attribute) pair of the split, restricted to `attributes`: yields
  (rng, name, attribute, the person's value). The rng is the family's own stream, for the
  caller's further choices (distractors, claims) in the same order."""
  world = world_lib.make_world(seed)
  rng = random.Random(f"{family}/{split}/{seed}")
  pairs = [(name, a) for name, a in _fact_pairs(split, seed) if a in attributes]
  for _ in range(n):
    name, attribute = rng.choice(pairs)
    yield rng, name, attribute, _value(world.person(name), attribute)


def fact_qa_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  examples = []
  for rng, name, attribute, answer in _drawn_facts("demo_fact_qa", split, n, seed):
    examples.append({"name": name, "attribute": attribute, "question": _question(name, attribute),
                     "answer": answer,
                     "options": _with_distractors(answer, _pool(attribute), 4, rng)})
  return examples


def fact_check_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  examples = []
  for rng, name, attribute, truth in _drawn_facts("demo_fact_check", split, n, seed):
    claimed = truth if rng.random() < 0.5 else rng.choice([v for v in _pool(attribute)
                                                           if v != truth])
    examples.append({"name": name, "statement": _statement(name, attribute, claimed),
                     "answer": "true" if claimed == truth else "false",
                     "options": ["true", "false"],
                     "rationale": _statement(name, attribute, truth)})
  return examples


def fact_pick_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  """A fact about a person whose question names only the person: the listed options' kind (cities,
  jobs, colours, pets or ages) says which fact is asked, so the answer must be read off them."""
  examples = []
  for rng, name, attribute, answer in _drawn_facts("demo_fact_pick", split, n, seed):
    examples.append({"name": name, "answer": answer,
                     "options": _with_distractors(answer, _pool(attribute), 4, rng),
                     "rationale": _statement(name, attribute, answer)})
  return examples


def _who_question(attribute: str, value: str) -> str:
  return {"city": f"Who lives in {value}?", "job": f"Who works as a {value}?",
          "color": f"Whose favorite color is {value}?", "pet": f"Who has a pet {value}?"}[attribute]


def who_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  """The reverse lookup: which of four people has a city, job, colour or pet (exactly one does)."""
  world = world_lib.make_world(seed)
  examples = []
  for rng, name, attribute, value in _drawn_facts("demo_who", split, n, seed,
                                                  ("city", "job", "color", "pet")):
    others = [q.name for q in world.people if _value(q, attribute) != value]
    options = [name] + rng.sample(others, 3)
    rng.shuffle(options)
    examples.append({"question": _who_question(attribute, value), "answer": name,
                     "options": options})
  return examples


def _number_options(answer: int, rng: random.Random) -> list[str]:
  """The answer and three other numbers near it, shuffled."""
  near = [x for x in range(max(0, answer - 9), answer + 10) if x != answer]
  options = [str(x) for x in [answer] + rng.sample(near, 3)]
  rng.shuffle(options)
  return options


def _episode_fields(episode: world_lib.Episode) -> Raw:
  fields = {"context": episode.context, "question": episode.question,
            "rationale": episode.rationale, "answer": episode.answer}
  if episode.options:
    fields["options"] = list(episode.options)
  return fields


def arithmetic_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  world = world_lib.make_world(seed)
  rng = random.Random(f"demo_arithmetic/{split}/{seed}")
  examples = []
  for _ in range(n):
    fields = _episode_fields(world_lib.arithmetic_episode(world, rng))
    examples.append({**fields, "options": _number_options(int(fields["answer"]), rng)})
  return examples


def state_tracking_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  world = world_lib.make_world(seed)
  rng = random.Random(f"demo_state_tracking/{split}/{seed}")
  return [_episode_fields(world_lib.state_tracking_episode(world, rng)) for _ in range(n)]


def _story_questions(facts: dict) -> list[tuple[str, str, Sequence[str]]]:
  """(question, answer, answer pool) pairs a story answers; never about who is in it."""
  p, other = facts["person"], facts["other"]
  cities, pets = sorted(world_lib.CITIES), world_lib.PETS
  fruits, colors, jobs = world_lib.FRUITS, world_lib.COLORS, world_lib.JOBS
  if facts["kind"] == "walk":
    return [(f"Which city did {p.name} walk through?", p.city, cities),
            (f"What animal was with {p.name}?", p.pet, pets),
            ("What fruit did they share?", facts["fruit"], fruits),
            ("Which color did they talk about?", p.color, colors)]
  if facts["kind"] == "letter":
    return [(f"Where is life quiet, according to {p.name}?", p.city, cities),
            ("Which city did the reply come from?", other.city, cities),
            ("What animal was well?", p.pet, pets)]
  return [("In which city was the market?", p.city, cities),
          (f"What fruit did {p.name} buy?", facts["fruit"], fruits),
          ("What color was the paper?", p.color, colors),
          ("What is the seller's job?", other.job, jobs)]


def story_qa_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  """Reading comprehension: a question about a story's places, animals, fruit, colours, jobs."""
  world = world_lib.make_world(seed)
  rng = random.Random(f"demo_story_qa/{split}/{seed}")
  examples = []
  for _ in range(n):
    text, facts = world_lib.story_facts(world, rng)
    question, answer, pool = rng.choice(_story_questions(facts))
    examples.append({"context": text, "question": question, "answer": answer,
                     "options": _with_distractors(answer, pool, 4, rng)})
  return examples


# --------------------------------------------------------------------------------------------
# Held-out families.

def country_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  """The first `n` people of the split's half of the world (the halves are disjoint)."""
  world = world_lib.make_world(seed)
  people = list(world.people)
  random.Random(f"demo_heldout_country/people/{seed}").shuffle(people)
  half = len(people) // 2
  people = people[:half] if split == "validation" else people[half:]
  countries = sorted(set(world_lib.CITIES.values()))
  rng = random.Random(f"demo_heldout_country/{split}/{seed}")
  examples = []
  for p in people[:n]:
    examples.append({"name": p.name, "question": f"In which country does {p.name} live?",
                     "answer": p.country,
                     "options": _with_distractors(p.country, countries, 4, rng),
                     "rationale": f"{p.name} lives in {p.city}. {p.city} is in {p.country}."})
  return examples


def age_compare_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  world = world_lib.make_world(seed)
  pairs = [(a, b) for i, a in enumerate(world.people) for b in world.people[i + 1:]
           if a.age != b.age]
  rng = random.Random(f"demo_heldout_age_compare/{split}/{seed}")
  random.Random(f"demo_heldout_age_compare/pairs/{seed}").shuffle(pairs)
  start = 0 if split == "validation" else len(pairs) // 2
  examples = []
  for a, b in pairs[start:start + n]:
    first, second = (a, b) if rng.random() < 0.5 else (b, a)
    older = max(first, second, key=lambda p: p.age)
    examples.append({"first": first.name, "second": second.name,
                     "question": f"Who is older, {first.name} or {second.name}?",
                     "answer": older.name, "options": [first.name, second.name],
                     "rationale": f"{first.name} is {first.age} years old and {second.name} is "
                                  f"{second.age} years old."})
  return examples


_MOVE_COUNT_OPTIONS = ("1", "2", "3", "4")


def move_count_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  world = world_lib.make_world(seed)
  rng = random.Random(f"demo_heldout_move_count/{split}/{seed}")
  examples = []
  for _ in range(n):
    moves = rng.randint(1, len(_MOVE_COUNT_OPTIONS))
    episode = world_lib.state_tracking_episode(world, rng, num_moves=moves)
    obj = re.fullmatch(r"Where is the (\w+)\?", episode.question).group(1)
    examples.append({"context": episode.context, "obj": obj,
                     "question": f"How many times was the {obj} moved?", "answer": str(moves),
                     "options": list(_MOVE_COUNT_OPTIONS),
                     "rationale": f"The {obj} is moved {moves} times: " + " ".join(
                         s for s in re.findall(r"[^.]*\.", episode.context) if " moves " in s
                     ).strip()})
  return examples


def story_person_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  """Reading: the other person named in a story (options: them, the protagonist, two more)."""
  world = world_lib.make_world(seed)
  rng = random.Random(f"demo_heldout_story_person/{split}/{seed}")
  names = [p.name for p in world.people]
  examples = []
  for _ in range(n):
    text, p, friend = world_lib.story_with_people(world, rng)
    others = rng.sample([x for x in names if x not in (p.name, friend.name)], 2)
    options = [friend.name, p.name] + others
    rng.shuffle(options)
    examples.append({"context": text, "name": p.name, "answer": friend.name,
                     "options": options,
                     "rationale": f"The story is about {p.name} and {friend.name}."})
  return examples


def start_place_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  """Reading: where an object was before it was moved (the training task asks where it ends)."""
  world = world_lib.make_world(seed)
  rng = random.Random(f"demo_heldout_start_place/{split}/{seed}")
  examples = []
  for _ in range(n):
    episode = world_lib.state_tracking_episode(world, rng)
    obj, start = re.search(r"The (\w+) is in the (\w+)\.", episode.context).groups()
    examples.append({"context": episode.context, "obj": obj, "answer": start,
                     "options": list(episode.options),
                     "rationale": f"Before any move, the {obj} is in the {start}."})
  return examples


def given_away_examples(split: str, n: int, seed: int = 0) -> list[Raw]:
  """Reading numbers: how many fruit were given away (the training task asks how many are left)."""
  world = world_lib.make_world(seed)
  rng = random.Random(f"demo_heldout_given_away/{split}/{seed}")
  examples = []
  while len(examples) < n:
    p = rng.choice(world.people)
    fruit = rng.choice(world_lib.FRUITS)
    a, b = rng.randint(2, 30), rng.randint(2, 20)
    c = rng.randint(1, a + b - 1)
    options = [str(x) for x in (a, b, c, a + b - c)]
    if len(set(options)) < 4:
      continue
    rng.shuffle(options)
    context = (f"{p.name} the {p.job} buys {a} {fruit}. Then {p.name} buys {b} more {fruit}. "
               f"Later {p.name} gives {c} {fruit} away.")
    examples.append({"context": context, "name": p.name, "fruit": fruit, "answer": str(c),
                     "options": options, "rationale": f"{p.name} gives {c} {fruit} away."})
  return examples


# --------------------------------------------------------------------------------------------
# Registration.

class DemoFamily:
  """A demo task: its raw-example generator, sizes per split and format mix."""

  def __init__(self, task: str, template_family: str, generate: Callable[..., list[Raw]],
               sizes: Mapping[str, int], formats: Mapping[str, float]):
    self.task = task
    self.template_family = template_family
    self.generate = generate
    self.sizes = dict(sizes)
    self.formats = dict(formats)

  def raw(self, split: str, seed: int = 0) -> list[Raw]:
    return _cached_raw(self.task, split, seed)


_TRAIN_SIZES = {"train": 2000, "validation": 200}
TRAIN_FAMILIES = (
    DemoFamily("demo_flan_fact_qa", "demo_fact_qa", fact_qa_examples, _TRAIN_SIZES,
               {"zs_opt": 3, "zs_noopt": 2, "fs_opt": 1, "fs_noopt": 0.5, "zs_noopt_inv": 0.5}),
    DemoFamily("demo_flan_fact_check", "demo_fact_check", fact_check_examples,
               {"train": 1000, "validation": 200},
               {"zs_opt": 2, "fs_opt": 1, "zs_noopt": 1, "zs_opt_cot": 1, "fs_opt_cot": 0.5}),
    DemoFamily("demo_flan_arithmetic", "demo_arithmetic", arithmetic_examples,
               {"train": 3000, "validation": 200},
               {"zs_noopt_cot": 2, "fs_noopt_cot": 1, "zs_noopt": 1, "fs_noopt": 0.5,
                "zs_noopt_inv": 0.5, "zs_opt": 1, "zs_opt_cot": 0.5}),
    DemoFamily("demo_flan_state_tracking", "demo_state_tracking", state_tracking_examples,
               _TRAIN_SIZES,
               # No few-shot CoT: one exemplar with its rationale already overflows the budget.
               {"zs_opt_cot": 1, "zs_opt": 2, "zs_noopt": 1, "fs_noopt": 0.5, "fs_opt": 0.5}),
    DemoFamily("demo_flan_story_qa", "demo_story_qa", story_qa_examples, _TRAIN_SIZES,
               {"zs_opt": 2, "zs_noopt": 1, "fs_opt": 0.5}),
    DemoFamily("demo_flan_fact_pick", "demo_fact_pick", fact_pick_examples, _TRAIN_SIZES,
               {"zs_opt": 3, "fs_opt": 1, "zs_opt_cot": 0.5}),
    DemoFamily("demo_flan_who", "demo_who", who_examples, _TRAIN_SIZES,
               {"zs_opt": 3, "fs_opt": 1}),
)
_HELDOUT_SIZES = {"validation": 60, "test": 60}
HELDOUT_FORMAT = "zs_opt"
HELDOUT_FAMILIES = (
    DemoFamily("demo_heldout_country", "demo_heldout_country", country_examples,
               {"validation": 20, "test": 20}, {HELDOUT_FORMAT: 1}),  # one per person
    DemoFamily("demo_heldout_age_compare", "demo_heldout_age_compare", age_compare_examples,
               _HELDOUT_SIZES, {HELDOUT_FORMAT: 1}),
    DemoFamily("demo_heldout_move_count", "demo_heldout_move_count", move_count_examples,
               _HELDOUT_SIZES, {HELDOUT_FORMAT: 1}),
    DemoFamily("demo_heldout_story_person", "demo_heldout_story_person", story_person_examples,
               _HELDOUT_SIZES, {HELDOUT_FORMAT: 1}),
    DemoFamily("demo_heldout_start_place", "demo_heldout_start_place", start_place_examples,
               _HELDOUT_SIZES, {HELDOUT_FORMAT: 1}),
    DemoFamily("demo_heldout_given_away", "demo_heldout_given_away", given_away_examples,
               _HELDOUT_SIZES, {HELDOUT_FORMAT: 1}),
)
_FAMILIES = {f.task: f for f in TRAIN_FAMILIES + HELDOUT_FAMILIES}


@functools.lru_cache(maxsize=None)
def _cached_raw(task: str, split: str, seed: int) -> list[Raw]:
  family = _FAMILIES[task]
  if split not in family.sizes:
    raise ValueError(f"demo task {task!r} has no split {split!r}; it has {sorted(family.sizes)}")
  return family.generate(split, family.sizes[split], seed)


def demo_submixtures() -> list[mixtures.Submixture]:
  """`demo_flan`: knowledge, reading and reasoning, each task capped at DEMO_CAP."""
  return [
      mixtures.Submixture("knowledge", 0.45, ("demo_flan_fact_qa", "demo_flan_fact_check",
                                             "demo_flan_fact_pick", "demo_flan_who"), DEMO_CAP),
      mixtures.Submixture("reading", 0.25, ("demo_flan_story_qa",), DEMO_CAP),
      mixtures.Submixture("reasoning", 0.3, ("demo_flan_arithmetic", "demo_flan_state_tracking"),
                          DEMO_CAP),
  ]


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Percentage of predictions equal to their target, ignoring case and outer whitespace."""
  hits = [str(t).strip().lower() == str(p).strip().lower() for t, p in zip(targets, predictions)]
  return {"exact_match": 100.0 * float(np.mean(hits)) if hits else 0.0}


def register_demo_tasks(seed: int = 0) -> None:
  """Registers every demo task and the `demo_flan` / `demo_heldout` mixtures (idempotent)."""
  if registration.registered_by_ul2flan(TRAIN_MIXTURE):
    return
  for family in TRAIN_FAMILIES:
    sources.register_formatted_task(
        family.task, functools.partial(_cached_raw, family.task, seed=seed), TRAIN_SPLITS,
        sources.Rendering(family.template_family, family.formats, seed, DEMO_FEW_SHOT))
  for family in HELDOUT_FAMILIES:
    sources.register_formatted_task(
        family.task, functools.partial(_cached_raw, family.task, seed=seed), HELDOUT_SPLITS,
        sources.Rendering(family.template_family, family.formats, seed, DEMO_FEW_SHOT),
        metric_fns=[exact_match])
  mixtures.register_capped_mixture(TRAIN_MIXTURE, demo_submixtures())
  mixtures.register_task_mixture(HELDOUT_MIXTURE, [f.task for f in HELDOUT_FAMILIES])


def heldout_eval_examples(split: str = "test", num_shots: int = 0, cot: bool = False,
                          seed: int = 0, budget_tokens: int | None = None
                          ) -> list[dict[str, Any]]:
  """Held-out examples for the evaluation harness.

  Returns dicts with `task`, `inputs` (the prompt), `targets` (the short gold answer),
  `options` (the answer options, listed in the prompt) and `chance` (accuracy in percent of a
  uniform guess among the options). With `num_shots` > 0 the prompt holds that many exemplars
  of the same task (for `test` drawn from `validation`, otherwise from the split itself, never
  the query), pruned to `budget_tokens` (default: the demo inputs length less EOS); a prompt
  where no exemplar fits stays zero-shot. With `cot` the prompt asks for reasoning and the
  exemplars show it.
  """
  if split not in HELDOUT_SPLITS:
    raise ValueError(f"held-out split must be one of {HELDOUT_SPLITS}, got {split!r}")
  if num_shots < 0:
    raise ValueError(f"num_shots must be >= 0, got {num_shots}")
  vocabulary = vocabularies.configured()
  fmt = formatting.Format(few_shot=num_shots > 0, options=True, cot=cot)
  few_shot = formatting.FewShotConfig(
      min_shots=max(num_shots, 1), max_shots=max(num_shots, 1),
      budget_tokens=budget_tokens or DEMO_FEW_SHOT.budget_tokens, fallback="zero_shot")
  out = []
  for family in HELDOUT_FAMILIES:
    formatter = formatting.Formatter(
        family.task, templates_lib.default_registry().family(family.template_family), [fmt],
        seed=seed, few_shot=few_shot, count_tokens=sources.token_counter(vocabulary))
    pool = _cached_raw(family.task, "validation", seed) if split == "test" else None
    for ex in formatter.format_all(_cached_raw(family.task, split, seed), split, pool):
      out.append({"task": family.task, "inputs": ex.inputs, "targets": ex.answer,
                  "options": list(ex.options),
                  "chance": 100.0 / len(ex.options) if ex.options else 0.0})
  return out
