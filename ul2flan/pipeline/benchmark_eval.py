"""The pipeline evaluator "benchmarks": the Flan benchmarks found in a data dir, on every model.

Every benchmark (MMLU, BBH, TyDiQA GoldP, MGSM) whose files are under
`evaluation_settings.benchmarks_data_dir` is scored in its Flan-protocol modes (or those of
`benchmark_modes`), each subtask capped at `benchmark_max_examples` examples so that a small
model's four evaluations take minutes (raise the cap for full numbers), prompts fitted to the
model's trained length as `ul2flan eval` fits them. `evaluation_settings.benchmarks` picks some
benchmarks; then a missing one is an error instead of being skipped.
"""

from __future__ import annotations

from typing import Mapping

from ul2flan import config as config_lib
from ul2flan import paths
from ul2flan.evaluation import common
from ul2flan.evaluation import harness
from ul2flan.evaluation import scoring
from ul2flan.evaluation import suite
from ul2flan.pipeline import evaluators
from ul2flan.pipeline import settings as settings_lib
from ul2flan.pipeline.report import LABELS
from ul2flan.ul2 import trained as ul2_trained


def available_tasks(settings) -> list[common.EvalTask]:
  """The benchmark tasks to run: those asked for, else every one whose data is present."""
  if not settings.benchmarks_data_dir:
    raise ValueError("evaluation_settings.benchmarks_data_dir is not set: point it at the "
                     "benchmark files (layout: docs/evaluation.md; ../shared/data/eval has a "
                     "sample)")
  if not paths.resolve(settings.benchmarks_data_dir).is_dir():
    raise ValueError(f"evaluation_settings.benchmarks_data_dir {settings.benchmarks_data_dir!r} "
                     f"is not a directory")
  tasks = []
  for name in settings.benchmarks or suite.BENCHMARKS:
    modes = [m for m in suite.PROTOCOL_MODES[name]
             if settings.benchmark_modes in ("both", m)] if name in suite.PROTOCOL_MODES else []
    for mode in modes:
      try:
        tasks += suite.build_tasks(settings.benchmarks_data_dir, benchmark=name, mode=mode)
      except common.EvalDataError:
        if settings.benchmarks:  # asked for by name: say why it cannot run
          raise
  if not tasks:
    raise ValueError(f"no benchmark data found under {settings.benchmarks_data_dir} (looked for "
                     f"{', '.join(settings.benchmarks or suite.BENCHMARKS)}; layout: "
                     f"docs/evaluation.md)")
  return tasks


def as_imported_chat_template(settings) -> bool | None:
  """How a model read as the imported base is read: its tokenizer's chat template when it has
  one (None: the harness decides), unless `evaluation_settings.chat_template = False`."""
  return None if settings.chat_template else False


def chat_template_setting(request) -> bool | None:
  """Benchmark prompts in the format each model was trained in: a model trained here gets the
  chat template only if its Flan rows were chat exchanges (`ChatFormat.enabled`: True, or "auto"
  with a tokenizer that has one); a model it did not train (the imported base) its own chat
  template when its tokenizer has one (None: the harness decides, as for "auto"). Off everywhere
  with `evaluation_settings.chat_template = False`."""
  trained_with = config_lib.trained_bindings(request.checkpoint_dir)
  if trained_with is None or not request.settings.chat_template:
    return as_imported_chat_template(request.settings)
  enabled = config_lib.bound_value(trained_with, "ChatFormat.enabled")
  if enabled in ("'auto'", '"auto"'):
    return None
  return enabled == "True"


def as_trained(gen, request):
  """`gen` prompted as its model was trained. The U-model's training inputs all began with a
  mode token: its prompts begin with its S denoiser's (`[S2S]`), the denoiser that continues a
  text. (A run with `s_sentinel=True`, not the default, wrote sentinel 0 before every S target;
  that sentinel is left at the start of its answers here.)"""
  if request.model != settings_lib.U_MODEL:
    return gen
  reading = ul2_trained.trained_s_reading(request.checkpoint_dir)
  if reading is None or not reading.mode_token:
    return gen
  return gen.with_layout(gen.layout.with_mode_ids(gen.vocabulary.encode(reading.mode_token)))


