"""The pipeline report: report.md (tables, claim-by-claim verdicts, plots) and report.json.

`report.json` is what scripts read: {"seeds": [...], "models": {model: {metric: value}}} for one
seed; over several seeds each metric is {"mean", "min", "max", "values"} (values in seed order).
"""

from __future__ import annotations

import json

import jax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ul2flan import paths
from ul2flan.demo import probes
from ul2flan.evaluation import scoring
from ul2flan.training.metrics import read_metrics

LABELS = {"base": "base (causal LM)", "ul2r": "U-base (UL2R)", "flan_base": "Flan-base",
          "flan_ul2r": "Flan-U-base"}


def _figure(ncols: int, figsize: tuple[float, float]):
  """A figure drawn by the file-only Agg canvas (no display, no pyplot global state)."""
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: str) -> str:
  with paths.resolve(path).open("wb") as f:  # any filesystem epath reaches
    fig.savefig(f, format="png", dpi=100)
  return path


def _plot_curves(model_dir: str, dirs: dict) -> str | None:
  stages = [(n, d) for n, d in dirs.items() if (paths.resolve(d) / "metrics.jsonl").exists()]
  if not stages:
    return None
  fig, axes = _figure(len(stages), (4 * len(stages), 3.2))
  for ax, (name, d) in zip(axes, stages):
    train = read_metrics(paths.resolve(d) / "metrics.jsonl")
    ev = read_metrics(paths.resolve(d) / "metrics_eval.jsonl")
    ax.plot([m["step"] for m in train], [m["loss"] for m in train], label="train")
    if ev:
      ax.plot([m["step"] for m in ev], [m["loss"] for m in ev], "o-", label="validation")
    ax.set_title(LABELS.get(name, name))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
  fig.tight_layout()
  return _save(fig, paths.join(model_dir, "training_curves.png"))


def _plot_comparison(model_dir: str, summary: dict) -> str:
  """Bars of the headline metrics per model (the mean, with the seed range as error bars)."""
  models = [m for m in LABELS if m in summary]
  metrics = [("heldout_generation_normalized", "held-out gen (norm.)"),
             ("heldout_rank_normalized", "held-out rank (norm.)"),
             ("infilling_context_accuracy", "infilling, context (%)"),
             ("knowledge_corpus_accuracy", "knowledge cloze (%)")]
  fig, (ax,) = _figure(1, (9, 4))
  width = 0.8 / len(metrics)
  for i, (key, label) in enumerate(metrics):
    stats = [summary[m].get(key, {"mean": 0.0, "min": 0.0, "max": 0.0}) for m in models]
    xs = [j + i * width for j in range(len(models))]
    errors = [[s["mean"] - s["min"] for s in stats], [s["max"] - s["mean"] for s in stats]]
    ax.bar(xs, [s["mean"] for s in stats], width, yerr=errors, capsize=2, label=label)
  ax.set_xticks([j + width * (len(metrics) - 1) / 2 for j in range(len(models))])
  ax.set_xticklabels([LABELS[m] for m in models])
  ax.axhline(0, color="black", linewidth=0.5)
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(metrics), fontsize="small")
  fig.tight_layout()
  return _save(fig, paths.join(model_dir, "comparison.png"))


# Metrics of every model, in report order: (key in result["metrics"], column label).
HEADLINE_METRICS = (
    ("knowledge_corpus_accuracy", "knowledge cloze, corpus phrasing (%)"),
    ("knowledge_heldout_accuracy", "knowledge cloze, new phrasing (%)"),
    ("heldout_generation_normalized", "held-out gen (norm.)"),
    ("heldout_rank_normalized", "held-out rank (norm.)"),
    ("heldout_valid_answer_rate", "gen answer is an option (%)"),
    ("infilling_context_accuracy", "infilling, span in context (%)"),
    ("infilling_fact_accuracy", "infilling, memorised fact (%)"),
    ("infilling_context_rank_accuracy", "infilling by rank, span in context (%)"),
    ("infilling_fact_rank_accuracy", "infilling by rank, memorised fact (%)"),
)


def summarize_seeds(results_by_seed: dict[int, dict[str, dict]]) -> dict[str, dict[str, dict]]:
  """{seed: {model: result}} -> {model: {metric: {mean, min, max, values}}} (seed order)."""
  summary: dict[str, dict[str, dict]] = {}
  for model in [m for m in LABELS if any(m in r for r in results_by_seed.values())]:
    values: dict[str, list[float]] = {}
    for seed in sorted(results_by_seed):
      for key, value in results_by_seed[seed].get(model, {}).get("metrics", {}).items():
        values.setdefault(key, []).append(float(value))
    summary[model] = {k: {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "values": v}
                      for k, v in values.items()}
  return summary


def report_json(results_by_seed: dict[int, dict[str, dict]]) -> dict:
  """What scripts read: per model its metrics by name; over several seeds each metric's
  mean / min / max (and the per-seed values)."""
  seeds = sorted(results_by_seed)
  if len(seeds) == 1:
    models = {m: dict(r["metrics"]) for m, r in results_by_seed[seeds[0]].items()}
  else:
    models = summarize_seeds(results_by_seed)
  return {"seeds": seeds, "models": {m: models[m] for m in LABELS if m in models}}


