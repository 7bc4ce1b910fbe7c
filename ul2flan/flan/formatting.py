"""The Flan formatting engine: raw examples -> `inputs` / `targets` text in each Flan format.

Formats are {zero-shot, few-shot} x {options listed (opt), not listed (noopt)} x {with chain of
thought (cot), without}, plus input inversion (inv: ask for the question given the answer).
Their names follow the Flan collection's `_template_type` (`zs_opt`, `fs_noopt`, ...) with
`_cot` / `_inv` appended when used.

Every random choice for an example (format, template, option style, CoT trigger, few-shot
delimiter, number and identity of exemplars) comes from a generator seeded by
(seed, task, split, example index). The result is therefore a pure function of the raw data and
the seed: it does not depend on which host formats which shard, or in which order.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any, Callable, Mapping, Sequence

import gin

from ul2flan.flan import templates as templates_lib

logger = logging.getLogger(__name__)

ANSWER_CUE = "So the answer is {answer}."
DEFAULT_FEW_SHOT_BUDGET = 1920  # tokens, as in the public Flan code
FALLBACKS = ("zero_shot", "drop")

RawExample = Mapping[str, Any]
TokenCounter = Callable[[str], int]


@dataclasses.dataclass(frozen=True)
class Format:
  """One Flan format."""
  few_shot: bool = False
  options: bool = True
  cot: bool = False
  inverted: bool = False

  def __post_init__(self):
    if self.cot and self.inverted:
      raise ValueError("a format cannot be both chain-of-thought and inverted: inverted "
                       "templates already put the rationale in the inputs")

  @property
  def name(self) -> str:
    name = f"{'fs' if self.few_shot else 'zs'}_{'opt' if self.options else 'noopt'}"
    return name + ("_cot" if self.cot else "") + ("_inv" if self.inverted else "")

  @classmethod
  def parse(cls, name: str) -> Format:
    parts = name.split("_")
    if (len(parts) < 2 or parts[0] not in ("zs", "fs") or parts[1] not in ("opt", "noopt")
        or not set(parts[2:]) <= {"cot", "inv"} or len(set(parts[2:])) != len(parts[2:])):
      raise ValueError(f"unknown format {name!r}: expected zs|fs, then opt|noopt, then optionally "
                       "cot or inv, joined by '_' (e.g. 'fs_opt_cot', 'zs_noopt_inv')")
    return cls(few_shot=parts[0] == "fs", options=parts[1] == "opt", cot="cot" in parts[2:],
               inverted="inv" in parts[2:])


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FewShotConfig:
  """How few-shot prompts are built.

  Attributes:
    min_shots, max_shots: the number of exemplars is drawn uniformly from this range, then
      pruned (last exemplar first) until the prompt fits `budget_tokens`.
    budget_tokens: the most tokens a few-shot `inputs` may have, counted with the task's
      vocabulary (EOS excluded).
    fallback: what happens to a query left with no exemplar (none fits, or the pool holds no
      other example): 'zero_shot' renders it zero-shot, 'drop' removes it.
  """
  min_shots: int = 1
  max_shots: int = 5
  budget_tokens: int = DEFAULT_FEW_SHOT_BUDGET
  fallback: str = "zero_shot"

  def __post_init__(self):
    if not 1 <= self.min_shots <= self.max_shots:
      raise ValueError(f"need 1 <= min_shots <= max_shots, got {self.min_shots}, {self.max_shots}")
    if self.budget_tokens < 1:
      raise ValueError(f"budget_tokens must be positive, got {self.budget_tokens}")
    if self.fallback not in FALLBACKS:
      raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")


@dataclasses.dataclass(frozen=True)
class FormattedExample:
  inputs: str
  targets: str
  task: str
  template_type: str  # the format actually rendered (a few-shot fallback reads zs_...)
  template_idx: int
  answer: str  # the raw short answer (also for CoT / inverted examples)
  options: tuple[str, ...]
  num_shots: int


def _text_fields(example: RawExample) -> dict[str, str]:
  """The example's non-empty text (or number) fields, by name; these can fill placeholders."""
  values = {}
  for key, value in example.items():
    if key == templates_lib.OPTIONS_FIELD or isinstance(value, bool):
      continue
    if isinstance(value, (int, float)):
      value = str(value)
    if isinstance(value, str) and value.strip():
      values[key] = value
  return values


