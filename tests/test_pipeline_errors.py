"""Bad data ends a run at once, naming the file and line, with a non-zero exit (no tf.data hang).

`ul2flan train` on a JSONL corpus with a malformed line in the middle used to print TensorFlow's
error and then never exit: the reader was a Python generator inside tf.data, and the iterator, kept
alive by the exception's traceback until the interpreter finalized, waited forever for a thread
that could no longer enter Python.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import tensorflow as tf

from helpers import MICRO_BINDINGS, REPO_ROOT, devices_env
from ul2flan.training import data
from ul2flan.ul2 import denoisers
from ul2flan.ul2 import tasks as ul2_tasks

BAD_LINE = 31


def _corpus(tmp_path):
  lines = [json.dumps({"text": f"document {i} about cities, jobs and people " * 3})
           for i in range(1, 61)]
  lines[BAD_LINE - 1] = '{"text": "a line cut off in the middle'
  for split in ("train", "validation"):
    (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
  (tmp_path / "bad_data_tasks.py").write_text(textwrap.dedent(f"""
      from ul2flan.ul2 import denoisers, tasks
      tasks.register_ul2_task("bad_data_ul2r", "jsonl:{tmp_path}/{{split}}.jsonl",
                              lambda: denoisers.ul2r_preset(64, 64))
  """))


def test_train_on_a_malformed_jsonl_line_exits_at_once_naming_file_and_line(tmp_path):
  _corpus(tmp_path)
  args = [sys.executable, "-m", "ul2flan", "train", "--gin_file=gin_configs/runs/ul2r.gin",
          f"--model_dir={tmp_path / 'run'}", "--gin.MIXTURE_OR_TASK_NAME='bad_data_ul2r'",
          "--gin.MIXTURE_OR_TASK_MODULE='bad_data_tasks'", "--gin.INITIAL_CHECKPOINT_PATH=None",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 64}", "--gin.BATCH_SIZE=2",
          "--gin.TRAIN_STEPS=50", "--gin.EVAL_PERIOD=0", "--gin.MESH_SHAPE={'data': 1}",
          "--gin.TrainConfig.progress=False",
          *[f"--gin.{b}" for b in MICRO_BINDINGS]]
  env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
         "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", **devices_env(1)}
  proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  lines, reported = [], []

  def read_stderr():
    for line in proc.stderr:
      lines.append(line)
      if line.startswith("error:") and not reported:
        reported.append(time.monotonic())

  reader = threading.Thread(target=read_stderr, daemon=True)
  reader.start()
  try:
    returncode = proc.wait(timeout=600)  # the start-up (imports, tracing) is slow on a busy box
  except subprocess.TimeoutExpired:
    proc.kill()
    pytest.fail("train did not exit:\n" + "".join(lines)[-3000:])
  exited = time.monotonic()
  reader.join(timeout=10)
  stderr = "".join(lines)
  assert returncode == 2, stderr[-3000:]
  assert reported, stderr[-3000:]
  assert exited - reported[0] < 10, f"exited {exited - reported[0]:.0f} s after the error"
  error = next(line for line in lines if line.startswith("error:"))
  assert f"{tmp_path / 'train.jsonl'}:{BAD_LINE}: not valid JSON" in error, error
  assert "'bad_data_ul2r'" in error and "Traceback" not in stderr


def test_a_pipeline_error_is_one_clear_line_and_frees_the_pipeline(tmp_path):
  _corpus(tmp_path)
  ul2_tasks.register_ul2_task("test_bad_jsonl_ul2r", f"jsonl:{tmp_path}/{{split}}.jsonl",
                              denoisers.ul2r_preset(64, 64), overwrite=True)
  it = data.HostIterator(data.DatasetConfig(
      mixture_or_task_name="test_bad_jsonl_ul2r", task_feature_lengths={"inputs": 64,
                                                                        "targets": 64},
      batch_size=2, shuffle=False, feature_converter="prefix_lm"), 0, 1)
  with pytest.raises(data.InputPipelineError) as err:
    next(it)
  assert str(err.value) == (
      f"the input pipeline of 'test_bad_jsonl_ul2r' (split 'train') failed at batch 1: "
      f"ValueError: {tmp_path / 'train.jsonl'}:{BAD_LINE}: not valid JSON (Unterminated string "
      f"starting at)")
  assert err.value.__context__ is None  # no traceback that keeps the tf.data iterator alive
  assert it._iters == []  # pylint: disable=protected-access


def test_pipeline_error_message_keeps_the_raised_error_only():
  noisy = tf.errors.InvalidArgumentError(
      None, None, "{{function_node __wrapped__IteratorGetNext}} Error in user-defined function "
      "passed to MapDataset:49 transformation with iterator: Iterator::Root::Map: ValueError: "
      "/d/x.jsonl:7: not valid JSON (Expecting value)\nTraceback (most recent call last):\n  ...")
  assert data.pipeline_error_message(noisy) == (
      "ValueError: /d/x.jsonl:7: not valid JSON (Expecting value)")
  plain = tf.errors.DataLossError(None, None, "corrupted record at 12 [Op:IteratorGetNext]")
  assert data.pipeline_error_message(plain) == "corrupted record at 12"
