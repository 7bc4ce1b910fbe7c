"""The registered UL2R / UL2 tasks, their prefix-LM layout after packing, and `inspect-task`."""

import argparse
import collections
import io
import json
import math

import numpy as np
import pytest
import seqio

import ul2flan_tasks  # noqa: F401  (registers the tasks)
from ul2flan import row_layout
from ul2flan.demo import corpus as demo_corpus
from ul2flan.demo import world
from ul2flan.ul2 import denoisers
from ul2flan.ul2 import tasks as ul2_tasks
from ul2flan.commands import inspect_task
from ul2flan import vocabularies as vocab_lib

EOS = 1


@pytest.fixture(scope="module")
def vocabulary():
  return vocab_lib.get_vocabulary()


@pytest.fixture(scope="module")
def ul2r_examples():
  task = seqio.get_mixture_or_task("demo_ul2r")
  ds = task.get_dataset(None, split="train", shuffle=False, seed=11)
  return list(ds.take(1200).as_numpy_iterator())


def test_tasks_are_registered():
  names = seqio.TaskRegistry.names()
  assert {"demo_ul2r", "demo_ul2", "c4_ul2r"} <= set(names)
  assert ul2_tasks.task_mixture("demo_ul2r").name == "UL2R"
  assert (ul2_tasks.task_mixture("c4_ul2r").inputs_length,
          ul2_tasks.task_mixture("c4_ul2r").targets_length) == (1024, 1024)


def test_demo_ul2r_fits_the_demo_lengths_with_mode_tokens(ul2r_examples, vocabulary):
  modes = {"S": "[S2S]", "R": "[NLU]", "X": "[NLG]"}
  for ex in ul2r_examples:
    kind = ex["denoiser"].decode()[0]
    mode = vocabulary.encode(modes[kind])
    assert ex["inputs"][:len(mode)].tolist() == mode
    # One 256-token decoder row each, filled: a text token more would cost 1 to 3 row tokens.
    assert 254 <= len(ex["inputs"]) + len(ex["targets"]) <= 256
    assert ex["inputs"][-1] == EOS and ex["targets"][-1] == EOS


def test_demo_ul2_draws_its_seven_denoisers_uniformly(vocabulary):
  task = seqio.get_mixture_or_task("demo_ul2")
  examples = list(task.get_dataset(None, split="validation", shuffle=False, seed=0)
                  .take(1400).as_numpy_iterator())
  counts = collections.Counter(ex["denoiser"].decode() for ex in examples)
  assert len(counts) == 7
  n, p = len(examples), 1 / 7
  for name, count in counts.items():
    assert abs(count / n - p) < 4 * math.sqrt(p * (1 - p) / n), counts
  nlg = vocabulary.encode("[NLG]")
  for ex in examples:
    if ex["denoiser"].decode().startswith("X"):
      assert ex["inputs"][:len(nlg)].tolist() == nlg