def _options(example: RawExample, where: str) -> tuple[str, ...]:
  options = example.get(templates_lib.OPTIONS_FIELD) or ()
  if isinstance(options, str) or not all(isinstance(o, str) and o.strip() for o in options):
    raise ValueError(f"{where}: `options` must be a list of non-empty strings, got {options!r}")
  options = tuple(options)
  answer = example.get("answer")
  if options and answer is not None and str(answer) not in options:
    raise ValueError(f"{where}: the answer {answer!r} is not one of its options {list(options)}")
  return options


class _Fields:
  """A raw example's fillable text fields and its answer options, validated."""

  def __init__(self, example: RawExample, where: str):
    self.values = _text_fields(example)
    self.options = _options(example, where)

  def fits(self, template: templates_lib.Template, fmt: Format) -> bool:
    needed = set(template.fields)
    if fmt.cot and not template.inverted:
      needed |= {"rationale", "answer"}
    return needed <= self.values.keys()


class Formatter:
  """Renders one task's raw examples in a mixture of formats."""

  def __init__(self,
               task: str,
               family: templates_lib.Family,
               formats: Sequence[Format | str] | Mapping[Format | str, float],
               *,
               seed: int = 0,
               few_shot: FewShotConfig = FewShotConfig(),
               count_tokens: TokenCounter | None = None,
               delimiters: Sequence[templates_lib.Delimiter] | None = None,
               option_styles: Sequence[templates_lib.OptionStyle] | None = None,
               answer_cue: str = ANSWER_CUE):
    self.task = task
    self.family = family
    weighted = formats.items() if isinstance(formats, Mapping) else [(f, 1.0) for f in formats]
    self.formats = [Format.parse(f) if isinstance(f, str) else f for f, _ in weighted]
    self.weights = [float(w) for _, w in weighted]
    if not self.formats or min(self.weights) < 0 or sum(self.weights) <= 0:
      raise ValueError(f"task {task!r}: need at least one format with a positive weight")
    for fmt in self.formats:
      if not family.indexed(fmt.inverted):
        kind = "inverted" if fmt.inverted else "direct (not inverted)"
        raise ValueError(f"task {task!r}: format {fmt.name} needs {kind} templates, and family "
                         f"{family.name!r} has none")
    registry = None if delimiters and option_styles else templates_lib.default_registry()
    self.delimiters = tuple(delimiters or registry.delimiters)
    self.option_styles = tuple(option_styles or registry.option_styles)
    if not self.delimiters or not self.option_styles:
      raise ValueError("need at least one few-shot delimiter and one option style")
    if any(f.few_shot for f in self.formats) and count_tokens is None:
      raise ValueError(f"task {task!r}: few-shot formats need `count_tokens` (the task "
                       "vocabulary's token count) to prune prompts to the budget")
    self.seed = seed
    self.few_shot = few_shot
    self.count_tokens = count_tokens
    self.answer_cue = answer_cue
    self.fallbacks = 0  # few-shot queries left without exemplars so far

  # Rendering --------------------------------------------------------------------------------

  def _render(self, example: _Fields, template: templates_lib.Template, fmt: Format,
              style: templates_lib.OptionStyle, trigger: str) -> tuple[str, str]:
    fill = dict(example.values)
    listed = fmt.options and bool(example.options) and not template.inverted
    fill[templates_lib.OPTIONS_FIELD] = style.render(example.options) if listed else ""
    inputs = template.inputs.format_map(fill)
    if listed and templates_lib.OPTIONS_FIELD not in templates_lib.placeholder_fields(
        template.inputs):
      inputs += fill[templates_lib.OPTIONS_FIELD]
    if template.inverted or not fmt.cot:
      return inputs, template.targets.format_map(fill)
    if trigger:
      inputs = f"{inputs}\n{trigger}"
    answer = fill["answer"].strip().rstrip(".")
    return inputs, f"{fill['rationale'].strip()} {self.answer_cue.format(answer=answer)}"

  def format_one(self, examples: Sequence[RawExample], index: int, split: str,
                 exemplar_pool: Sequence[RawExample] | None = None) -> FormattedExample | None:
    """Formats `examples[index]`; exemplars come from `exemplar_pool` (default: `examples`).

    Returns None when a few-shot query is left without exemplars and the fallback is 'drop'.
    """
    where = f"task {self.task!r} split {split!r} example {index}"
    rng = random.Random(f"{self.seed}|{self.task}|{split}|{index}")
    query = _Fields(examples[index], where)
    fmt = rng.choices(self.formats, weights=self.weights)[0]
    candidates = [(i, t) for i, t in self.family.indexed(fmt.inverted) if query.fits(t, fmt)]
    if not candidates:
      raise ValueError(f"{where}: no template of family {self.family.name!r} fits format "
                       f"{fmt.name} with fields {sorted(query.values)}")
    template_idx, template = rng.choice(candidates)
    style = rng.choice(self.option_styles)
    trigger = rng.choice(self.family.cot_triggers)
    inputs, targets = self._render(query, template, fmt, style, trigger)
    num_shots = 0
    if fmt.few_shot:
      prompt = self._few_shot_prompt(rng, examples, index, split, exemplar_pool, inputs,
                                     template, fmt, style, trigger)
      if prompt is None:
        self.fallbacks += 1
        if self.few_shot.fallback == "drop":
          return None
      else:
        inputs, num_shots = prompt
    rendered_format = dataclasses.replace(fmt, few_shot=num_shots > 0)
    return FormattedExample(
        inputs=inputs, targets=targets, task=self.task, template_type=rendered_format.name,
        template_idx=template_idx, answer=str(examples[index].get("answer", "")),
        options=query.options, num_shots=num_shots)

  def _few_shot_prompt(self, rng: random.Random, examples: Sequence[RawExample], index: int,
                       split: str, exemplar_pool: Sequence[RawExample] | None, query_inputs: str,
                       template: templates_lib.Template, fmt: Format,
                       style: templates_lib.OptionStyle, trigger: str) -> tuple[str, int] | None:
    """`(prompt, number of exemplars)`, or None when no exemplar fits the budget."""
    delimiter = rng.choice(self.delimiters)
    num_shots = rng.randint(self.few_shot.min_shots, self.few_shot.max_shots)
    pool = examples if exemplar_pool is None else exemplar_pool
    # A few spare draws replace exemplars that are the query itself or lack a template field.
    draws = rng.sample(range(len(pool)), min(len(pool), num_shots + 4))
    blocks = []
    for j in draws:
      if len(blocks) == num_shots:
        break
      if exemplar_pool is None and j == index:
        continue
      exemplar = _Fields(pool[j], f"task {self.task!r} split {split!r} exemplar {j}")
      if not exemplar.fits(template, fmt):
        continue
      ex_inputs, ex_targets = self._render(exemplar, template, fmt, style, trigger)
      if ex_inputs == query_inputs:  # a duplicate of the query would reveal its answer
        continue
      blocks.append(delimiter.exemplar(ex_inputs, ex_targets))
    query = delimiter.query(query_inputs)
    while blocks:
      prompt = delimiter.separator.join(blocks + [query])
      if self.count_tokens(prompt) <= self.few_shot.budget_tokens:
        return prompt, len(blocks)
      blocks.pop()
    return None

  def format_all(self, examples: Sequence[RawExample], split: str,
                 exemplar_pool: Sequence[RawExample] | None = None) -> list[FormattedExample]:
    before = self.fallbacks
    formatted = [self.format_one(examples, i, split, exemplar_pool) for i in range(len(examples))]
    if self.fallbacks > before:
      logger.info("task %s split %s: %d few-shot queries had no exemplar within the budget "
                   "(fallback: %s)", self.task, split, self.fallbacks - before,
                   self.few_shot.fallback)
    return [f for f in formatted if f is not None]
