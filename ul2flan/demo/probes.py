"""The demo's probes, as data: knowledge clozes and infilling items, and their scoring rules.

* Knowledge check: one cloze per (person, attribute), the true value ranked among every value of
  its attribute. `corpus` phrasings begin as the corpus states facts ("Olga lives in"), `heldout`
  ones as it never does ("The home of Olga is the city of"). It tells "does not know" from
  "cannot follow the instruction".
* Infilling (U-PaLM): a text with one span replaced by sentinel 0, laid out as the R denoiser's
  inputs (its mode token, then the text's tokens with the span cut out). `context` items state
  the missing span elsewhere in the same text (a story's protagonist named again, a number or a
  container restated), so it is recoverable without memory; `fact` items need a memorised world
  fact ("Olga lives in <extra_id_0>."). Each item also lists `candidates`: its gold span and up to
  7 other values of the same kind, for infilling by rank (each candidate written as the span,
  teacher-forced), which reads whether a model links the gap to its context where greedy
  writing fails.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from ul2flan.demo import world
from ul2flan.ul2 import infilling

INFILLING_CANDIDATES = 8  # the gold span and 7 other values of its kind (all, where it has fewer)
CONTEXT_NUMBERS = range(2, 31)  # the first number of a context item's word problem
KNOWLEDGE_ATTRIBUTES = ("city", "country", "job", "color", "pet")
CORPUS_CLOZES = {
    "city": "{name} lives in", "country": "{name} is from",
    "job": "{name} works as a", "color": "{name}'s favorite color is", "pet": "{name} has a pet",
}
HELDOUT_CLOZES = {
    "city": "The home of {name} is the city of", "country": "The country where {name} lives is",
    "job": "The profession of {name} is", "color": "The color that {name} prefers is",
    "pet": "The animal that lives with {name} is a",
}


mode_token = infilling.mode_token  # the UL2R preset's mode token of "R", "X" or "S"


def normalize_text(text: str) -> str:
  text = re.sub(r"\s+", " ", text.strip().lower())
  return text.strip(" .,!?;:\"'")


def attribute_pool(attribute: str) -> tuple[str, ...]:
  return {"city": tuple(sorted(world.CITIES)),
          "country": tuple(sorted(set(world.CITIES.values()))),
          "job": world.JOBS, "color": world.COLORS, "pet": world.PETS}[attribute]


def knowledge_chance() -> float:
  """The knowledge cloze's chance accuracy, averaged over the attributes (%)."""
  return sum(100.0 / len(attribute_pool(a)) for a in KNOWLEDGE_ATTRIBUTES) / len(
      KNOWLEDGE_ATTRIBUTES)


def knowledge_items(phrasing: str = "corpus") -> list[dict]:
  """One cloze per (person, attribute): prompt text, gold value and the attribute's pool."""
  clozes = {"corpus": CORPUS_CLOZES, "heldout": HELDOUT_CLOZES}[phrasing]
  items = []
  for p in world.make_world().people:
    for attribute in KNOWLEDGE_ATTRIBUTES:
      items.append({"name": p.name, "attribute": attribute, "phrasing": phrasing,
                    "prompt": clozes[attribute].format(name=p.name),
                    "gold": str(getattr(p, attribute)), "pool": attribute_pool(attribute)})
  return items


def infilling_fact_items(n: int, seed: int = 1234) -> list[dict]:
  """World facts stated as in the corpus, the value masked: needs the memorised fact."""
  rng = random.Random(seed)
  people = world.make_world().people
  out = []
  for _ in range(n):
    p = rng.choice(people)
    kind = rng.choice(["city", "job", "color"])
    prefix, gold, suffix = {
        "city": (f"{p.name} lives in ", p.city, f". {p.name} is a {p.job}."),
        "job": (f"{p.name} works as a ", p.job, f". {p.name} lives in {p.city}."),
        "color": (f"{p.name}'s favorite color is ", p.color, f". {p.name} owns a {p.pet}."),
    }[kind]
    out.append({"prefix": prefix, "suffix": suffix, "gold": gold, "kind": kind, "probe": "fact"})
  return _with_candidates(out, random.Random(seed + 1))


