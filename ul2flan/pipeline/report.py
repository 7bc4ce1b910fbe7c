"""The pipeline report: report.md (tables, each evaluator's section, plots) and report.json.

`report.json` is what scripts read: {"seeds": [...], "models": {model: {metric: value}}} for one
seed; over several seeds each metric is {"mean", "min", "max", "values"} (values in seed order).
The main table has the headline metrics of every evaluator that ran; each evaluator then adds
its own section (`Evaluator.report_lines`: per-task tables, claim-by-claim verdicts).
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import jax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ul2flan import paths
from ul2flan.pipeline import evaluators as evaluators_lib
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


def plot_curves(model_dir: str, dirs: Mapping[str, str]) -> str | None:
  """Each trained stage's training loss, validation loss and held-out text loss by step."""
  stages = [(n, d) for n, d in dirs.items() if (paths.resolve(d) / "metrics.jsonl").exists()]
  if not stages:
    return None
  fig, axes = _figure(len(stages), (4 * len(stages), 3.2))
  for ax, (name, d) in zip(axes, stages):
    train = read_metrics(paths.resolve(d) / "metrics.jsonl")
    ev = read_metrics(paths.resolve(d) / "metrics_eval.jsonl")
    ax.plot([m["step"] for m in train], [m["loss"] for m in train], label="train")
    for key, label in (("loss", "validation"), ("text_loss", "held-out text")):
      points = [(m["step"], m[key]) for m in ev if key in m]
      if points:
        ax.plot(*zip(*points), "o-", label=label)
    ax.set_title(LABELS.get(name, name))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
  fig.tight_layout()
  return _save(fig, paths.join(model_dir, "training_curves.png"))


def plot_comparison(model_dir: str, summary: Mapping, headline: Sequence[tuple[str, str]]
                    ) -> str | None:
  """Bars of up to four headline metrics per model (the mean, the seed range as error bars)."""
  models = [m for m in LABELS if m in summary]
  metrics = [(k, label) for k, label in headline if any(k in summary[m] for m in models)][:4]
  if not models or not metrics:
    return None
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


def summarize_seeds(results_by_seed: Mapping[int, Mapping[str, Mapping]]
                    ) -> dict[str, dict[str, dict]]:
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


def report_json(results_by_seed: Mapping[int, Mapping[str, Mapping]]) -> dict:
  """What scripts read: per model its metrics by name; over several seeds each metric's
  mean / min / max (and the per-seed values)."""
  seeds = sorted(results_by_seed)
  if len(seeds) == 1:
    models = {m: dict(r["metrics"]) for m, r in results_by_seed[seeds[0]].items()}
  else:
    models = summarize_seeds(results_by_seed)
  return {"seeds": seeds, "models": {m: models[m] for m in LABELS if m in models}}


def cell(stats: Mapping | None, multi: bool) -> str:
  if stats is None:
    return "-"
  if not multi:
    return f"{stats['mean']:.1f}"
  return f"{stats['mean']:.1f} [{stats['min']:.1f}, {stats['max']:.1f}]"


def headline_table(summary: Mapping, headline: Sequence[tuple[str, str]], multi: bool
                   ) -> list[str]:
  models = [m for m in LABELS if m in summary]
  columns = [(k, label) for k, label in headline if any(k in summary[m] for m in models)]
  if not models or not columns:
    return ["(no metrics)"]
  lines = ["| model | " + " | ".join(label for _, label in columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for m in models:
    lines.append(f"| {LABELS[m]} | "
                 + " | ".join(cell(summary[m].get(k), multi) for k, _ in columns) + " |")
  return lines


def write_report(model_dir: str, results_by_seed: Mapping[int, Mapping[str, Mapping]],
                 evaluators: Sequence[evaluators_lib.Evaluator],
                 dirs: Mapping[str, str] | None = None) -> str:
  """MODEL_DIR/report.md, report.json and the plots, over one or more seeds' results (on
  process 0); returns report.md's path."""
  path = paths.join(model_dir, "report.md")
  if jax.process_index() != 0:
    return path
  seeds = sorted(results_by_seed)
  multi = len(seeds) > 1
  summary = summarize_seeds(results_by_seed)
  headline = [h for e in evaluators for h in e.headline]
  lines = ["# ul2flan pipeline report", "",
           f"Model dir: `{model_dir}`. Seeds: {', '.join(map(str, seeds))}"
           + (" (each cell: mean [min, max] over the seeds)" if multi else "") + ". "
           f"Evaluators: {', '.join(e.name for e in evaluators) or 'none'}.", ""]
  lines += headline_table(summary, headline, multi)
  for evaluator in evaluators:
    section = evaluator.report_lines(results_by_seed, summary)
    if section:
      lines += [""] + list(section)
  curves = plot_curves(model_dir, {k: v for k, v in (dirs or {}).items() if k in LABELS})
  comparison = plot_comparison(model_dir, summary, headline) if summary else None
  lines += ["", "## Plots", ""]
  if curves:
    lines.append(f"![training curves]({paths.resolve(curves).name})")
  if comparison:
    lines.append(f"![comparison]({paths.resolve(comparison).name})")
  lines += ["", "Machine-readable: `report.json`. Per-model results and per-example rows: `eval/`"
            + (" in each seed's dir." if multi else ".")]
  paths.resolve(path).write_text("\n".join(lines) + "\n")
  paths.resolve(paths.join(model_dir, "report.json")).write_text(
      json.dumps(report_json(results_by_seed), indent=1) + "\n")
  return path
