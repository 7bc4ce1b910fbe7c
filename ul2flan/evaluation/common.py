"""Shared pieces of the evaluation suite: examples, tasks, prompt assembly and data errors.

Every benchmark loader turns its public files into `EvalExample`s (a prompt split into header,
few-shot exemplars and query, plus the gold answers) and wraps them in an `EvalTask` that knows how
to extract and score an answer. The harness only sees these two types.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence

# Blocks of a few-shot prompt (header, each exemplar, the query) are separated by one blank line.
BLOCK_SEPARATOR = "\n\n"

TokenCounter = Callable[[str], int]
PromptWrapper = Callable[[str], str]  # prompt text -> what the model reads (e.g. a chat turn)


class EvalDataError(ValueError):
  """A benchmark file or folder is missing or malformed; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class EvalExample:
  """One test question with everything needed to prompt for it and score the answer.

  Attributes:
    subtask: the unit the benchmark averages over (MMLU subject, BBH task, language).
    example_id: stable id, unique within the subtask.
    header: instruction / task description placed before the exemplars ("" for none).
    exemplars: formatted few-shot blocks, in prompt order. Under a token budget the harness drops
      them from the front, so the ones closest to the query survive.
    query: the formatted test question, ending where the model's answer starts.
    golds: acceptable answers in their canonical form (e.g. "(B)", "18", a text span).
    choices: for multiple choice, the option labels in "(A)" form; empty otherwise.
  """
  subtask: str
  example_id: str
  header: str
  exemplars: tuple[str, ...]
  query: str
  golds: tuple[str, ...]
  choices: tuple[str, ...] = ()

  def prompt(self, num_exemplars: int | None = None) -> str:
    """The prompt with the last `num_exemplars` exemplars (all of them by default)."""
    if num_exemplars is None:
      num_exemplars = len(self.exemplars)
    kept = self.exemplars[len(self.exemplars) - num_exemplars:] if num_exemplars else ()
    return assemble_prompt(self.header, kept, self.query)


def assemble_prompt(header: str, exemplars: Sequence[str], query: str) -> str:
  blocks = ([header] if header else []) + list(exemplars) + [query]
  return BLOCK_SEPARATOR.join(blocks)


@dataclasses.dataclass(frozen=True)
class FittedPrompt:
  text: str
  num_exemplars: int
  over_budget: bool  # True when even the zero-shot prompt exceeds the budget (sent anyway, uncut)


def fit_prompt(example: EvalExample, count_tokens: TokenCounter | None,
               max_prompt_tokens: int | None, wrap: PromptWrapper | None = None) -> FittedPrompt:
  """The prompt with as many exemplars as fit in `max_prompt_tokens`, dropping from the front.

  `wrap` (e.g. a chat template's user turn) is applied to the prompt, and the wrapped text is
  what is measured and returned. Text is never cut mid-way: a prompt that does not fit even
  without exemplars is returned whole and flagged, so the caller can report it instead of
  silently scoring a mangled question.
  """
  def text_of(num: int) -> str:
    return wrap(example.prompt(num)) if wrap else example.prompt(num)

  total = len(example.exemplars)
  if max_prompt_tokens is None:
    return FittedPrompt(text_of(total), total, over_budget=False)
  if count_tokens is None:
    raise ValueError("max_prompt_tokens needs a count_tokens callable to measure prompts.")
  for num in range(total, -1, -1):
    text = text_of(num)
    if count_tokens(text) <= max_prompt_tokens:
      return FittedPrompt(text, num, over_budget=False)
  return FittedPrompt(text_of(0), 0, over_budget=True)


AnswerExtractor = Callable[[str, EvalExample], str]
AnswerChecker = Callable[[str, EvalExample], bool]


@dataclasses.dataclass(frozen=True)
class EvalTask:
  """A benchmark in one mode (e.g. BBH with CoT): its examples and how to score them.

  Attributes:
    name: "<benchmark>_<mode>", e.g. "bbh_cot"; also the predictions file name.
    benchmark: "mmlu", "bbh", "tydiqa" or "mgsm".
    mode: "direct" or "cot". Self-consistency applies to "cot" tasks only.
    examples: all test examples, grouped by subtask in file order.
    extract_answer: model continuation (already cut at a stop sequence) -> canonical answer.
    is_correct: canonical answer -> whether it matches the example's golds.
    subtask_chance: score (0-100) of random guessing per subtask, for the normalized score.
    max_new_tokens: default generation length.
    stop_sequences: generation ends at the first of these (lm-eval-harness's `until`): the
      generator stops there when it takes stops, and the continuation is cut there either way.
    excluded_from_mean: subtasks scored and reported but left out of the benchmark mean.
    missing: subtasks the protocol wants whose files were not found (reported, not fatal).
  """
  name: str
  benchmark: str
  mode: str
  examples: tuple[EvalExample, ...]
  extract_answer: AnswerExtractor
  is_correct: AnswerChecker
  subtask_chance: Mapping[str, float]
  max_new_tokens: int
  stop_sequences: tuple[str, ...]
  excluded_from_mean: frozenset[str] = frozenset()
  missing: tuple[str, ...] = ()

  def subtasks(self) -> list[str]:
    return list(dict.fromkeys(example.subtask for example in self.examples))


def resolve_benchmark_dir(data_dir: str, benchmark: str, candidates: Sequence[str],
                          looks_right: Callable[[str], bool], expected: str) -> str:
  """The first of `data_dir/<candidate>` that `looks_right`, or a clear error."""
  if not os.path.isdir(data_dir):
    raise EvalDataError(f"Evaluation data dir {data_dir!r} does not exist; pass --data_dir "
                        "pointing at the folder that holds mmlu/, bbh/, tydiqa_goldp/ and mgsm/.")
  tried = []
  for candidate in candidates:
    path = os.path.normpath(os.path.join(data_dir, candidate))
    tried.append(path)
    if os.path.isdir(path) and looks_right(path):
      return path
  raise EvalDataError(f"No {benchmark} data under {data_dir!r}: looked in {tried}; expected "
                      f"{expected}.")


def read_json(path: str, what: str):
  """Parses a JSON file; unreadable or malformed files raise EvalDataError naming `what`."""
  try:
    return json.loads(read_text(path))
  except (OSError, json.JSONDecodeError) as e:
    raise EvalDataError(f"Cannot read {what} {path}: {e}") from e


def read_text(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise EvalDataError(f"{path} is not UTF-8 text ({e}).") from e