def test_c4_ul2r_fails_with_instructions_when_c4_is_absent(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  task = seqio.get_mixture_or_task("c4_ul2r")
  with pytest.raises(FileNotFoundError, match=r"c4/en:3\.0\.1.*not prepared.*download_and_prepare"):
    task.get_dataset({"inputs": 1024, "targets": 1024}, split="train")


def test_prefix_lm_packing_concatenates_inputs_and_targets_before_packing(ul2r_examples):
  """The trainer's prefix-LM converter (seqio's, checked per row), pack=True, on real examples."""
  examples = ul2r_examples[:300]
  by_tokens = {tuple(ex["inputs"]) + tuple(ex["targets"]): ex for ex in examples}
  ds = seqio.get_mixture_or_task("demo_ul2r").get_dataset(None, split="train", shuffle=False,
                                                           seed=11).take(300)
  packed = list(row_layout.RowLayout("prefix_lm").feature_converter(pack=True)(
      ds, {"inputs": 128, "targets": 128}).as_numpy_iterator())
  segments_seen = 0
  for row in packed:
    assert row["decoder_target_tokens"].shape == (256,)
    segment_ids = row["decoder_segment_ids"]
    for s in range(1, segment_ids.max() + 1):
      where = np.flatnonzero(segment_ids == s)
      assert np.all(np.diff(where) == 1)  # one contiguous run per example
      run = tuple(row["decoder_target_tokens"][where])
      ex = by_tokens[run]  # the example's inputs immediately followed by its targets
      n_in, n_tgt = len(ex["inputs"]), len(ex["targets"])
      assert row["decoder_loss_weights"][where].tolist() == [0] * n_in + [1] * n_tgt
      # Bidirectional over the prefix (seqio marks one more position: where the last input token
      # is read to predict the first target); causal over the rest.
      assert row["decoder_causal_attention"][where].tolist() == [1] * (n_in + 1) + [0] * (n_tgt - 1)
      assert row["decoder_positions"][where].tolist() == list(range(n_in + n_tgt))
      segments_seen += 1
    assert np.all(row["decoder_target_tokens"][segment_ids == 0] == 0)
  assert segments_seen == len(examples)
  # Rows are filled by the concatenated length: next-fit packing of len(inputs) + len(targets)
  # into 256-token rows (seqio packs batches of 256 examples and flushes between them).
  rows = 0
  for start in range(0, len(examples), 256):
    used = None
    for ex in examples[start:start + 256]:
      length = len(ex["inputs"]) + len(ex["targets"])
      if used is None or used + length > 256:
        rows, used = rows + 1, 0
      used += length
  assert len(packed) == rows


@pytest.mark.parametrize("length, fill_rows, examples", [
    (128, True, 600), (1024, True, 200), (128, False, 600)])
def test_packed_decoder_rows_are_full_when_segments_fill_rows(length, fill_rows, examples):
  """Rows of inputs + targets after packing: >= 95% text at the demo and U-PaLM lengths; sized
  per feature (T5's way), about a quarter of every row is padding."""
  task = ul2_tasks.register_ul2_task(
      f"test_fill_{length}_{fill_rows}", "demo",
      denoisers.ul2r_preset(length, length, fill_rows=fill_rows), overwrite=True)
  lengths = {"inputs": length, "targets": length}
  ds = task.get_dataset(lengths, split="train", shuffle=False, seed=0).take(examples)
  text_tokens = sum(len(ex["inputs"]) + len(ex["targets"]) for ex in ds.as_numpy_iterator())
  rows = list(row_layout.RowLayout("prefix_lm").feature_converter(pack=True)(ds, lengths).as_numpy_iterator())
  fill = text_tokens / (len(rows) * 2 * length)
  if fill_rows:
    assert fill >= 0.95 and len(rows) == examples  # one example per row, each ~full
  else:
    assert 0.6 < fill < 0.85


def test_without_the_inputs_eos_the_examples_are_the_same_but_for_that_eos():
  """`inputs_eos=False`: the same denoised examples (same seed) whose inputs lack the EOS that
  seqio's `append_eos` puts at the end of the default's; targets keep theirs. The run records it
  (`inputs_end_with_eos`, written to run.json)."""
  from ul2flan.training import data  # pylint: disable=g-import-not-at-top
  lengths = {"inputs": 128, "targets": 128}
  examples = {}
  for inputs_eos in (True, False):
    name = f"test_inputs_eos_{inputs_eos}"
    task = ul2_tasks.register_ul2_task(
        name, "demo", denoisers.ul2r_preset(128, 128, inputs_eos=inputs_eos), overwrite=True)
    ds = task.get_dataset(lengths, split="train", shuffle=False, seed=3).take(60)
    examples[inputs_eos] = list(ds.as_numpy_iterator())
    config = data.DatasetConfig(mixture_or_task_name=name, task_feature_lengths=lengths)
    assert data.inputs_end_with_eos(config) is inputs_eos
  assert len(examples[True]) == len(examples[False]) == 60
  for with_eos, without in zip(examples[True], examples[False]):
    assert with_eos["inputs"][-1] == EOS and EOS not in without["inputs"]
    assert list(without["inputs"]) == list(with_eos["inputs"][:-1])
    assert list(without["targets"]) == list(with_eos["targets"]) and without["targets"][-1] == EOS
    assert without["denoiser"] == with_eos["denoiser"]
  flan = data.DatasetConfig(mixture_or_task_name="demo_flan", task_feature_lengths=lengths)
  assert data.inputs_end_with_eos(flan) is True


# ------------------------------------------------------------------------------------------------
# inspect-task.

def inspect(*argv):
  parser = argparse.ArgumentParser()
  inspect_task.add_arguments(parser)
  out = io.StringIO()
  rc = inspect_task.run(parser.parse_args(list(argv)), out=out)
  return rc, out.getvalue()


def test_inspect_text_shows_denoiser_mode_token_and_sentinels():
  rc, text = inspect("demo_ul2r", "--num_examples", "12")
  assert rc == 0
  assert text.count("--- example") == 12
  assert "denoiser: X(mu=32,r=0.5)" in text or "denoiser: R(mu=3,r=0.15)" in text
  assert "<extra_id_0>" in text and "[S2S]" in text


def test_inspect_jsonl_has_denoiser_and_ids(vocabulary):
  rc, text = inspect("demo_ul2r", "--num_examples", "20", "--format", "jsonl", "--split",
                     "validation")
  assert rc == 0
  records = [json.loads(line) for line in text.splitlines()]
  assert len(records) == 20
  expected = seqio.get_mixture_or_task("demo_ul2r").get_dataset(
      None, split="validation", shuffle=False, seed=0).take(20).as_numpy_iterator()
  for record, ex in zip(records, expected):
    assert record["denoiser"] == ex["denoiser"].decode()
    assert record["inputs"] == ex["inputs"].tolist() and record["targets"] == ex["targets"].tolist()


def test_inspect_stats_measures_each_denoiser():
  rc, text = inspect("demo_ul2r", "--stats", "--stats_examples", "600")
  assert rc == 0
  rows = {line.split()[0]: line.split() for line in text.splitlines()
          if line.startswith(("R(", "X(", "S("))}
  assert set(rows) == {"S(uniform)", "R(mu=3,r=0.15)", "X(mu=32,r=0.5)"}
  assert sum(float(r[1]) for r in rows.values()) == pytest.approx(1.0, abs=0.002)
  assert float(rows["R(mu=3,r=0.15)"][3]) == pytest.approx(0.15, abs=0.01)  # corruption
  assert float(rows["X(mu=32,r=0.5)"][3]) == pytest.approx(0.5, abs=0.02)
  assert float(rows["R(mu=3,r=0.15)"][4]) == pytest.approx(34 / 11, abs=0.1)  # 226-token segments
  (packed,) = [line.split() for line in text.splitlines() if line.startswith("all (packed")]
  for row in [*rows.values(), packed]:
    assert 0 <= float(row[-1]) < 0.01  # padding share of the packed rows: they are full


def test_inspect_on_a_plain_lm_task_shows_the_corpus_documents(vocabulary):
  """demo_lm unshuffled is the corpus in order: the printed texts, token counts and mean length
  must be the generator's documents, tokenized here independently (+ EOS)."""
  rc, text = inspect("demo_lm", "--num_examples", "2", "--stats", "--stats_examples", "50")
  assert rc == 0
  docs = world.corpus_documents("train", num_documents=50)
  lengths = [len(vocabulary.encode(d)) + 1 for d in docs]
  lines = text.splitlines()
  for i in range(2):
    assert f"--- example {i}  denoiser: (none)  (targets {lengths[i]} tokens)" in lines
    assert f"targets: {docs[i]}" in lines
  (row,) = [l for l in lines if l.startswith("(none) ")]
  mean, longest = row.split()[-2].split("/")
  assert float(mean) == pytest.approx(np.mean(lengths), abs=0.05) and int(longest) == max(lengths)


def test_inspect_rejects_unknown_task_and_module(capsys):
  rc, _ = inspect("demo_ul2rr")
  assert rc == 2 and "did you mean demo_ul2r" in capsys.readouterr().err
  rc, _ = inspect("demo_ul2r", "--module", "no_such_module_xyz")
  assert rc == 2 and "no_such_module_xyz" in capsys.readouterr().err
  rc, _ = inspect("demo_ul2r", "--sequence_length", "inputs:128")
  assert rc == 2 and "--sequence_length" in capsys.readouterr().err


def test_demo_lengths_are_gin_configurable_after_registration():
  """Tasks read their lengths when used: a binding made after ul2flan_tasks was imported holds."""
  import gin  # pylint: disable=g-import-not-at-top
  binding = "demo_task_lengths.inputs_length"
  try:
    with gin.unlock_config():
      gin.bind_parameter(binding, 64)
    assert ul2_tasks.task_mixture("demo_ul2r").inputs_length == 64
    ex = next(seqio.get_mixture_or_task("demo_ul2r").get_dataset(
        None, split="validation", shuffle=False, seed=0).as_numpy_iterator())
    assert len(ex["inputs"]) + len(ex["targets"]) <= 64 + 128
  finally:
    with gin.unlock_config():
      gin.bind_parameter(binding, 128)  # the default; leaves other gin state alone
  assert ul2_tasks.task_mixture("demo_ul2r").inputs_length == 128
