"""The evaluation harness: prompts a `Generator` in batches, scores, and writes predictions.

The model is reached only through the `Generator` protocol (text in, text out), so the harness
runs the same against the real KV-cache decoder and the fakes the tests use. A generator whose
`generate` takes `stop_sequences` is given the task's stops, so it can stop early; every
continuation is cut at them here too, as lm-eval-harness's `until` does. Prompts go to the
generator sorted by length (a batch of similar lengths pads least), in as few calls as
`batch_size` allows, and through the model's chat template when its vocabulary has one.

Per task it writes `<output_dir>/<task>.predictions.jsonl` (prompt, prediction, extracted answer,
gold, correct) and returns a result dict; `run_suite` adds the Flan normalized average and writes
`<output_dir>/results.json`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ul2flan import paths
from ul2flan import stop_sequences as stop_sequences_lib
from ul2flan.evaluation import common
from ul2flan.evaluation import scoring

logger = logging.getLogger(__name__)


@runtime_checkable
class Generator(Protocol):
  """Text continuation by a language model."""

  def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, num_samples: int = 1,
               seed: int = 0) -> list[list[str]]:
    """For each prompt, `num_samples` continuations (text only, prompt not repeated).

    temperature 0 means greedy decoding. A generator may also take `stop_sequences` (a tuple of
    strings): it may then end a continuation at the first one.
    """


@dataclasses.dataclass(frozen=True)
class HarnessConfig:
  """How to run tasks.

  Attributes:
    batch_size: prompts per `generate` call; None: all of a task's prompts in one call (what a
      generator that batches by length itself, as ul2flan's does, pads least with).
    max_examples_per_subtask: keep only the first N examples of each subtask (quick runs).
    max_prompt_tokens: token budget of a prompt; exemplars are dropped from the front to fit.
    count_tokens: measures a prompt in tokens; required with `max_prompt_tokens`.
    self_consistency: number of sampled chains per CoT question (1 = greedy, no vote).
    sc_temperature, sc_top_k, sc_top_p: sampling settings of self-consistency chains.
    max_new_tokens: overrides every task's own generation length when set.
    seed: sampling seed passed to the generator (offset per batch).
    output_dir: where predictions JSONL and results JSON go (None: nothing is written).
    chat_template: send each prompt as one user turn of the chat template of the generator's
      vocabulary, ending with the assistant's header; None: when the vocabulary has one.
    chat_system_prompt: a system turn for the chat template (None: the template's default).
  """
  batch_size: int | None = None
  max_examples_per_subtask: int | None = None
  max_prompt_tokens: int | None = None
  count_tokens: common.TokenCounter | None = None
  self_consistency: int = 1
  sc_temperature: float = 0.7
  sc_top_k: int | None = 40
  sc_top_p: float | None = None
  max_new_tokens: int | None = None
  seed: int = 0
  output_dir: str | None = None
  chat_template: bool | None = None
  chat_system_prompt: str | None = None

  def __post_init__(self):
    if self.batch_size is not None and self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
    if self.self_consistency < 1:
      raise ValueError(f"self_consistency must be >= 1, got {self.self_consistency}")
    if self.max_examples_per_subtask is not None and self.max_examples_per_subtask < 1:
      raise ValueError(f"max_examples_per_subtask must be >= 1, got "
                       f"{self.max_examples_per_subtask}")
    if self.max_prompt_tokens is not None and self.count_tokens is None:
      raise ValueError("max_prompt_tokens needs count_tokens (a str -> int token counter).")
    if self.max_new_tokens is not None and self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def token_counter(generator: object) -> common.TokenCounter | None:
  """The generator's way to count prompt tokens, if it offers one."""
  count = getattr(generator, "count_tokens", None)
  if callable(count):
    return count
  vocabulary = getattr(generator, "vocabulary", None)
  if vocabulary is not None and hasattr(vocabulary, "encode"):
    return lambda text: len(vocabulary.encode(text))
  return None


def fitted_to(config: HarnessConfig, generator: object,
              max_prompt_tokens: int | None = None) -> HarnessConfig:
  """`config` with prompts fitted to the model: the budget is `max_prompt_tokens`, else the
  generator's own `max_prompt_tokens` (the length it was trained on), measured its way."""
  count_tokens = token_counter(generator)
  budget = max_prompt_tokens or getattr(generator, "max_prompt_tokens", None)
  if budget is not None and count_tokens is None:
    raise ValueError("a prompt token budget needs a generator with count_tokens() or a "
                     "vocabulary; this one has neither")
  return dataclasses.replace(config, max_prompt_tokens=budget,
                             count_tokens=count_tokens if budget is not None else None)


def chat_template_of(generator: object):
  """The chat template of the generator's vocabulary (`ul2flan.hf_vocab`), or None."""
  return getattr(getattr(generator, "vocabulary", None), "chat_template", None)


def prompt_wrapper(generator: object, config: HarnessConfig) -> common.PromptWrapper | None:
  """How prompt text becomes what the model reads: the chat template's user turn, or as is."""
  template = chat_template_of(generator)
  if config.chat_template is False or (config.chat_template is None and template is None):
    return None
  if template is None:
    raise ValueError("chat_template=True needs a generator whose vocabulary has a chat template "
                     "(a Hugging Face tokenizer with `chat_template`)")
  system = ([{"role": "system", "content": config.chat_system_prompt}]
            if config.chat_system_prompt else [])
  return lambda text: template.render(system + [{"role": "user", "content": text}],
                                      add_generation_prompt=True)


def takes_stop_sequences(generator: object) -> bool:
  """Whether `generator.generate` accepts `stop_sequences` (older generators do not)."""
  try:
    parameters = inspect.signature(generator.generate).parameters
  except (TypeError, ValueError):
    return False
  return "stop_sequences" in parameters or any(
      p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def select_examples(task: common.EvalTask,
                    max_per_subtask: int | None) -> list[common.EvalExample]:
  """The task's examples, at most `max_per_subtask` (the first ones) from each subtask."""
  if max_per_subtask is None:
    return list(task.examples)
  taken: dict[str, int] = {}
  selected = []
  for example in task.examples:
    if taken.get(example.subtask, 0) < max_per_subtask:
      taken[example.subtask] = taken.get(example.subtask, 0) + 1
      selected.append(example)
  return selected


def _sampling_settings(task: common.EvalTask, config: HarnessConfig) -> dict[str, Any]:
  if task.mode == "cot" and config.self_consistency > 1:
    return {"temperature": config.sc_temperature, "top_k": config.sc_top_k,
            "top_p": config.sc_top_p, "num_samples": config.self_consistency}
  return {"temperature": 0.0, "top_k": None, "top_p": None, "num_samples": 1}


def _generate_batch(generator: Generator, prompts: list[str], sampling: dict[str, Any],
                    max_new_tokens: int, seed: int, **stops) -> list[list[str]]:
  outputs = generator.generate(prompts, max_new_tokens=max_new_tokens, seed=seed, **sampling,
                               **stops)
  if any(not isinstance(o, (list, tuple)) or not all(isinstance(t, str) for t in o)
         for o in outputs):
    raise TypeError("Generator.generate must return one list of strings per prompt "
                    "(list[list[str]]), even for num_samples=1.")
  if len(outputs) != len(prompts) or any(len(o) != sampling["num_samples"] for o in outputs):
    raise ValueError(
        f"Generator returned {[len(o) for o in outputs]} continuations for {len(prompts)} "
        f"prompts; expected {sampling['num_samples']} per prompt.")
  return outputs


def _score_example(task: common.EvalTask, example: common.EvalExample,
                   continuations: list[str]) -> dict[str, Any]:
  """Prediction record of one example: the (voted) answer and whether it is correct."""
  predictions = [stop_sequences_lib.truncate(c, task.stop_sequences) for c in continuations]
  answers = [task.extract_answer(p, example) for p in predictions]
  answer = scoring.majority_vote(answers) if len(answers) > 1 else answers[0]
  # With several chains, show the first chain that reached the voted answer.
  shown = next((p for p, a in zip(predictions, answers) if a == answer), predictions[0])
  record = {"prediction": shown, "extracted": answer, "gold": example.golds[0],
            "correct": bool(task.is_correct(answer, example))}
  if len(example.golds) > 1:
    record["all_golds"] = list(example.golds)
  if len(answers) > 1:
    record["sample_answers"] = answers
    record["samples"] = predictions
  return record


def evaluate_task(generator: Generator, task: common.EvalTask,
                  config: HarnessConfig = HarnessConfig()) -> dict[str, Any]:
  """Runs one task; returns its scores and writes its predictions when `output_dir` is set."""
  examples = select_examples(task, config.max_examples_per_subtask)
  if not examples:
    raise ValueError(f"Task {task.name} has no examples to evaluate.")
  sampling = _sampling_settings(task, config)
  max_new_tokens = config.max_new_tokens or task.max_new_tokens
  wrap = prompt_wrapper(generator, config)
  fitted = [common.fit_prompt(e, config.count_tokens, config.max_prompt_tokens, wrap)
            for e in examples]
  stops = ({"stop_sequences": tuple(task.stop_sequences)} if takes_stop_sequences(generator)
           else {})

  start = time.perf_counter()
  # Shortest first: a call (and the generator's batches within it) gets prompts of like length.
  order = sorted(range(len(fitted)), key=lambda i: len(fitted[i].text))
  call_size = config.batch_size or len(order)
  continuations: list[list[str]] = [[] for _ in fitted]
  for begin in range(0, len(order), call_size):
    batch = order[begin:begin + call_size]
    outputs = _generate_batch(generator, [fitted[i].text for i in batch], sampling,
                              max_new_tokens, seed=config.seed + begin, **stops)
    for i, output in zip(batch, outputs):
      continuations[i] = output
  records = [{"task": task.name, "subtask": example.subtask, "id": example.example_id,
              "prompt": fitted[i].text, "num_exemplars": fitted[i].num_exemplars,
              **_score_example(task, example, continuations[i])}
             for i, example in enumerate(examples)]
  seconds = time.perf_counter() - start

  result = summarize(task, records)
  result.update({
      "seconds": seconds,
      "examples_per_second": len(records) / seconds if seconds > 0 else float("inf"),
      "num_over_budget_prompts": sum(f.over_budget for f in fitted),
      "num_samples": sampling["num_samples"],
      "temperature": sampling["temperature"],
      "chat_template": wrap is not None,
      "stop_sequences": list(task.stop_sequences),
      "generation_stopped_early": bool(stops),
  })
  if config.output_dir:
    result["predictions_file"] = write_predictions(config.output_dir, task.name, records)
  logger.info("%s: score %.2f (normalized %.2f) on %d examples, %.2f examples/s", task.name,
               result["score"], result["normalized_score"], len(records),
               result["examples_per_second"])
  return result


def summarize(task: common.EvalTask, records: list[dict[str, Any]]) -> dict[str, Any]:
  """Per-subtask accuracy, the unweighted mean over subtasks, and its chance-normalized form.

  The normalized score is the mean of per-subtask normalized scores (BIG-bench's convention),
  which matters only when subtasks have different chance levels (BBH).
  """
  per_subtask: dict[str, dict[str, Any]] = {}
  for record in records:
    stats = per_subtask.setdefault(record["subtask"], {"num_examples": 0, "num_correct": 0})
    stats["num_examples"] += 1
    stats["num_correct"] += int(record["correct"])
  for subtask, stats in per_subtask.items():
    stats["accuracy"] = 100.0 * stats["num_correct"] / stats["num_examples"]
    stats["chance"] = task.subtask_chance[subtask]
    stats["normalized"] = scoring.normalized_score(stats["accuracy"], stats["chance"])
    stats["in_mean"] = subtask not in task.excluded_from_mean
  averaged = [s for s in per_subtask.values() if s["in_mean"]]
  if not averaged:
    raise ValueError(f"Task {task.name}: every evaluated subtask is excluded from the mean.")
  return {
      "task": task.name, "benchmark": task.benchmark, "mode": task.mode,
      "score": scoring.mean(s["accuracy"] for s in averaged),
      "chance": scoring.mean(s["chance"] for s in averaged),
      "normalized_score": scoring.mean(s["normalized"] for s in averaged),
      "num_examples": len(records),
      "num_subtasks_in_mean": len(averaged),
      "subtasks": per_subtask,
      "excluded_from_mean": sorted(task.excluded_from_mean & set(per_subtask)),
      "missing_subtasks": list(task.missing),
  }


def write_predictions(output_dir: str, task_name: str, records: list[dict[str, Any]]) -> str:
  out = paths.resolve(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"{task_name}.predictions.jsonl"
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                  encoding="utf-8")
  return str(path)


def run_suite(generator: Generator, tasks: Sequence[common.EvalTask],
              config: HarnessConfig = HarnessConfig()) -> dict[str, Any]:
  """Runs `tasks`; adds the Flan normalized average when all six of its scores are present."""
  if not isinstance(generator, Generator):
    raise TypeError(f"{type(generator).__name__} has no generate(prompts, ...) method.")
  start = time.perf_counter()
  results = {task.name: evaluate_task(generator, task, config) for task in tasks}
  seconds = time.perf_counter() - start
  normalized = {name: result["normalized_score"] for name, result in results.items()}
  missing = [n for n in scoring.FLAN_NORMALIZED_AVERAGE_TASKS if n not in normalized]
  total_examples = sum(r["num_examples"] for r in results.values())
  summary = {
      "tasks": results,
      "normalized_average": None if missing else scoring.normalized_average(normalized),
      "normalized_average_missing": missing,
      "num_examples": total_examples,
      "seconds": seconds,
      "examples_per_second": total_examples / seconds if seconds > 0 else float("inf"),
      "config": _config_summary(config),
  }
  if config.output_dir:
    out = paths.resolve(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False),
                                      encoding="utf-8")
  return summary


def _config_summary(config: HarnessConfig) -> dict[str, Any]:
  # Not dataclasses.asdict: it would deep-copy count_tokens (possibly a bound model method).
  fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
  fields["count_tokens"] = None if config.count_tokens is None else repr(config.count_tokens)
  return fields


def format_summary(summary: dict[str, Any]) -> str:
  """A short human-readable table of a `run_suite` result."""
  lines = [f"{'task':<16}{'score':>8}{'chance':>8}{'norm':>8}{'n':>7}{'ex/s':>9}"]
  for name, result in summary["tasks"].items():
    lines.append(f"{name:<16}{result['score']:8.2f}{result['chance']:8.2f}"
                 f"{result['normalized_score']:8.2f}{result['num_examples']:7d}"
                 f"{result['examples_per_second']:9.2f}")
    missing = result["missing_subtasks"]
    if missing:
      shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
      lines.append(f"  {len(missing)} subtasks without data: {shown}")
  if summary["normalized_average"] is None:
    lines.append("normalized average: n/a (missing " +
                 ", ".join(summary["normalized_average_missing"]) + ")")
  else:
    lines.append(f"normalized average: {summary['normalized_average']:.2f}")
  return "\n".join(lines)
