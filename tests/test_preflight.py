"""`ul2flan pipeline` checks every stage and evaluator before its first step: a problem that would
stop a later stage stops the run at once, naming the stage and the fix, with nothing trained."""

import json

import pytest

from ul2flan import config as config_lib
from ul2flan.commands import configurables  # noqa: F401  (every configurable, the evaluators)
from ul2flan.pipeline import preflight, runner

MICRO = "tests/testdata/pipeline_micro.gin"


def _run(model_dir, *bindings):
  config_lib.parse_gin([MICRO], list(bindings), command="pipeline")
  try:
    return runner.run_pipeline(str(model_dir))
  finally:
    config_lib.parse_gin([])


def _corpus(path, n=300):
  path.write_text("".join(json.dumps({"text": f"Document {i} is about the city of Lyon and its "
                                              f"people, number {i * 7}."}) + "\n"
                          for i in range(n)))
  return path


def _ul2r_on(corpus_spec, *extra):
  return repr(["TRAIN_STEPS = 2", "BATCH_SIZE = 8", "EVAL_PERIOD = 2",
               "MIXTURE_OR_TASK_NAME = @ul2_corpus_task()",
               f"ul2_corpus_task.corpus = '{corpus_spec}'", "ul2_corpus_task.name = 'pf_corpus'",
               "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 64}", *extra])


def _nothing_trained(model_dir):
  return not any(model_dir.glob("*/checkpoints/*"))


def test_a_corpus_glob_that_matches_nothing_stops_the_run_before_the_base_trains(tmp_path):
  with pytest.raises(preflight.PreflightError) as err:
    _run(tmp_path / "run", f"run_pipeline.ul2r_bindings = {_ul2r_on(f'jsonl:{tmp_path}/no-*.jsonl')}")
  message = str(err.value)
  assert message.startswith("stage ul2r would fail (nothing was trained)")
  assert "no file matches" in message and f"{tmp_path}/no-*.jsonl" in message
  assert _nothing_trained(tmp_path / "run")


def test_a_missing_validation_split_is_named_with_the_fix_before_any_step(tmp_path):
  corpus = _corpus(tmp_path / "corpus.jsonl")
  with pytest.raises(preflight.PreflightError) as err:
    _run(tmp_path / "run", "run_pipeline.ul2r_bindings = " + _ul2r_on(
        f"jsonl:{corpus}", "jsonl_source.holdout_every = None"))
  message = str(err.value)
  assert "stage ul2r" in message and "has no 'validation' split" in message
  assert "EVAL_PERIOD = 0" in message  # one of the fixes it names
  assert _nothing_trained(tmp_path / "run")


def test_an_evaluator_without_its_data_stops_the_run_before_training(tmp_path):
  with pytest.raises(preflight.PreflightError, match=r"evaluator 'benchmarks' would fail: "
                     r"evaluation_settings.benchmarks_data_dir is not set"):
    _run(tmp_path / "run", "evaluation_settings.evaluators = ['demo', 'benchmarks']")
  assert _nothing_trained(tmp_path / "run")
