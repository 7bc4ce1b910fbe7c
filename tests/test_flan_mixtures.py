"""Capped, examples-proportional mixtures: computed rates, measured shares, presets, table."""

import collections
import itertools

import gin
import pytest
import seqio

from ul2flan import vocabularies as vocab
from ul2flan.flan import mixtures
from ul2flan.flan import rates
from ul2flan.flan import sources

_ids = itertools.count()
# Each toy task's targets are one colour word, so a sampled example names its task.
WORDS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")


def toy_tasks(sizes: dict[str, int]) -> dict[str, str]:
  """Registers preformatted tasks `name -> size`; returns task name -> its targets word."""
  words = {}
  for (name, size), word in zip(sizes.items(), WORDS):
    rows = [{"inputs": f"question {i}", "targets": word} for i in range(size)]
    sources.register_preformatted_task(name, lambda split, rows=rows: rows, ["train"],
                                       replace=True)
    words[name] = word
  return words


def expected_shares(groups: dict[str, tuple[float, int | None, dict[str, int]]]
                    ) -> dict[str, float]:
  """Independent reference: weight_g / sum(weights) * min(n, cap) / sum_g min(n, cap)."""
  total_weight = sum(w for w, _, _ in groups.values())
  shares = {}
  for weight, cap, sizes in groups.values():
    capped = {t: n if cap is None else min(n, cap) for t, n in sizes.items()}
    for t, n in capped.items():
      shares[t] = weight / total_weight * n / sum(capped.values())
  return shares


def test_measured_shares_match_capped_normalized_rates():
  k = next(_ids)
  g1 = {f"mx{k}_a": 50, f"mx{k}_b": 400, f"mx{k}_c": 1000}
  g2 = {f"mx{k}_d": 30, f"mx{k}_e": 200}
  words = toy_tasks({**g1, **g2})
  name = f"mx{k}"
  mixtures.register_capped_mixture(name, [
      mixtures.Submixture("one", 0.7, tuple(g1), cap=300),
      mixtures.Submixture("two", 0.3, tuple(g2), cap=100)])
  want = expected_shares({"one": (0.7, 300, g1), "two": (0.3, 100, g2)})

  computed = {r.task: r.share for r in rates.compute_rates(name)}
  assert computed == pytest.approx(want, abs=1e-12)

  n = 12000
  ds = seqio.MixtureRegistry.get(name).get_dataset(
      sequence_length={"inputs": 8, "targets": 8}, split="train", shuffle=True, seed=0,
      num_epochs=None)
  v = vocab.get_vocabulary()
  by_tokens = {tuple(v.encode(w)) + (1,): t for t, w in words.items()}  # + EOS
  counts = collections.Counter(by_tokens[tuple(ex["targets"].tolist())]
                               for ex in ds.take(n).as_numpy_iterator())
  for task, share in want.items():
    # 4.5 standard deviations of a binomial proportion at n samples.
    tolerance = 4.5 * (share * (1 - share) / n) ** 0.5
    assert abs(counts[task] / n - share) < tolerance, (task, counts[task] / n, share)


def test_rates_table_reports_shares_and_discarded_examples():
  k = next(_ids)
  sizes = {f"tb{k}_small": 10, f"tb{k}_big": 90}
  toy_tasks(sizes)
  name = f"tb{k}"
  mixtures.register_capped_mixture(name, [mixtures.Submixture("only", 1.0, tuple(sizes), 30)])
  rows = {r.task: r for r in rates.compute_rates(name)}
  big = rows[f"tb{k}_big"]
  assert (big.examples, big.cap, big.used, big.discarded) == (90, 30, 30, 60)
  assert big.share == pytest.approx(30 / 40)
  table = rates.rates_table(name)
  lines = {line.split()[0]: line.split() for line in table.splitlines()[2:]}
  assert lines[f"tb{k}_big"][-1] == "75.00%" and lines[f"tb{k}_big"][-2] == "60"
  assert lines[f"tb{k}_small"][-1] == "25.00%" and lines[f"tb{k}_small"][-2] == "0"
  assert lines["total"][-1] == "100.00%"
  with pytest.raises(ValueError, match="no task or mixture"):
    rates.rates_table("no_such_mixture_xyz")