def _cell(stats: dict | None, multi: bool) -> str:
  if stats is None:
    return "-"
  if not multi:
    return f"{stats['mean']:.1f}"
  return f"{stats['mean']:.1f} [{stats['min']:.1f}, {stats['max']:.1f}]"


def _headline_table(summary: dict, multi: bool) -> list[str]:
  lines = ["| model | " + " | ".join(label for _, label in HEADLINE_METRICS) + " |",
           "|---" * (len(HEADLINE_METRICS) + 1) + "|"]
  for m in [m for m in LABELS if m in summary]:
    lines.append(f"| {LABELS[m]} | "
                 + " | ".join(_cell(summary[m].get(k), multi) for k, _ in HEADLINE_METRICS) + " |")
  return lines


def _task_table(results: dict) -> list[str]:
  """Per held-out task: generation / rank accuracy of each model (one seed)."""
  models = [m for m in LABELS if m in results]
  tasks = sorted({t for m in models for t in results[m]["tasks"]})
  lines = ["| model | " + " | ".join(t.replace("demo_heldout_", "") + " gen / rank"
                                     for t in tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
  for m in models:
    cells = [f"{results[m]['tasks'][t]['accuracy']:.1f} / "
             f"{results[m]['tasks'][t]['rank_accuracy']:.1f}" for t in tasks]
    lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
  if models:
    lines += ["", "Chance accuracy: " + ", ".join(
        f"{t.replace('demo_heldout_', '')} {results[models[0]]['tasks'][t]['chance']:.0f}%"
        for t in tasks)]
  return lines


def write_report(model_dir: str, dirs: dict, results: dict, settings: dict) -> str:
  """One seed's MODEL_DIR/report.md, report.json and plots (on process 0); returns report.md."""
  return write_seeds_report(model_dir, {settings.get("seed", 0): results}, settings, dirs)


def write_seeds_report(model_dir: str, results_by_seed: dict[int, dict[str, dict]],
                       settings: dict, dirs: dict | None = None) -> str:
  """MODEL_DIR/report.md and report.json over one or more seeds' results."""
  path = paths.join(model_dir, "report.md")
  if jax.process_index() != 0:
    return path
  seeds = sorted(results_by_seed)
  multi = len(seeds) > 1
  summary = summarize_seeds(results_by_seed)
  lines = ["# ul2flan pipeline report", "",
           f"Model dir: `{model_dir}`. Seeds: {', '.join(map(str, seeds))}"
           + (" (each cell: mean [min, max] over the seeds)" if multi else "") + ". "
           f"Held-out split `{settings['heldout_split']}`, {settings['heldout_shots']}-shot: "
           "**gen** = greedy generation, exact match on the extracted answer; **rank** = the "
           "option with the highest log-likelihood (as FLAN 2021 and T0 score multiple choice). "
           "Normalized = 100 (acc - chance) / (100 - chance), averaged over the held-out tasks, "
           "as in the Flan paper. Knowledge cloze: the true value ranked among all values of "
           "its attribute (chance 6-12.5% per attribute), before any finetuning for the base. "
           "Infilling: greedy, exact match of the span written after `<extra_id_0>`; by rank: "
           f"the gold span ranked first among {probes.INFILLING_CANDIDATES} values of its kind "
           "(fewer for containers), each scored as the target `<extra_id_0> value EOS`"
           + _rank_chance_text(summary) + ".",
           ""]
  lines += _headline_table(summary, multi)
  if not multi:
    lines += ["", "### Held-out tasks (accuracy %)", ""] + _task_table(results_by_seed[seeds[0]])
  lines += ["", "## Does the papers' direction show?", ""] + direction_notes(summary)
  bench_lines = benchmark_table({s: r for s, r in results_by_seed.items()})
  if bench_lines:
    lines += ["", "## Flan benchmarks (capped subsets, prompts fitted to the model length)", ""]
    lines += bench_lines
  curves = _plot_curves(model_dir, {k: v for k, v in (dirs or {}).items() if k in LABELS})
  comparison = _plot_comparison(model_dir, summary) if summary else None
  lines += ["", "## Plots", ""]
  if curves:
    lines.append(f"![training curves]({paths.resolve(curves).name})")
  if comparison:
    lines.append(f"![comparison]({paths.resolve(comparison).name})")
  lines += ["", "Machine-readable: `report.json`. Per-example rows: `eval/<model>.heldout.jsonl`, "
            "`.knowledge.jsonl`, `.infilling.jsonl`" + (" in each seed's dir." if multi else ".")]
  paths.resolve(path).write_text("\n".join(lines) + "\n")
  paths.resolve(paths.join(model_dir, "report.json")).write_text(
      json.dumps(report_json(results_by_seed), indent=1) + "\n")
  return path


def _rank_chance_text(summary: dict) -> str:
  chances = [stats[f"infilling_{probe}_rank_chance"]["mean"] for stats in summary.values()
             for probe in ("context", "fact") if f"infilling_{probe}_rank_chance" in stats]
  return f" (chance {min(chances):.1f}-{max(chances):.1f}%)" if chances else ""


def _compare(summary: dict, a: str, b: str, key: str) -> tuple[float, bool, bool] | None:
  """(mean of a - b, every seed has a > b, the mean difference exceeds both seed spreads)."""
  if a not in summary or b not in summary or key not in summary[a] or key not in summary[b]:
    return None
  sa, sb = summary[a][key], summary[b][key]
  diffs = [x - y for x, y in zip(sa["values"], sb["values"])]
  spread = max(sa["max"] - sa["min"], sb["max"] - sb["min"])
  mean = sum(diffs) / len(diffs)
  return mean, all(d > 0 for d in diffs), abs(mean) > spread


def _claim(summary: dict, text: str, a: str, b: str, key: str, margin: float = 0.0) -> str:
  found = _compare(summary, a, b, key)
  if found is None:
    return f"- {text}: not measured."
  mean, every_seed, beyond_spread = found
  seeds = len(summary[a][key]["values"])
  holds = mean >= margin and every_seed and (beyond_spread or seeds == 1)
  detail = (f"{summary[a][key]['mean']:.1f} vs {summary[b][key]['mean']:.1f} "
            f"(difference {mean:+.1f}" + (f", target +{margin:.0f}" if margin else "")
            + (f"; {'every' if every_seed else 'not every'} seed, "
               f"{'larger' if beyond_spread else 'not larger'} than the spread" if seeds > 1
               else "; one seed, no spread to compare with") + ")")
  return f"- {text}: {detail} -> " + ("shown." if holds else "NOT shown at this scale.")


def direction_notes(summary: dict) -> list[str]:
  """States plainly, claim by claim, whether the papers' direction shows (across the seeds)."""
  notes = []
  if "base" in summary and "knowledge_corpus_accuracy" in summary["base"]:
    k = summary["base"]["knowledge_corpus_accuracy"]
    notes.append(f"- The base learned the world: knowledge cloze {k['mean']:.1f}% "
                 f"(min {k['min']:.1f}) with the corpus phrasing, "
                 f"{summary['base']['knowledge_heldout_accuracy']['mean']:.1f}% with new ones "
                 f"(chance {probes.knowledge_chance():.1f}%).")
  gen = "heldout_generation_normalized"
  notes += [
      _claim(summary, "Flan-base generalises to held-out tasks (gen, normalized) vs base",
             "flan_base", "base", gen, 20.0),
      _claim(summary, "Flan-U-base generalises to held-out tasks (gen, normalized) vs base",
             "flan_ul2r", "base", gen, 20.0),
      _claim(summary, "Flan-U-base vs U-base, held-out gen (normalized)", "flan_ul2r", "ul2r",
             gen, 20.0),
      _claim(summary, "Flan-base vs base, held-out rank (normalized)", "flan_base", "base",
             "heldout_rank_normalized"),
      _claim(summary, "UL2R buys infilling (span in context): U-base vs base", "ul2r", "base",
             "infilling_context_accuracy"),
      _claim(summary, "UL2R buys infilling by rank (span in context, teacher-forced): U-base "
             "vs base", "ul2r", "base", "infilling_context_rank_accuracy"),
      _claim(summary, "UL2R buys infilling by rank (memorised fact, teacher-forced): U-base vs "
             "base", "ul2r", "base", "infilling_fact_rank_accuracy"),
      _claim(summary, "Flan-U-base vs Flan-base, infilling (span in context)", "flan_ul2r",
             "flan_base", "infilling_context_accuracy"),
      _claim(summary, "Flan-U-base is at least as good as Flan-base (held-out gen, normalized)",
             "flan_ul2r", "flan_base", gen),
  ]
  return notes


def benchmark_table(results_by_seed: dict[int, dict[str, dict]]) -> list[str]:
  """Per model (and seed), per benchmark and mode: score, chance, normalized; then the model's
  Flan normalized average over the six (n/a, naming what is missing, when any is)."""
  lines = []
  for seed in sorted(results_by_seed):
    for m in [m for m in LABELS if m in results_by_seed[seed]]:
      normalized = {}
      for bench, summary in (results_by_seed[seed][m].get("benchmarks") or {}).items():
        for name, task in summary["tasks"].items():
          normalized[name] = task["normalized_score"]
          lines.append(f"| {LABELS[m]} | {seed} | {bench} | {task['mode']} | "
                       f"{task['score']:.1f} | {task['chance']:.1f} | "
                       f"{task['normalized_score']:.1f} | {task['num_examples']} |")
      if normalized:
        missing = [t for t in scoring.FLAN_NORMALIZED_AVERAGE_TASKS if t not in normalized]
        average = ("n/a (missing " + ", ".join(missing) + ")" if missing
                   else f"{scoring.normalized_average(normalized):.1f}")
        lines.append(f"| {LABELS[m]} | {seed} | **normalized average** | | | | {average} | |")
  if not lines:
    return []
  return ["| model | seed | benchmark | mode | score | chance | normalized | n |",
          "|---|---|---|---|---|---|---|---|"] + lines
