"""The demo's section of the pipeline report: held-out task table and claim-by-claim verdicts.

The generic report (main table, plots, report.json) is `ul2flan.pipeline.report`; this module
says what the demo's metrics mean and whether the papers' direction shows in them
(`ul2flan.pipeline.claims`: "shown" only beyond the seeds' spread, or a stated threshold for one
seed).
"""

from __future__ import annotations

from typing import Mapping

from ul2flan.demo import probes
from ul2flan.pipeline import claims
from ul2flan.pipeline.report import LABELS

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
    # Last, so that the plot's first four bars stay the ones above.
    ("knowledge_causal_corpus_accuracy", "knowledge cloze read causally, corpus phrasing (%)"),
    ("knowledge_causal_heldout_accuracy", "knowledge cloze read causally, new phrasing (%)"),
    ("heldout_causal_generation_normalized", "held-out gen read causally (norm.)"),
    ("heldout_causal_rank_normalized", "held-out rank read causally (norm.)"),
)
KEEPS_KNOWLEDGE = 0.9  # UL2R's knowledge claim: U-base at least 90% of the base's, every seed


def section(results_by_seed: Mapping[int, Mapping[str, Mapping]], summary: Mapping) -> list[str]:
  """The demo's part of report.md."""
  seeds = sorted(results_by_seed)
  first = next((r["evaluators"].get("demo", {}) for r in results_by_seed[seeds[0]].values()), {})
  lines = ["## Demo evaluation", "",
           f"Held-out split `{first.get('heldout_split', 'test')}`, "
           f"{first.get('heldout_shots', 0)}-shot: "
           "**gen** = greedy generation, exact match on the extracted answer; **rank** = the "
           "option with the highest log-likelihood (as FLAN 2021 and T0 score multiple choice). "
           "Normalized = 100 (acc - chance) / (100 - chance), averaged over the held-out tasks, "
           "as in the Flan paper. Knowledge cloze: the true value ranked among all values of "
           "its attribute (chance 6-12.5% per attribute), before any finetuning for the base; "
           "every model is read in the layout it was trained in (a prefix LM as UL2R's S "
           "denoiser: `[S2S]` + text, the value after the inputs' EOS if its rows had one), and "
           "also causally (the same "
           "weights as the causal LM they were pre-trained as: no mode token, no EOS, causal "
           "attention; a causal model's only reading). The U-model gets held-out questions as S "
           "inputs too, and every prefix LM gets them causally as well (\"read causally\"). "
           "Infilling: greedy, exact match of the span written after `<extra_id_0>`; by rank: "
           f"the gold span ranked first among {probes.INFILLING_CANDIDATES} values of its kind "
           "(fewer for containers), each scored as the target `<extra_id_0> value EOS`"
           + _rank_chance_text(summary) + "."]
  if len(seeds) == 1:
    lines += ["", "### Held-out tasks (accuracy %)", ""] + _task_table(results_by_seed[seeds[0]])
  lines += ["", "### Does the papers' direction show?", ""] + direction_notes(summary)
  lines += ["", "Per-example rows: `eval/<model>.heldout.jsonl`, `.knowledge.jsonl`, "
            "`.infilling.jsonl` (and `.heldout_causal.jsonl`, `.knowledge_causal.jsonl` for a "
            "prefix LM)."]
  return lines


def _task_table(results: dict) -> list[str]:
  """Per held-out task: generation / rank accuracy of each model (one seed)."""
  models = [m for m in LABELS if m in results]
  demo = {m: results[m]["evaluators"]["demo"] for m in models}
  tasks = sorted({t for m in models for t in demo[m]["tasks"]})
  lines = ["| model | " + " | ".join(t.replace("demo_heldout_", "") + " gen / rank"
                                     for t in tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
  for m in models:
    cells = [f"{demo[m]['tasks'][t]['accuracy']:.1f} / "
             f"{demo[m]['tasks'][t]['rank_accuracy']:.1f}" for t in tasks]
    lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
  if models:
    lines += ["", "Chance accuracy: " + ", ".join(
        f"{t.replace('demo_heldout_', '')} {demo[models[0]]['tasks'][t]['chance']:.0f}%"
        for t in tasks)]
  return lines


def _rank_chance_text(summary: dict) -> str:
  chances = [stats[f"infilling_{probe}_rank_chance"]["mean"] for stats in summary.values()
             for probe in ("context", "fact") if f"infilling_{probe}_rank_chance" in stats]
  return f" (chance {min(chances):.1f}-{max(chances):.1f}%)" if chances else ""


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
  for key, phrasing in (("corpus", "corpus phrasing"), ("heldout", "new phrasing")):
    notes.append(claims.at_least(
        summary, f"UL2R keeps the base's knowledge, read as trained ({phrasing}): U-base vs base",
        "ul2r", "base", f"knowledge_{key}_accuracy", KEEPS_KNOWLEDGE,
        probes.knowledge_chance()))
    notes.append(claims.at_least(
        summary, f"UL2R keeps the base's knowledge, read causally ({phrasing}): U-base vs base",
        "ul2r", "base", f"knowledge_causal_{key}_accuracy", KEEPS_KNOWLEDGE,
        probes.knowledge_chance()))
  notes += [
      claims.claim(summary, "Flan-base generalises to held-out tasks (gen, normalized) vs base",
             "flan_base", "base", gen, 20.0),
      claims.claim(summary, "Flan-U-base generalises to held-out tasks (gen, normalized) vs base",
             "flan_ul2r", "base", gen, 20.0),
      claims.claim(summary, "Flan-U-base vs U-base, held-out gen (normalized)", "flan_ul2r", "ul2r",
             gen, 20.0),
      claims.claim(summary, "U-base read causally vs base, held-out gen (normalized; U-PaLM: "
             "better few-shot)", "ul2r", "base", "heldout_causal_generation_normalized"),
      claims.claim(summary, "Flan-base vs base, held-out rank (normalized)", "flan_base", "base",
             "heldout_rank_normalized"),
      claims.claim(summary, "UL2R buys infilling (span in context, greedy; target U-base >= 30 "
             "with the base about 0): U-base vs base", "ul2r", "base",
             "infilling_context_accuracy", 30.0),
      claims.claim(summary, "UL2R buys infilling by rank (span in context, teacher-forced): U-base "
             "vs base", "ul2r", "base", "infilling_context_rank_accuracy"),
      claims.claim(summary, "UL2R buys infilling by rank (memorised fact, teacher-forced): U-base vs "
             "base", "ul2r", "base", "infilling_fact_rank_accuracy"),
      claims.claim(summary, "Flan-U-base vs Flan-base, infilling (span in context)", "flan_ul2r",
             "flan_base", "infilling_context_accuracy"),
      claims.claim(summary, "Flan-U-base is at least as good as Flan-base (held-out gen, normalized)",
             "flan_ul2r", "flan_base", gen),
  ]
  return notes
