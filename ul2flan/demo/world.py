"""A small, deterministic "world" that every embedded demo dataset is generated from.

The world is a fixed set of people with attributes (home city, job, favourite colour, pet, age) plus
generators of arithmetic and state-tracking episodes. The pre-training corpus (`corpus_documents`)
states the world's facts in prose; the instruction tasks (Flan stage) and the held-out evaluation
ask questions about the same facts. Everything is a pure function of a seed, so every machine
generates byte-identical data and nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from typing import Iterator, Sequence

FIRST_NAMES = (
    "Alice", "Bruno", "Clara", "Daniel", "Elena", "Felix", "Greta", "Hugo", "Irene", "Jonas",
    "Karla", "Leo", "Maria", "Nico", "Olga", "Pablo", "Quinn", "Rosa", "Simon", "Tara",
    "Umar", "Vera", "Walter", "Xenia", "Yusuf", "Zoe", "Anton", "Bella", "Carlos", "Dora",
    "Emil", "Fiona", "Gustav", "Hanna", "Igor", "Julia", "Kevin", "Lena", "Marco", "Nina",
)
CITIES = {  # city -> country
    "Paris": "France", "Lyon": "France", "Berlin": "Germany", "Munich": "Germany",
    "Madrid": "Spain", "Seville": "Spain", "Rome": "Italy", "Milan": "Italy",
    "Lisbon": "Portugal", "Porto": "Portugal", "Vienna": "Austria", "Oslo": "Norway",
    "Cairo": "Egypt", "Lima": "Peru", "Tokyo": "Japan", "Osaka": "Japan",
}
JOBS = ("baker", "doctor", "teacher", "farmer", "pilot", "painter", "engineer", "nurse",
        "sailor", "writer", "chef", "judge")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")
PETS = ("cat", "dog", "parrot", "rabbit", "turtle", "horse", "goat", "fish")
FRUITS = ("apples", "pears", "plums", "oranges", "lemons", "peaches", "cherries", "figs")
CONTAINERS = ("box", "basket", "drawer", "bag", "jar", "cup")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve")


@dataclasses.dataclass(frozen=True)
class Person:
  name: str
  city: str
  job: str
  color: str
  pet: str
  age: int

  @property
  def country(self) -> str:
    return CITIES[self.city]


@dataclasses.dataclass(frozen=True)
class World:
  people: tuple[Person, ...]

  def person(self, name: str) -> Person:
    for p in self.people:
      if p.name == name:
        return p
    raise KeyError(f"no person named {name!r} in the world")


@functools.lru_cache(maxsize=None)
def make_world(seed: int = 0) -> World:
  rng = random.Random(seed)
  cities = sorted(CITIES)
  people = tuple(
      Person(name=name, city=rng.choice(cities), job=rng.choice(JOBS),
             color=rng.choice(COLORS), pet=rng.choice(PETS), age=rng.randint(18, 80))
      for name in FIRST_NAMES)
  return World(people=people)


# --------------------------------------------------------------------------------------------
# Fact sentences (several paraphrases each, so the corpus is not one template).

def fact_sentences(p: Person, rng: random.Random) -> list[str]:
  he = "They"
  options = [
      [f"{p.name} lives in {p.city}.", f"{p.name}'s home is in {p.city}.",
       f"{p.name} has a house in {p.city}, a city in {p.country}.",
       f"{p.name} resides in {p.city}."],
      [f"{p.name} works as a {p.job}.", f"{p.name} is a {p.job}.",
       f"By trade, {p.name} is a {p.job}.", f"{p.name} earns a living as a {p.job}."],
      [f"{p.name}'s favorite color is {p.color}.", f"{p.name} likes the color {p.color} best.",
       f"The favorite color of {p.name} is {p.color}.", f"{p.name} loves the color {p.color}."],
      [f"{p.name} has a pet {p.pet}.", f"{p.name} owns a {p.pet}.",
       f"{he} say {p.name} takes good care of a {p.pet}.", f"At home, {p.name} keeps a {p.pet}."],
      [f"{p.name} is {p.age} years old.", f"{p.name}'s age is {p.age}.",
       f"{p.name} turned {p.age} this year."],
      [f"{p.name} is from {p.country}.", f"{p.name}'s home country is {p.country}.",
       f"{p.name} lives in {p.country}, in the city of {p.city}."],
  ]
  return [rng.choice(group) for group in options]


def city_sentence(city: str, rng: random.Random) -> str:
  country = CITIES[city]
  return rng.choice([f"{city} is a city in {country}.", f"{city} is in {country}.",
                     f"The city of {city} lies in {country}."])


# --------------------------------------------------------------------------------------------
# Episodes with a computed answer: arithmetic word problems and state tracking.

@dataclasses.dataclass(frozen=True)
class Episode:
  """A question with a step-by-step rationale and a short answer."""
  family: str
  context: str
  question: str
  rationale: str
  answer: str
  options: tuple[str, ...] = ()


def arithmetic_episode(world: World, rng: random.Random) -> Episode:
  p = rng.choice(world.people)
  fruit = rng.choice(FRUITS)
  a, b = rng.randint(2, 30), rng.randint(2, 20)
  if rng.random() < 0.5:
    c = rng.randint(1, a + b - 1)
    context = (f"{p.name} the {p.job} buys {a} {fruit}. Then {p.name} buys {b} more {fruit}. "
               f"Later {p.name} gives {c} {fruit} away.")
    rationale = (f"{p.name} starts with {a} {fruit}. After buying {b} more, {p.name} has "
                 f"{a} + {b} = {a + b}. After giving {c} away, {p.name} has {a + b} - {c} = {a + b - c}.")
    answer = a + b - c
  else:
    context = f"{p.name} has {a} baskets. Each basket holds {b} {fruit}."
    rationale = f"There are {a} baskets with {b} {fruit} each, so {a} * {b} = {a * b}."
    answer = a * b
  return Episode("arithmetic", context, f"How many {fruit} does {p.name} have?",
                 rationale, str(answer))


def state_tracking_episode(world: World, rng: random.Random, num_moves: int | None = None) -> Episode:
  people = rng.sample(world.people, 2)
  objects = rng.sample(("key", "coin", "ring", "ball", "book", "letter"), 1)
  boxes = rng.sample(CONTAINERS, 3)
  obj = objects[0]
  where = rng.choice(boxes)
  lines = [f"There is a {b}." for b in boxes] + [f"The {obj} is in the {where}."]
  steps = [f"At first the {obj} is in the {where}."]
  for _ in range(num_moves if num_moves is not None else rng.randint(1, 3)):
    who = rng.choice(people).name
    dest = rng.choice([b for b in boxes if b != where])
    lines.append(f"{who} moves the {obj} from the {where} to the {dest}.")
    steps.append(f"{who} moves it to the {dest}.")
    where = dest
  steps.append(f"So now the {obj} is in the {where}.")
  return Episode("state_tracking", " ".join(lines), f"Where is the {obj}?", " ".join(steps), where,
                 options=tuple(boxes))


def story_facts(world: World, rng: random.Random) -> tuple[str, dict]:
  """A short story about a person and one other person, and what it states.

  The facts: `kind` ("walk", "letter" or "market"), `person`, `other` (Person), `fruit`, `count`.
  """
  p = rng.choice(world.people)
  friend = rng.choice([q for q in world.people if q is not p])
  fruit = rng.choice(FRUITS)
  n = rng.randint(2, 9)
  kind, text = rng.choice([
      ("walk", f"One morning, {p.name} the {p.job} walked through {p.city} with a {p.pet}. "
               f"{p.name} met {friend.name}, who works as a {friend.job} in {friend.city}. "
               f"They shared {n} {fruit} and talked about the color {p.color}."),
      ("letter", f"{p.name} wrote a letter to {friend.name}. In it, {p.name} said that life in "
                 f"{p.city} was quiet and that the {p.pet} was well. {friend.name} answered from "
                 f"{friend.city}."),
      ("market", f"At the market in {p.city}, {p.name} bought {n} {fruit}. The seller, a "
                 f"{friend.job} named {friend.name}, wrapped them in {p.color} paper."),
  ])
  return text, {"kind": kind, "person": p, "other": friend, "fruit": fruit, "count": n}


def story_with_people(world: World, rng: random.Random) -> tuple[str, Person, Person]:
  """A short story about a person and one other person: (text, protagonist, other person)."""
  text, facts = story_facts(world, rng)
  return text, facts["person"], facts["other"]


def story(world: World, rng: random.Random) -> str:
  return story_with_people(world, rng)[0]


# --------------------------------------------------------------------------------------------
# The corpus.

def _document(world: World, rng: random.Random) -> str:
  kind = rng.random()
  if kind < 0.40:  # biography
    p = rng.choice(world.people)
    sents = fact_sentences(p, rng)
    rng.shuffle(sents)
    sents.append(city_sentence(p.city, rng))
    return " ".join(sents)
  if kind < 0.60:
    return story(world, rng)
  if kind < 0.80:
    ep = arithmetic_episode(world, rng)
    return f"{ep.context} {ep.question} {ep.rationale} The answer is {ep.answer}."
  ep = state_tracking_episode(world, rng)
  return f"{ep.context} {ep.rationale}"


def corpus_documents(split: str = "train", num_documents: int | None = None,
                     seed: int = 0) -> list[str]:
  """Documents of the demo pre-training corpus. Splits use disjoint random streams."""
  sizes = {"train": 20000, "validation": 500}
  if split not in sizes:
    raise ValueError(f"unknown corpus split {split!r}; expected one of {sorted(sizes)}")
  world = make_world(seed)
  rng = random.Random(f"corpus/{split}/{seed}")
  n = sizes[split] if num_documents is None else num_documents
  return [_document(world, rng) for _ in range(n)]


def iter_text(splits: Sequence[str] = ("train",)) -> Iterator[str]:
  for split in splits:
    yield from corpus_documents(split)
