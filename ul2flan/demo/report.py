"""The pipeline report: a markdown table of every model, training curves and a comparison chart."""

from __future__ import annotations

import jax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ul2flan import paths
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


def _plot_comparison(model_dir: str, results: dict) -> str:
  models = [m for m in LABELS if m in results]
  metrics = [("held-out generation acc", lambda r: _mean_acc(r, "accuracy")),
             ("held-out rank acc", lambda r: _mean_acc(r, "rank_accuracy")),
             ("infilling acc", lambda r: r["infilling_accuracy"])]
  fig, (ax,) = _figure(1, (8, 4))
  width = 0.8 / len(metrics)
  for i, (label, fn) in enumerate(metrics):
    xs = [j + i * width for j in range(len(models))]
    ax.bar(xs, [fn(results[m]) for m in models], width, label=label)
  ax.set_xticks([j + width * (len(metrics) - 1) / 2 for j in range(len(models))])
  ax.set_xticklabels([LABELS[m] for m in models])
  ax.set_ylabel("accuracy (%)")
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(metrics), fontsize="small")
  fig.tight_layout()
  return _save(fig, paths.join(model_dir, "comparison.png"))


def _mean_acc(r: dict, key: str) -> float:
  tasks = r["tasks"].values()
  return sum(t[key] for t in tasks) / max(len(tasks), 1)


def write_report(model_dir: str, dirs: dict, results: dict, settings: dict) -> str:
  """Writes MODEL_DIR/report.md and its plots (on process 0); returns the report's path."""
  path = paths.join(model_dir, "report.md")
  if jax.process_index() != 0:
    return path
  models = [m for m in LABELS if m in results]
  tasks = sorted({t for m in models for t in results[m]["tasks"]})
  short = [t.replace("demo_heldout_", "") for t in tasks]
  lines = ["# ul2flan pipeline report", "",
           f"Model dir: `{model_dir}`. Held-out split: `{settings['heldout_split']}`, "
           f"{settings['heldout_shots']}-shot. Each cell: **generation** accuracy (greedy "
           "decoding, exact match on the extracted answer) / **rank** accuracy (the option with "
           "the highest log-likelihood, as FLAN 2021 and T0 score multiple choice). Normalized = "
           "100 (acc - chance) / (100 - chance), averaged over tasks, as in the Flan paper.", "",
           "| model | " + " | ".join(f"{s} gen / rank" for s in short)
           + " | normalized avg gen / rank | infilling acc |",
           "|---" * (len(tasks) + 3) + "|"]
  for m in models:
    r = results[m]
    cells = [f"{r['tasks'][t]['accuracy']:.1f} / {r['tasks'][t]['rank_accuracy']:.1f}"
             for t in tasks]
    lines.append(f"| {LABELS[m]} | " + " | ".join(cells)
                 + f" | {r['heldout_normalized_average']:.1f} / "
                 f"{r['heldout_rank_normalized_average']:.1f} | {r['infilling_accuracy']:.1f} |")
  chance = {t: results[models[0]]["tasks"][t]["chance"] for t in tasks} if models else {}
  lines += ["", "Chance accuracy: " + ", ".join(f"{t.replace('demo_heldout_', '')} {c:.0f}%"
                                              for t, c in chance.items()), ""]
  lines += _direction_notes(results)
  bench_lines = _benchmark_lines(results)
  if bench_lines:
    lines += ["", "## Flan benchmarks (capped subsets)", ""] + bench_lines
  curves = _plot_curves(model_dir, {k: v for k, v in dirs.items() if k in LABELS})
  comp = _plot_comparison(model_dir, results) if models else None
  lines += ["", "## Plots", ""]
  if curves:
    lines.append(f"![training curves]({paths.resolve(curves).name})")
  if comp:
    lines.append(f"![comparison]({paths.resolve(comp).name})")
  lines += ["", "Per-example predictions: `eval/<model>.heldout.jsonl`, "
            "`eval/<model>.infilling.jsonl`."]
  paths.resolve(path).write_text("\n".join(lines) + "\n")
  return path


def _direction_notes(results: dict) -> list[str]:
  """States plainly whether the papers' direction shows at this scale."""
  notes = ["## Does the papers' direction show?", ""]
  if "base" in results and "ul2r" in results:
    b, u = results["base"]["infilling_accuracy"], results["ul2r"]["infilling_accuracy"]
    notes.append(f"- Infilling: base {b:.1f}% vs UL2R {u:.1f}% -> "
                 + ("UL2R infills where the base cannot." if u > b else
                    "NOT shown at this scale."))
  for key, what in (("heldout_normalized_average", "generation"),
                    ("heldout_rank_normalized_average", "rank classification")):
    for flan, base in (("flan_base", "base"), ("flan_ul2r", "ul2r")):
      if flan in results and base in results:
        f, b = results[flan][key], results[base][key]
        notes.append(f"- {LABELS[flan]} vs {LABELS[base]}, held-out {what} (normalized): "
                     f"{f:.1f} vs {b:.1f} -> " + ("Flan helps." if f > b else
                                                  "NOT shown at this scale."))
    if "flan_ul2r" in results and "flan_base" in results:
      f, b = results["flan_ul2r"][key], results["flan_base"][key]
      notes.append(f"- Flan-U-base vs Flan-base, held-out {what} (normalized): {f:.1f} vs {b:.1f}.")
  return notes


def _benchmark_lines(results: dict) -> list[str]:
  rows = []
  for m, r in results.items():
    for bench, summary in (r.get("benchmarks") or {}).items():
      rows.append(f"- {LABELS.get(m, m)} / {bench}: {summary.get('scores', summary)}")
  return rows