def test_flan2022_preset_splits_each_source_evenly_over_formats():
  k = next(_ids)
  infos, sizes = [], {}
  layout = [("Flan2021", "zs_opt", 100), ("Flan2021", "zs_opt", 50), ("Flan2021", "fs_opt", 10),
            ("NIv2", "zs_opt", 9000), ("NIv2", "zs_opt", 3000), ("CoT", "fs_noopt", 7)]
  for i, (source, fmt, n) in enumerate(layout):
    task = f"pre{k}_{i}"
    sizes[task] = n
    infos.append(mixtures.TaskInfo(task, source, fmt))
  toy_tasks(sizes)
  preset = mixtures.flan2022_submix()
  mixtures.register_capped_mixture(f"pre{k}", mixtures.preset_submixtures(preset, infos))
  got = {r.task: r.share for r in rates.compute_rates(f"pre{k}")}
  # Present sources: flan2021 .40, niv2 .20, cot .05 -> renormalized over .65.
  flan, niv2, cot = 0.40 / 0.65, 0.20 / 0.65, 0.05 / 0.65
  want = {f"pre{k}_0": flan / 2 * 100 / 150, f"pre{k}_1": flan / 2 * 50 / 150,
          f"pre{k}_2": flan / 2, f"pre{k}_3": niv2 * 5000 / 8000,
          f"pre{k}_4": niv2 * 3000 / 8000, f"pre{k}_5": cot}
  assert got == pytest.approx(want)


def test_proportion_b_numbers_and_gin_overrides():
  preset = mixtures.get_preset("proportion_b")
  table = {g.name: (g.weight, g.cap) for g in preset.groups}
  assert table == {"muffin": (46.0, 30_000), "t0_sf": (27.9, 20_000), "niv2": (24.2, 5_000),
                   "cot": (1.8, 100_000)}
  assert not preset.split_formats
  sub = mixtures.get_preset("flan2022_submix")
  assert {g.name: g.weight for g in sub.groups} == {"flan2021": 0.40, "t0": 0.32, "niv2": 0.20,
                                                    "cot": 0.05, "dialog": 0.03}
  assert sub.split_formats
  try:
    gin.parse_config(["proportion_b.niv2_cap = 7", "flan2022_submix.dialog = 0.0"])
    assert {g.name: g.cap for g in mixtures.get_preset("proportion_b").groups}["niv2"] == 7
    assert {g.name: g.weight for g in mixtures.get_preset("flan2022_submix").groups
            }["dialog"] == 0.0
  finally:
    gin.clear_config()
  with pytest.raises(ValueError, match="unknown mixture preset"):
    mixtures.get_preset("proportion_z")


def test_caps_apply_per_niv2_task_and_sources_map_to_groups():
  # The recipe's caveat: the 5k cap is per NIV2 task, never one cap for all of NIV2.
  subs = mixtures.preset_submixtures(mixtures.proportion_b(), [
      mixtures.TaskInfo("a", "NIv2"), mixtures.TaskInfo("b", "niv2"),
      mixtures.TaskInfo("c", "Dialog"), mixtures.TaskInfo("d", "T0")])
  by_name = {s.name: s for s in subs}
  assert list(by_name["niv2"].tasks) == ["a", "b"] and by_name["niv2"].cap == 5000
  assert list(by_name["muffin"].tasks) == ["c"]  # Muffin includes dialog
  assert list(by_name["t0_sf"].tasks) == ["d"]
  with pytest.raises(ValueError, match="belong to no group"):
    mixtures.preset_submixtures(mixtures.proportion_b(), [mixtures.TaskInfo("x", "Other")])
  assert mixtures.preset_submixtures(mixtures.proportion_b(), [mixtures.TaskInfo("x", "Other")],
                                     ignore_unknown_sources=True)[0].tasks == []


def test_mixture_errors_are_clear():
  with pytest.raises(ValueError, match="unregistered tasks"):
    mixtures.register_task_mixture(f"err{next(_ids)}", ["no_such_task_abc"])
  with pytest.raises(ValueError, match="every submixture is empty"):
    mixtures.register_capped_mixture(f"err{next(_ids)}", [mixtures.Submixture("s", 1.0, ())])
  with pytest.raises(ValueError, match="cap"):
    mixtures.CappedRate(cap=0)