def _metrics(summary: Mapping, prefix: str) -> dict[str, float]:
  """`<prefix>_<task>` scores, `..._normalized`, and the normalized mean of what ran (the
  paper's six when all are present: normalized_average)."""
  normalized = {name: task["normalized_score"] for name, task in summary["tasks"].items()}
  metrics = {f"{prefix}_{name}": task["score"] for name, task in summary["tasks"].items()}
  metrics.update({f"{prefix}_{name}_normalized": v for name, v in normalized.items()})
  metrics[f"{prefix}_normalized_average"] = (sum(normalized.values()) / len(normalized)
                                             if normalized else 0.0)
  return metrics


class BenchmarkEvaluator:
  """MMLU / BBH / TyDiQA / MGSM, capped per subtask, with the Flan normalized average."""
  name = "benchmarks"
  headline = (("benchmark_normalized_average", "Flan benchmarks, normalized average"),
              ("benchmark_causal_normalized_average",
               "Flan benchmarks, normalized average, read causally"))

  def check(self, settings) -> None:
    available_tasks(settings)

  def evaluate(self, gen, request) -> dict:
    tasks = available_tasks(request.settings)
    summary = self._run(as_trained(gen, request), tasks, request, f"{request.model}.benchmarks",
                        chat_template_setting(request))
    metrics = _metrics(summary, "benchmark")
    result = {"metrics": metrics, "benchmarks": summary}
    # The U-model is trained on denoising rows, not on answering: it is also read causally.
    if (request.model == settings_lib.U_MODEL and request.settings.benchmark_u_model_causal
        and gen.prefix_lm):
      # Read as the model it continues is read: with the imported base's chat template, if any.
      causal = self._run(gen.with_layout(gen.layout.as_causal_lm()), tasks, request,
                         f"{request.model}.benchmarks_causal",
                         as_imported_chat_template(request.settings))
      metrics.update(_metrics(causal, "benchmark_causal"))
      result["benchmarks_causal"] = causal
    return result

  @staticmethod
  def _run(gen, tasks, request, out_name: str, chat_template: bool | None) -> dict:
    settings = request.settings
    config = harness.fitted_to(harness.HarnessConfig(
        batch_size=settings.batch_size, max_examples_per_subtask=settings.benchmark_max_examples,
        output_dir=paths.join(request.out_dir, out_name), chat_template=chat_template), gen)
    return harness.run_suite(gen, tasks, config)

  def report_lines(self, results_by_seed: Mapping, summary: Mapping) -> list[str]:
    rows = []
    for seed in sorted(results_by_seed):
      for model in [m for m in LABELS if m in results_by_seed[seed]]:
        results = results_by_seed[seed][model]["evaluators"].get(self.name, {})
        bench = results.get("benchmarks")
        if not bench:
          continue
        readings = [(LABELS[model], bench)]
        if results.get("benchmarks_causal"):
          readings.append((f"{LABELS[model]}, read causally", results["benchmarks_causal"]))
        for label, reading in readings:
          for name, task in reading["tasks"].items():
            rows.append(f"| {label} | {seed} | {name} | {task['score']:.1f} | "
                        f"{task['chance']:.1f} | {task['normalized_score']:.1f} | "
                        f"{task['num_examples']} |")
        missing = [t for t in scoring.FLAN_NORMALIZED_AVERAGE_TASKS if t not in bench["tasks"]]
        if not missing:
          average = scoring.normalized_average({n: t["normalized_score"]
                                                for n, t in bench["tasks"].items()})
          rows.append(f"| {LABELS[model]} | {seed} | **Flan normalized average (six)** | | | "
                      f"{average:.1f} | |")
    if not rows:
      return []
    return ["## Flan benchmarks", "",
            "Capped subsets (`evaluation_settings.benchmark_max_examples` per subtask), prompts "
            "fitted to the model's trained length; normalized = 100 (score - chance) / (100 - "
            "chance). The main table's average is over the tasks that ran; the paper's average "
            "of six needs all of MMLU direct/CoT, BBH direct/CoT, TyDiQA and MGSM. The U-model "
            "is read as trained (a prefix LM, prompts after its S mode token `[S2S]`) and, as "
            "\"read causally\", as the causal LM it "
            "was pre-trained as (`evaluation_settings.benchmark_u_model_causal`).", "",
            "| model | seed | task | score | chance | normalized | n |",
            "|---|---|---|---|---|---|---|"] + rows


evaluators.register(BenchmarkEvaluator())
