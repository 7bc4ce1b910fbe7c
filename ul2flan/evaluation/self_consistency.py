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


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How a generator samples: `Generator.generate`'s keywords, with the self-consistency paper's
  defaults (temperature 0.7, top-k 40). `stop_sequences` end each chain at the first one."""
  num_samples: int
  max_new_tokens: int
  temperature: float = 0.7
  top_k: int | None = 40
  top_p: float | None = None
  seed: int = 0
  stop_sequences: tuple[str, ...] = ()

  def generate_kwargs(self) -> dict:
    """The keywords of `generate` (stops only when there are some: older generators lack them)."""
    kwargs = dataclasses.asdict(self)
    if not self.stop_sequences:
      del kwargs["stop_sequences"]
    return kwargs


def self_consistency(generator, prompts: Sequence[str], sampling: Sampling,
                     extract: Callable[[str], str] = scoring.extract_cot_answer
                     ) -> list[VotedAnswer]:
  """Samples `sampling.num_samples` chains per prompt and majority-votes their extracted
  answers."""
  outputs = generator.generate(prompts, **sampling.generate_kwargs())
  voted = []
  for samples in outputs:
    answers = [extract(s) for s in samples]
    voted.append(VotedAnswer(scoring.majority_vote(answers), answers, list(samples)))
  return voted
