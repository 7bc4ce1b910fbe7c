"""Answer extraction and metrics of the Flan-paper evaluation protocol.

- CoT answers: the text after the last "answer is" (or a similar cue), with trailing punctuation
  stripped; multiple-choice answers are kept in the "(B)" form.
- Numbers (MGSM): thousands separators and trailing ".0" removed, so "1,234.0" == "1234".
- Span answers (TyDiQA): SQuAD exact match after SQuAD-style normalisation.
- Self-consistency: majority vote over the extracted answers of several sampled chains.
- Normalized score: 100 * (score - chance) / (100 - chance); the Flan normalized average is the
  mean of six such scores.
"""

from __future__ import annotations

import collections
import decimal
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

# English cues that introduce a final answer. Matched case-insensitively; the last one wins.
DEFAULT_ANSWER_CUES = ("answer is", "answer would be", "answer should be", "answer:")

# Punctuation that ends a sentence or wraps an answer, stripped from both ends of an answer span.
# Brackets are kept: they are part of BBH answers such as "(B)" and Dyck words like "] } ]".
_EDGE_PUNCTUATION = ".,;:!?。，、；：！？।\"'“”‘’`*"

_CHOICE_RE = re.compile(r"\(([A-Z])\)")
_BARE_LETTER_RE = re.compile(r"^\(?([A-Z])(?:\)|\.|:|,|\s|$)")
# A number: digits with optional thousands separators (groups of exactly 3) and decimals.
_NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")


def strip_edge_punctuation(text: str) -> str:
  return text.strip().strip(_EDGE_PUNCTUATION).strip()


def find_last_cue(text: str, cues: Sequence[str] = DEFAULT_ANSWER_CUES) -> int | None:
  """Index just past the last occurrence of any cue (case-insensitive), or None."""
  lowered = text.lower()
  best = None
  for cue in cues:
    position = lowered.rfind(cue.lower())
    if position != -1:
      end = position + len(cue)
      best = end if best is None else max(best, end)
  return best


def extract_cot_answer(text: str, cues: Sequence[str] = DEFAULT_ANSWER_CUES) -> str:
  """The answer a chain of thought states: after the last cue, first line, punctuation stripped.

  With no cue the whole (stripped) text is the answer, which is what direct answers look like.
  """
  start = find_last_cue(text, cues)
  span = text if start is None else text[start:]
  span = span.strip()
  if start is not None:
    span = span.split("\n", 1)[0]
  return strip_edge_punctuation(span)


def extract_choice(text: str, valid: Sequence[str] = (), prefer: str = "first") -> str | None:
  """A multiple-choice label in "(B)" form found in `text`, or None.

  Looks for "(X)" labels (the first or last one, per `prefer`), then for a bare leading letter
  such as "B" or "B. Paris". `valid` (e.g. ("(A)", "(B)")) restricts the accepted labels.
  """
  allowed = set(valid)
  found = [f"({letter})" for letter in _CHOICE_RE.findall(text)]
  found = [label for label in found if not allowed or label in allowed]
  if found:
    return found[0] if prefer == "first" else found[-1]
  match = _BARE_LETTER_RE.match(text.strip())
  if match:
    label = f"({match.group(1)})"
    if not allowed or label in allowed:
      return label
  return None


def normalize_number(text: str) -> str | None:
  """Canonical string of the number `text` spells ("1,234.50" -> "1234.5", "18.0" -> "18")."""
  cleaned = text.strip().replace(",", "")
  try:
    value = decimal.Decimal(cleaned)
  except decimal.InvalidOperation:
    return None
  if not value.is_finite():
    return None
  if value == value.to_integral_value():
    return str(int(value))
  return format(value.normalize(), "f")


def find_numbers(text: str) -> list[str]:
  """All numbers in `text`, canonicalised, in order of appearance."""
  numbers = []
  for match in _NUMBER_RE.finditer(text):
    canonical = normalize_number(match.group(0))
    if canonical is not None:
      numbers.append(canonical)
  return numbers


def extract_numeric_answer(text: str, cues: Sequence[str] = DEFAULT_ANSWER_CUES) -> str:
  """The final numeric answer of a worked solution, canonicalised ("" when there is none).

  The first number after the last cue ("The answer is 1,234." -> "1234"); with no cue, or no
  number after it, the last number in the text (the usual end of a GSM-style solution).
  """
  start = find_last_cue(text, cues)
  if start is not None:
    after_cue = find_numbers(text[start:])
    if after_cue:
      return after_cue[0]
  numbers = find_numbers(text)
  return numbers[-1] if numbers else ""


def numbers_match(prediction: str, gold: str) -> bool:
  predicted = normalize_number(prediction) if prediction else None
  expected = normalize_number(gold)
  return predicted is not None and predicted == expected


def normalize_squad_answer(text: str) -> str:
  """SQuAD v1.1 normalisation: lower case, no punctuation, no English articles, single spaces.

  Punctuation is ASCII punctuation plus every Unicode punctuation character, so that answers in
  other scripts (e.g. "।", "、") compare the same way English ones do.
  """
  text = text.lower()
  text = "".join(
      " " if ch in string.punctuation or unicodedata.category(ch).startswith("P") else ch
      for ch in text)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def squad_exact_match(prediction: str, golds: Iterable[str]) -> bool:
  normalized = normalize_squad_answer(prediction)
  return any(normalized == normalize_squad_answer(gold) for gold in golds)


def normalize_whitespace(text: str) -> str:
  return " ".join(text.split())


def majority_vote(answers: Sequence[str]) -> str:
  """The most frequent non-empty answer; ties go to the one seen first; "" if all are empty."""
  counts = collections.Counter(answer for answer in answers if answer)
  if not counts:
    return ""
  best = max(counts.values())
  return next(answer for answer in answers if answer and counts[answer] == best)


def normalized_score(score: float, chance: float) -> float:
  """100 * (score - chance) / (100 - chance): 0 at chance level, 100 for a perfect score."""
  if not 0.0 <= chance < 100.0:
    raise ValueError(f"chance must be in [0, 100), got {chance}")
  return 100.0 * (score - chance) / (100.0 - chance)


def mean(values: Iterable[float]) -> float:
  values = list(values)
  if not values:
    raise ValueError("mean of no values")
  return sum(values) / len(values)


# The six scores of the Flan paper's normalized average, by harness task name.
FLAN_NORMALIZED_AVERAGE_TASKS = (
    "mmlu_direct", "mmlu_cot", "bbh_direct", "bbh_cot", "tydiqa_direct", "mgsm_cot")


def normalized_average(normalized_scores: Mapping[str, float],
                       components: Sequence[str] = FLAN_NORMALIZED_AVERAGE_TASKS) -> float:
  """Mean of the already-normalized scores of `components`; all of them must be present."""
  missing = [name for name in components if name not in normalized_scores]
  if missing:
    raise ValueError(f"normalized average needs scores for {list(components)}; missing {missing}")
  return mean(normalized_scores[name] for name in components)
