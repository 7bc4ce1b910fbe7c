"""`ul2flan eval` end to end on a real (micro) checkpoint: data checked first, real outputs.

The scores in results.json are checked against the MMLU CSV read here, independently of the
loaders: gold letters per question, and the prediction file's extracted answers.
"""

import csv
import json

import pytest

from ul2flan.commands import main as cli

GOLD = "AABC"


@pytest.fixture
def mmlu_dir(tmp_path):
  root = tmp_path / "data" / "mmlu" / "data"
  for split in ("dev", "test"):
    (root / split).mkdir(parents=True)
  with open(root / "dev" / "toy_dev.csv", "w", newline="") as f:
    csv.writer(f).writerows([[f"dev {i}", "a", "b", "c", "d", "A"] for i in range(5)])
  with open(root / "test" / "toy_test.csv", "w", newline="") as f:
    csv.writer(f).writerows([[f"q {i}", "a", "b", "c", "d", letter]
                             for i, letter in enumerate(GOLD)])
  return tmp_path / "data"


def _jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_mmlu_on_a_real_checkpoint(trained_model_dir, mmlu_dir, tmp_path, capsys):
  out = tmp_path / "out"
  rc = cli.main(["eval", "--checkpoint", trained_model_dir, "--benchmark", "mmlu",
                 "--data_dir", str(mmlu_dir), "--output_dir", str(out), "--batch_size", "3",
                 "--self_consistency", "2", "--max_new_tokens", "4"])
  assert rc == 0
  results = json.loads((out / "results.json").read_text())
  for mode in ("direct", "cot"):
    rows = _jsonl(out / f"mmlu_{mode}.predictions.jsonl")
    golds = [f"({g})" for g in GOLD]  # the Flan harness answers MMLU as "(A)".."(D)"
    assert [r["gold"] for r in rows] == golds  # one row per test question, in order
    correct = [r["extracted"] == g for r, g in zip(rows, golds)]
    assert results["tasks"][f"mmlu_{mode}"]["score"] == pytest.approx(100 * sum(correct) / 4)
    if mode == "cot":  # two sampled chains voted per question
      assert all(len(r.get("samples", [])) == 2 for r in rows)
  assert "results:" in capsys.readouterr().out


def test_missing_data_dir_fails_before_loading_the_model(tmp_path, capsys):
  missing = tmp_path / "no_such_dir"
  rc = cli.main(["eval", "--checkpoint", str(tmp_path / "no_checkpoint"), "--benchmark", "bbh",
                 "--data_dir", str(missing)])
  err = capsys.readouterr().err
  assert rc == 2 and str(missing) in err and "no_checkpoint" not in err


def test_bad_settings_fail_before_loading_the_model(mmlu_dir, tmp_path, capsys):
  rc = cli.main(["eval", "--checkpoint", str(tmp_path / "no_checkpoint"), "--benchmark", "mmlu",
                 "--data_dir", str(mmlu_dir), "--batch_size", "0"])
  err = capsys.readouterr().err
  assert rc == 2 and "batch_size" in err and "no_checkpoint" not in err


def test_missing_benchmark_files_name_what_is_expected(mmlu_dir, capsys):
  rc = cli.main(["eval", "--checkpoint", "ckpt", "--benchmark", "mgsm", "--data_dir",
                 str(mmlu_dir)])
  assert rc == 2
  err = capsys.readouterr().err
  assert "No MGSM data" in err and "mgsm_<lang>.tsv" in err
  rc = cli.main(["eval", "--checkpoint", "ckpt", "--benchmark", "tydiqa", "--mode", "cot",
                 "--data_dir", str(mmlu_dir)])
  assert rc == 2 and "only with mode direct" in capsys.readouterr().err


def test_chat_template_needs_a_vocabulary_that_has_one(trained_model_dir, mmlu_dir, tmp_path,
                                                        capsys):
  """The micro model's SentencePiece vocabulary has no chat template: off by default, and asking
  for it is an error that says why."""
  rc = cli.main(["eval", "--checkpoint", trained_model_dir, "--benchmark", "mmlu", "--mode",
                 "direct", "--data_dir", str(mmlu_dir), "--output_dir", str(tmp_path / "out"),
                 "--max_new_tokens", "2", "--chat_template"])
  assert rc == 2 and "chat template" in capsys.readouterr().err
  rc = cli.main(["eval", "--checkpoint", trained_model_dir, "--benchmark", "mmlu", "--mode",
                 "direct", "--data_dir", str(mmlu_dir), "--output_dir", str(tmp_path / "out"),
                 "--max_new_tokens", "2"])
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  assert rc == 0 and results["tasks"]["mmlu_direct"]["chat_template"] is False
  assert results["tasks"]["mmlu_direct"]["generation_stopped_early"] is True