def _context_item(kind: str, rng: random.Random, people: Sequence[world.Person]) -> dict:
  if kind == "name":
    p, friend = rng.sample(list(people), 2)
    fruit, k = rng.choice(world.FRUITS), rng.randint(2, 9)
    return {"prefix": f"One morning, {p.name} the {p.job} walked through {p.city} with a "
                      f"{p.pet}. ", "gold": p.name,
            "suffix": f" met {friend.name}, who works as a {friend.job} in {friend.city}. "
                      f"They shared {k} {fruit} and talked about the color {p.color}."}
  if kind == "number":
    p, fruit = rng.choice(people), rng.choice(world.FRUITS)
    a, b = rng.choice(CONTEXT_NUMBERS), rng.randint(2, 20)
    c = rng.randint(1, a + b - 1)
    return {"prefix": f"{p.name} the {p.job} buys {a} {fruit}. Then {p.name} buys {b} more "
                      f"{fruit}. Later {p.name} gives {c} {fruit} away. How many {fruit} does "
                      f"{p.name} have? {p.name} starts with ", "gold": str(a),
            "suffix": f" {fruit}. After buying {b} more, {p.name} has {a} + {b} = {a + b}."}
  boxes = rng.sample(world.CONTAINERS, 3)
  obj = rng.choice(("key", "coin", "ring", "ball", "book", "letter"))
  start, dest = rng.sample(boxes, 2)
  who = rng.choice(people).name
  return {"prefix": " ".join(f"There is a {b}." for b in boxes) + f" The {obj} is in the "
                    f"{start}. {who} moves the {obj} from the {start} to the {dest}. At first "
                    f"the {obj} is in the ", "gold": start,
          "suffix": f". {who} moves it to the {dest}. So now the {obj} is in the {dest}."}


def infilling_context_items(n: int, seed: int = 4321) -> list[dict]:
  """Texts whose masked span is stated elsewhere in the same text (kinds `name`, `number`,
  `container` in turn); values are drawn per item, so only the context can supply them."""
  rng = random.Random(seed)
  people = world.make_world().people
  kinds = ("name", "number", "container")
  items = [{**_context_item(kinds[i % 3], rng, people), "kind": kinds[i % 3], "probe": "context"}
           for i in range(n)]
  return _with_candidates(items, random.Random(seed + 1))


def infilling_value_pool(kind: str) -> tuple[str, ...]:
  """Every value an infilling item of this kind can have."""
  if kind == "name":
    return tuple(p.name for p in world.make_world().people)
  if kind == "number":
    return tuple(str(k) for k in CONTEXT_NUMBERS)
  if kind == "container":
    return world.CONTAINERS
  return attribute_pool(kind)


def _with_candidates(items: list[dict], rng: random.Random) -> list[dict]:
  """Adds each item's `candidates`: its gold first, then other values of its kind (a separate
  random stream, so that the items themselves do not depend on it)."""
  for item in items:
    others = [v for v in infilling_value_pool(item["kind"]) if v != item["gold"]]
    item["candidates"] = [item["gold"]] + rng.sample(others, min(INFILLING_CANDIDATES - 1,
                                                                 len(others)))
  return items


def infilling_prompt_ids(vocabulary, item: dict) -> list[int]:
  """The item's R-denoiser inputs (`ul2flan.ul2.infilling.prompt_ids`)."""
  return infilling.prompt_ids(vocabulary, item["prefix"], item["gold"], item["suffix"])


def candidate_span_ids(vocabulary, item: dict) -> list[list[int]]:
  """The ids each of the item's `candidates` takes in the gap of its prompt."""
  return infilling.candidate_span_ids(vocabulary, item["prefix"], item["gold"], item["suffix"],
                                      item["candidates"])


infilled_span = infilling.written_span  # the span a model wrote after sentinel 0
