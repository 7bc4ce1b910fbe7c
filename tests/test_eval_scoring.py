"""Answer extraction and metric arithmetic of the evaluation suite, on hand-written cases."""

import pytest

from ul2flan import stop_sequences
from ul2flan.evaluation import scoring


@pytest.mark.parametrize("text, expected", [
    ("Today is 12/24. 10 days ago was 12/14. So the answer is (B).", "(B)"),
    ("So the answer is (B).", "(B)"),
    ("... the answer is False.", "False"),
    ("First, the answer is 3. Wait, recount: the answer is 4.", "4"),  # the last cue wins
    ("So the answer is ] } ].", "] } ]"),  # brackets are part of Dyck answers
    ("So the answer is costume counterpart oven.\nQ: next", "costume counterpart oven"),
    ("The Answer Is: Yes!", "Yes"),
    ("  valid. ", "valid"),  # no cue: the whole stripped text
])
def test_extract_cot_answer(text, expected):
  assert scoring.extract_cot_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("The answer is 1,234.", "1234"),
    ("She earns 9 * 2 = $18. The answer is 18.", "18"),
    ("So 5 + 6 = 11 balls. The answer is 11.0.", "11"),
    ("Total is 1,000,000 and half is 500,000", "500000"),  # no cue: last number
    ("The answer is -35.", "-35"),
    ("The answer is 2.50 dollars", "2.5"),
    ("No number here.", ""),
    ("答えは11です。", "11"),
])
def test_extract_numeric_answer(text, expected):
  assert scoring.extract_numeric_answer(text, cues=("answer is", "答えは")) == expected


def test_numeric_answer_uses_first_number_after_the_cue_not_the_last():
  assert scoring.extract_numeric_answer("The answer is 7, since 3 + 4 = 7 and not 8") == "7"


@pytest.mark.parametrize("a, b, same", [
    ("2,125", "2125", True), ("18.0", "18", True), ("18", "18.5", False), ("", "0", False),
    ("114,200", "114200", True), ("0.50", ".5", True)])
def test_numbers_match(a, b, same):
  assert scoring.numbers_match(a, b) is same


@pytest.mark.parametrize("text, expected", [
    ("(B)", "(B)"), (" (C) 12/14/1937", "(C)"), ("B", "(B)"), ("B. Paris", "(B)"),
    ("I think (A) or maybe (D)", "(A)"), ("All of them", None), ("(Z)", None)])
def test_extract_choice(text, expected):
  assert scoring.extract_choice(text, valid=("(A)", "(B)", "(C)", "(D)")) == expected


def test_extract_choice_last():
  assert scoring.extract_choice("(A) is wrong, (C) fits", prefer="last") == "(C)"


@pytest.mark.parametrize("prediction, golds, match", [
    ("The Eiffel Tower!", ["eiffel tower"], True),  # articles, case, punctuation
    ("an apple", ["Apple."], True),
    ("1832—1833", ["1832—1833"], True),
    ("1832-1833", ["1832 1833"], True),  # hyphen is punctuation -> space
    ("বাংলা।", ["বাংলা"], True),  # Unicode punctuation (danda) removed
    ("Paris France", ["Paris"], False),
    ("x", ["y", "x"], True),  # any gold
])
def test_squad_exact_match(prediction, golds, match):
  assert scoring.squad_exact_match(prediction, golds) is match


def test_majority_vote_counts_and_breaks_ties_by_first_seen():
  assert scoring.majority_vote(["(A)", "(B)", "(B)", "", "(C)"]) == "(B)"
  assert scoring.majority_vote(["7", "9", "9", "7"]) == "7"  # tie: 7 was seen first
  assert scoring.majority_vote(["", "", "5"]) == "5"  # empty extractions do not vote
  assert scoring.majority_vote(["", ""]) == ""


def test_truncate_at_the_earliest_stop():
  text = " (B)\n\nQ: next question\nA:"
  assert stop_sequences.truncate(text, ("\nQ:", "\n")) == " (B)"
  assert stop_sequences.truncate("no stop", ("\n",)) == "no stop"


def test_normalized_score_hand_values():
  assert scoring.normalized_score(25.0, 25.0) == 0.0
  assert scoring.normalized_score(100.0, 25.0) == 100.0
  assert scoring.normalized_score(40.0, 25.0) == pytest.approx(20.0)  # 15 / 75
  assert scoring.normalized_score(10.0, 25.0) == pytest.approx(-20.0)
  assert scoring.normalized_score(37.0, 0.0) == 37.0
  with pytest.raises(ValueError):
    scoring.normalized_score(50.0, 100.0)


def test_normalized_average_of_six_hand_computed():
  # MMLU direct 55 and CoT 62.5 at chance 25 -> 40 and 50; BBH values already normalized.
  normalized = {
      "mmlu_direct": scoring.normalized_score(55.0, 25.0),
      "mmlu_cot": scoring.normalized_score(62.5, 25.0),
      "bbh_direct": 30.0, "bbh_cot": 36.0, "tydiqa_direct": 20.0, "mgsm_cot": 16.0}
  assert scoring.normalized_average(normalized) == pytest.approx((40 + 50 + 30 + 36 + 20 + 16) / 6)
  del normalized["mgsm_cot"]
  with pytest.raises(ValueError, match="mgsm_cot"):
    scoring.normalized_average(normalized)
