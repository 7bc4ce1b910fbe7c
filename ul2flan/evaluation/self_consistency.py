"""Self-consistency (Wang et al. 2022): sample many chains, majority-vote the extracted answers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from ul2flan.evaluation import scoring


@dataclasses.dataclass(frozen=True)
class VotedAnswer:
  answer: str  # the majority answer ("" if no chain stated one)
  answers: list[str]  # the extracted answer of each chain
  samples: list[str]  # the chains


def self_consistency(generator, prompts: Sequence[str], *, num_samples: int,
                     max_new_tokens: int,
                     extract: Callable[[str], str] = scoring.extract_cot_answer,
                     temperature: float = 0.7, top_k: int | None = 40,
                     top_p: float | None = None, seed: int = 0,
                     stop_sequences: Sequence[str] = ()) -> list[VotedAnswer]:
  """Samples `num_samples` chains per prompt and majority-votes their extracted answers.

  Defaults are the self-consistency paper's (temperature 0.7, top-k 40). `stop_sequences`, when
  given, go to the generator (each chain ends at the first one).
  """
  stops = {"stop_sequences": tuple(stop_sequences)} if stop_sequences else {}
  outputs = generator.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, num_samples=num_samples, seed=seed,
                               **stops)
  voted = []
  for samples in outputs:
    answers = [extract(s) for s in samples]
    voted.append(VotedAnswer(scoring.majority_vote(answers), answers, list(samples)))
  return voted
