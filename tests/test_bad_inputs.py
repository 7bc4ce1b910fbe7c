"""Bad inputs, the way a user gives them: each ends with its exit status and a message that says
what to fix, prints no traceback (unless UL2FLAN_VERBOSE=1), and changes no existing checkpoint.

Most cases call the command line in this process (`ul2flan.commands.main.main([...])`, what
`python -m ul2flan ...` runs), with stderr captured at the file-descriptor level; a few run as
real subprocesses to check what a user's terminal shows (no native-library noise). One micro
model, trained once, is shared by every case; a case that must damage or diverge a checkpoint
works on its own copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest

from helpers import MICRO, REPO_ROOT, run_cli, train_micro_model
from ul2flan import logs
from ul2flan.commands import main as cli

TRAIN = ["train", "--gin_file=gin_configs/runs/pretrain.gin",
         *[f"--gin.DecoderConfig.{k}={v}" for k, v in MICRO.items()],
         "--gin.BATCH_SIZE=4", "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", "--gin.EVAL_PERIOD=0",
         "--gin.TrainConfig.progress=False", "--gin.make_optimizer.name='adamw'"]
PREFIX_LM = ["--gin.FEATURE_CONVERTER='prefix_lm'",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}"]
# What a user must never see on a normal run (see ul2flan.logs): native startup noise, orbax's
# read-only chatter, seqio's cache advice.
NOISE = re.compile(r"cuInit|cudart_stub|absl::InitializeLog|cpu_feature_guard|read only|"
                   r"uncached FunctionDataset|Traceback")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """The shared micro model (1 step) and a folder of bad data files."""
  model = train_micro_model(str(tmp_path_factory.mktemp("model")))
  data = tmp_path_factory.mktemp("data")
  (data / "a_file").write_text("not a directory\n")
  (data / "bad.jsonl").write_text('{"question": "q?", "answer": "a"}\n{not json\n')
  (data / "empty.gin").write_text("")
  (data / "broken.gin").write_text("TrainConfig.total_steps = 3\nDecoderConfig.d_model = = 4\n")
  mmlu = data / "eval" / "mmlu"
  for split in ("dev", "test"):
    (mmlu / split).mkdir(parents=True)
  (mmlu / "dev" / "algebra_dev.csv").write_text("What is 1+1?,1,2,3,4,B\n" * 5)  # 5 shots
  (mmlu / "test" / "algebra_test.csv").write_text("What is 2+2?,3,4,5,E\n")  # 5 columns
  for split in ("train", "validation"):
    (data / f"corpus_{split}.jsonl").write_text('{"text": "fine"}\n{broken json\n')
  (data / "bad_corpus_tasks.py").write_text(
      "from ul2flan.ul2 import tasks\n"
      f"tasks.register_ul2_task('bad_corpus', 'jsonl:{data}/corpus_{{split}}.jsonl')\n")
  return SimpleNamespace(model=model, data=str(data))


def _checkpoint_digest(model_dir: str) -> dict[str, str]:
  """sha256 of every file under checkpoints/ and of run.json: what a bad input must not touch."""
  digest = {}
  for root, _, files in os.walk(model_dir):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, model_dir)
      if rel.startswith("checkpoints") or rel == "run.json":
        with open(path, "rb") as f:
          digest[rel] = hashlib.sha256(f.read()).hexdigest()
  return digest


def _damage(step_dir: str) -> str:
  """Overwrites 4 KiB in the middle of the step's largest params file; returns its path."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "params"))
           for f in fs]
  victim = max(files, key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.seek(os.path.getsize(victim) // 3)
    f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  return victim


@dataclasses.dataclass(frozen=True)
class Case:
  id: str
  argv: Callable[[SimpleNamespace], list[str]]
  says: tuple[str, ...]  # regexes, all in stderr
  code: int = 2
  copy: Callable[[str], None] | None = None  # prepares `t.copy`, a copy of the shared model


def _train(*extra: str) -> Callable[[SimpleNamespace], list[str]]:
  return lambda t: [*TRAIN, f"--model_dir={t.tmp}/run", *extra]


def _resume(*extra: str, where: str = "model") -> Callable[[SimpleNamespace], list[str]]:
  return lambda t: [*TRAIN, f"--model_dir={getattr(t, where)}", *extra]


CASES = [
    # The command line itself.
    Case("no_model_dir", lambda t: TRAIN, ("required: --model_dir",)),
    Case("gin_flag_without_value", _train("--gin.TRAIN_STEPS"),
         (r"--gin.TRAIN_STEPS needs a value \(--gin.NAME=VALUE\)",)),
    Case("unknown_benchmark", lambda t: ["eval", "--checkpoint", t.model, "--benchmark", "mmlx"],
         ("invalid choice: 'mmlx'",)),
    Case("infer_zero_new_tokens",
         lambda t: ["infer", "--checkpoint", t.model, "--prompt", "x", "--max_new_tokens", "0"],
         ("--max_new_tokens must be >= 1",)),
    Case("infer_negative_temperature",
         lambda t: ["infer", "--checkpoint", t.model, "--prompt", "x", "--temperature", "-1"],
         ("temperature",)),
    # Gin: names that are not real, bindings nothing reads.
    Case("macro_typo", _train("--gin.TRAIN_STEP=4"),
         ("macro TRAIN_STEP is bound but nothing reads it", "did you mean TRAIN_STEPS")),
    Case("parameter_typo", _train("--gin.DecoderConfig.d_modle=32"),
         ("doesn't have a parameter named 'd_modle'; did you mean d_model",)),
    Case("configurable_typo", _train("--gin.DecoderConfg.d_model=32"),
         ("No configurable matching 'DecoderConfg'; did you mean DecoderConfig",)),
    Case("scope_typo", _train("--gin.trian/DatasetConfig.batch_size=4"),
         ("scope 'trian' is entered by no reference", "did you mean train")),
    Case("removed_macro", _train("--gin.CheckpointConfig.initial_checkpoint_path=%MODEL_DIR"),
         (r"macro %MODEL_DIR .* is bound nowhere", "--model_dir")),
    Case("unquoted_string", _train("--gin.MIXTURE_OR_TASK_NAME=demo_lm"),
         ("string needs quotes", r"--gin.NAME=\"'text'\"")),
    Case("unbalanced_brackets", _train("--gin.TASK_FEATURE_LENGTHS={'targets': 32"),
         ("unbalanced brackets or quotes",)),
    Case("pipeline_setting_given_to_train", _train("--gin.run_pipeline.compare=False"),
         ("run_pipeline.compare: read only by `ul2flan pipeline`",)),
    Case("stage_setting_given_to_pipeline",
         lambda t: ["pipeline", "--gin_file=gin_configs/demo_quick.gin",
                    f"--model_dir={t.tmp}/run", "--gin.TRAIN_STEPS=5"],
         ("macro TRAIN_STEPS is bound but nothing reads it", "run_pipeline.<stage>_bindings")),
    Case("typo_in_a_stage_binding",
         lambda t: ["pipeline", "--gin_file=tests/testdata/pipeline_micro.gin",
                    f"--model_dir={t.tmp}/run", "--gin.run_pipeline.base_bindings=['TRAIN_STEP = 3']"],
         ("macro TRAIN_STEP is bound but nothing reads it", "did you mean TRAIN_STEPS")),
    Case("gin_file_missing", _train("--gin_file=gin_configs/runs/pretrian.gin"),
         ("gin file 'gin_configs/runs/pretrian.gin' not found",)),
    Case("gin_file_syntax_error", lambda t: [*TRAIN, f"--gin_file={t.data}/broken.gin",
                                             f"--model_dir={t.tmp}/run"],
         (r"bad gin file .*broken\.gin",)),
    Case("required_macro_unset", lambda t: ["train", "--gin_file=gin_configs/runs/ul2r.gin",
                                            f"--model_dir={t.tmp}/run"],
         ("INITIAL_CHECKPOINT_PATH has no value", "pass --gin.INITIAL_CHECKPOINT_PATH=VALUE")),
    # Values, checked before anything is built or written.
    Case("zero_steps", _train("--gin.TRAIN_STEPS=0"),
         (r"TrainConfig.total_steps \(TRAIN_STEPS\) must be a positive integer, got 0",)),
    Case("negative_steps", _train("--gin.TRAIN_STEPS=-5"), ("must be a positive integer, got -5",)),
    Case("batch_size_text", _train("--gin.BATCH_SIZE='x'"),
         (r"batch_size \(BATCH_SIZE\) must be a positive integer, got 'x'",)),
    Case("batch_size_zero", _train("--gin.BATCH_SIZE=0"), (r"\(BATCH_SIZE\) .* got 0",)),
    Case("save_period_zero", _train("--gin.CheckpointConfig.save_period=0"),
         ("CheckpointConfig.save_period must be a positive integer, got 0",)),
    Case("log_period_zero", _train("--gin.TrainConfig.log_period=0"),
         ("TrainConfig.log_period must be a positive integer, got 0",)),
    Case("targets_length_zero", _train("--gin.TASK_FEATURE_LENGTHS={'targets': 0}"),
         (r"TASK_FEATURE_LENGTHS\)\['targets'\] must be a positive integer, got 0",)),
    Case("targets_length_missing", _train("--gin.TASK_FEATURE_LENGTHS={'inputs': 32}"),
         ("has no \\['targets'\\] length, which the 'lm' feature converter needs",)),
    Case("learning_rate_text", _train("--gin.LEARNING_RATE='fast'"),
         (r"base_learning_rate \(LEARNING_RATE\) must be a number >= 0.0, got 'fast'",)),
    Case("dropout_out_of_range", _train("--gin.DROPOUT_RATE=1.5"),
         (r"dropout_rate \(DROPOUT_RATE\) must be a number in \[0.0, 1.0\)",)),
    Case("unknown_start_mode", _train("--gin.INITIAL_CHECKPOINT_MODE='partial'"),
         ("must be one of \\['full', 'params'\\], got 'partial'",)),
    Case("mesh_does_not_fit", _train("--gin.MESH_SHAPE={'data': 3}", "--gin.TRAIN_STEPS=1"),
         ("does not divide the 4 available devices",)),
    # The model dir.
    Case("model_dir_is_a_file", lambda t: [*TRAIN, f"--model_dir={t.data}/a_file"],
         ("is a file, not a directory",)),
    Case("model_dir_under_a_file", lambda t: [*TRAIN, f"--model_dir={t.data}/a_file/run"],
         ("cannot create model dir .*: Not a directory",)),
    Case("model_dir_not_writable", lambda t: [*TRAIN, "--model_dir=/sys/ul2flan_run"],
         ("cannot create model dir .*/sys/ul2flan_run",)),
    # Tasks.
    Case("unknown_task", _train("--gin.MIXTURE_OR_TASK_NAME='demo_lmm'", "--gin.TRAIN_STEPS=1"),
         ("No seqio task or mixture named 'demo_lmm'", "Registered: .*demo_lm")),
    Case("unknown_task_module", _train("--gin.MIXTURE_OR_TASK_MODULE='ul2flan_taskz'"),
         ("'ul2flan_taskz' is not an importable module",)),
    Case("inspect_unknown_task", lambda t: ["inspect-task", "demo_ul3"],
         ("no task or mixture named 'demo_ul3'", "did you mean demo_ul2")),
    # Data files: raw instruction JSONL and Flan exports.
    Case("raw_instructions_no_files",
         _train("--gin.MIXTURE_OR_TASK_NAME=@raw_instruction_mixture()",
                "--gin.raw_instruction_mixture.train_file_pattern='/nonexistent/*.jsonl'",
                *PREFIX_LM),
         ("no files match '/nonexistent/\\*.jsonl'",)),
    Case("raw_instructions_malformed", lambda t: _train(
        "--gin.MIXTURE_OR_TASK_NAME=@raw_instruction_mixture()",
        f"--gin.raw_instruction_mixture.train_file_pattern='{t.data}/bad.jsonl'", *PREFIX_LM)(t),
         (r"bad\.jsonl:2: ", "on_malformed='skip'")),
    Case("flan_export_malformed", lambda t: _train(
        "--gin.MIXTURE_OR_TASK_NAME=@flan_export_mixture()",
        f"--gin.flan_export_mixture.file_pattern='{t.data}/bad.jsonl'", *PREFIX_LM)(t),
         (r"bad\.jsonl:1: malformed Flan export row: missing field 'inputs'",
          "on_malformed='skip'")),
    Case("flan_export_no_files",
         _train("--gin.MIXTURE_OR_TASK_NAME=@flan_export_mixture()",
                "--gin.flan_export_mixture.file_pattern='/nonexistent/*.parquet'", *PREFIX_LM),
         ("/nonexistent/\\*.parquet",)),
    # Checkpoints.
    Case("infer_missing_checkpoint",
         lambda t: ["infer", "--checkpoint", f"{t.tmp}/nothing", "--prompt", "x"],
         ("does not exist",)),
    Case("infer_dir_without_checkpoint",
         lambda t: ["infer", "--checkpoint", t.data, "--prompt", "x"],
         ("no finished checkpoint under",)),
    Case("infer_corrupt_run_json",
         lambda t: ["infer", "--checkpoint", t.copy, "--prompt", "x"],
         ("run.json is not a valid run description", "re-run training or restore the file"),
         copy=lambda d: open(os.path.join(d, "run.json"), "w").write("{not json")),
    Case("resume_with_another_architecture", _resume("--gin.DecoderConfig.d_model=128",
                                                     "--gin.TRAIN_STEPS=3"),
         (r"checkpoint \(64,\) vs model \(128,\)", "Check the model gin file")),
    Case("start_from_missing_checkpoint",
         _train("--gin.INITIAL_CHECKPOINT_PATH='/nonexistent/run'", "--gin.TRAIN_STEPS=1"),
         ("checkpoint path /nonexistent/run does not exist",)),
    Case("resume_damaged_checkpoint", _resume("--gin.TRAIN_STEPS=3", where="copy"),
         ("corrupt", "params", "fallback_to_intact=True"),
         copy=lambda d: _damage(os.path.join(d, "checkpoints", "1"))),
    Case("diverged", _resume("--gin.TRAIN_STEPS=4", "--gin.TrainConfig.log_period=1",
                             "--gin.make_schedule.kind='constant'", "--gin.LEARNING_RATE=1e6",
                             "--gin.make_schedule.warmup_steps=0", where="copy"),
         (r"^diverged: .*step \d+ is not finite", "LEARNING_RATE"), code=3,
         copy=lambda d: None),
    # Evaluation files.
    Case("eval_data_dir_missing",
         lambda t: ["eval", "--checkpoint", t.model, "--benchmark", "mmlu", "--data_dir",
                    f"{t.tmp}/nothing"],
         ("Evaluation data dir .* does not exist", "pass --data_dir")),
    Case("eval_malformed_mmlu_row",
         lambda t: ["eval", "--checkpoint", t.model, "--benchmark", "mmlu", "--mode", "direct",
                    "--data_dir", f"{t.data}/eval"],
         (r"algebra_test\.csv row 1: expected 6 columns",)),
]


def _run_in_process(argv: list[str], capfd) -> tuple[int, str]:
  try:
    code = cli.main(argv)
  except SystemExit as e:  # argparse
    code = e.code
  return code, capfd.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, env, tmp_path, capfd):
  t = SimpleNamespace(model=env.model, data=env.data, tmp=str(tmp_path), copy=None)
  if case.copy is not None:
    t.copy = str(tmp_path / "copy")
    shutil.copytree(env.model, t.copy)
    case.copy(t.copy)
  before = {d: _checkpoint_digest(d) for d in (t.model, t.copy) if d}
  capfd.readouterr()
  code, err = _run_in_process(case.argv(t), capfd)
  assert code == case.code, err
  for pattern in case.says:
    assert re.search(pattern, err, re.MULTILINE), f"{pattern!r} not in:\n{err}"
  assert "Traceback" not in err
  assert {d: _checkpoint_digest(d) for d in before} == before


@pytest.mark.parametrize("case_id", ["macro_typo", "zero_steps", "model_dir_is_a_file",
                                     "resume_with_another_architecture"])
def test_verbose_shows_the_traceback(case_id, env, tmp_path, monkeypatch):
  """UL2FLAN_VERBOSE=1: the same error propagates (Python prints its traceback)."""
  case = next(c for c in CASES if c.id == case_id)
  monkeypatch.setenv("UL2FLAN_VERBOSE", "1")
  assert logs.verbose()
  t = SimpleNamespace(model=env.model, data=env.data, tmp=str(tmp_path), copy=None)
  before = _checkpoint_digest(env.model)
  with pytest.raises(ValueError, match=case.says[0]):
    cli.main(case.argv(t))
  assert _checkpoint_digest(env.model) == before


def _no_noise(stderr: str) -> None:
  noisy = [line for line in stderr.splitlines() if NOISE.search(line)]
  assert not noisy, stderr


def test_a_users_terminal_shows_one_clear_error(env, tmp_path):
  """A real `python -m ul2flan` process: the message, and none of the libraries' startup noise."""
  before = _checkpoint_digest(env.model)
  r = run_cli([*TRAIN, f"--model_dir={env.model}", "--gin.TRAIN_STEP=4"])
  assert r.returncode == 2
  assert r.stderr.startswith("error: bad gin configuration"), r.stderr
  assert "did you mean TRAIN_STEPS?" in r.stderr
  _no_noise(r.stderr)
  # A damaged checkpoint through inference: orbax opens it read-only first (no chatter shown).
  copy = str(tmp_path / "copy")
  shutil.copytree(env.model, copy)
  step_dir = os.path.join(copy, "checkpoints", "1")
  victim = _damage(step_dir)
  damaged = _checkpoint_digest(copy)
  r = run_cli(["infer", "--checkpoint", copy, "--prompt", "x"])
  assert r.returncode == 2, r.stderr
  assert f"{os.path.relpath(victim, step_dir)}: contents differ" in r.stderr
  _no_noise(r.stderr)
  assert _checkpoint_digest(copy) == damaged and _checkpoint_digest(env.model) == before


def _run_bounded(args, env_extra, timeout=180):
  """run_cli, but a hang (the old tf.data generator-teardown bug) fails the test instead of CI."""
  try:
    return run_cli(args, env_extra, timeout=timeout)
  except subprocess.TimeoutExpired:
    pytest.fail(f"`ul2flan {args[0]}` on a malformed corpus still running after {timeout}s (hang)")


def test_malformed_jsonl_corpus_inspect(env):
  r = _run_bounded(["inspect-task", "bad_corpus", "--module", "bad_corpus_tasks",
                    "--num_examples", "2"], {"PYTHONPATH": env.data})
  assert r.returncode == 2, r.stderr
  assert "corpus_train.jsonl:2" in r.stderr and "Traceback" not in r.stderr, r.stderr


# `ul2flan train` on a malformed corpus, as a process: tests/test_pipeline_errors.py (it also
# checks that the process exits within seconds of the error).
