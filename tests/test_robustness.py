"""Divergence never reaches a checkpoint; damaged checkpoints are named, never restored silently."""

import json
import os
import re
import shutil

import gin
import jax
import numpy as np
import pytest

from ul2flan import checkpoints, partitioning
from ul2flan.training import guards, optim, steps, trainer
from ul2flan.training.checkpointer import Checkpointer
from ul2flan.training.evaluator import TextLossRose
from ul2flan.training.settings import EvalConfig
from ul2flan.training.metrics import read_metrics
from helpers import REPO_ROOT, lm_dataset, micro_config, quiet_train_config, read_params

GOOD_STEPS = 4


def _train(model_dir, total_steps, log_period=1, eval_cfg=None, **kw):
  return trainer.train(
      str(model_dir), train_dataset_cfg=lm_dataset(batch_size=4, length=32),
      train_cfg=quiet_train_config(total_steps, log_period=log_period, **kw),
      model_config=micro_config(),
      partitioner=partitioning.Partitioner({"data": 1}, devices=jax.devices()[:1]),
      checkpoint_cfg=checkpoints.CheckpointConfig(save_period=2, keep=3, async_save=False),
      eval_cfg=eval_cfg)


def _saved(model_dir, step):
  """The params item of a step, read straight through orbax (no checks of ours)."""
  return read_params(os.path.join(model_dir, "checkpoints", str(step)))


def _steps_on_disk(model_dir):
  return sorted(d for d in os.listdir(os.path.join(model_dir, "checkpoints")))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
  """A finite run with checkpoints at steps 2 and 4."""
  d = tmp_path_factory.mktemp("good")
  with gin.unlock_config():
    gin.bind_parameter("make_optimizer.name", "adamw")
  try:
    _train(d, GOOD_STEPS)
  finally:
    with gin.unlock_config():
      gin.clear_config()
  assert _steps_on_disk(d) == ["2", "4"]
  return str(d)


@pytest.fixture
def huge_learning_rate():
  with gin.unlock_config():
    gin.bind_parameter("make_schedule.kind", "constant")
    gin.bind_parameter("make_schedule.base_learning_rate", 1e6)
    gin.bind_parameter("make_schedule.warmup_steps", 0)
    gin.bind_parameter("make_optimizer.name", "adamw")  # NaN on the step after the jump
  yield
  with gin.unlock_config():
    gin.clear_config()


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_divergence_stops_and_keeps_the_good_checkpoints(tmp_path, good_run, huge_learning_rate):
  d = _copy(good_run, tmp_path / "run")
  before = _saved(d, GOOD_STEPS)
  with pytest.raises(guards.Diverged) as err:
    _train(d, 12, log_period=5)  # the flags are checked before every save, not only at log time
  message = str(err.value)
  bad_step = int(re.search(r"step (\d+) is not finite", message).group(1))
  assert bad_step > GOOD_STEPS
  # Nothing non-finite was saved and `keep` rotated no good step out.
  saved = sorted(int(s) for s in _steps_on_disk(d))
  assert saved[:2] == [2, 4] and all(s < bad_step for s in saved)
  last_good = max(saved)
  assert f"{d}/checkpoints/{last_good}" in message and "LEARNING_RATE" in message
  restored = _saved(d, last_good)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored))
  if last_good == GOOD_STEPS:
    jax.tree.map(np.testing.assert_array_equal, restored, before)


def _text_guard(max_rise):
  return EvalConfig(period=2, text_dataset_cfg=lm_dataset(
      batch_size=4, length=32, split="validation", shuffle=False, repeat=False),
      text_steps=2, text_max_rise=max_rise)


@pytest.fixture
def large_learning_rate():
  """Large enough to wreck the model's text loss in a few steps, not to make it non-finite."""
  with gin.unlock_config():
    gin.bind_parameter("make_schedule.kind", "constant")
    gin.bind_parameter("make_schedule.base_learning_rate", 3.0)
    gin.bind_parameter("make_schedule.warmup_steps", 0)
    gin.bind_parameter("make_optimizer.name", "adamw")
  yield
  with gin.unlock_config():
    gin.clear_config()


def test_text_guard_stops_a_stage_that_makes_text_worse(tmp_path, good_run, large_learning_rate):
  d = _copy(good_run, tmp_path / "run")
  with pytest.raises(TextLossRose) as err:
    _train(d, 20, eval_cfg=_text_guard(0.1))
  assert err.value.exit_code == guards.EXIT_TEXT_LOSS_ROSE == 4
  start = json.loads((tmp_path / "run" / "text_guard.json").read_text())
  assert start["step"] == GOOD_STEPS  # the first step this stage trained from
  rows = [r for r in read_metrics(os.path.join(d, "metrics_eval.jsonl")) if "text_loss" in r]
  assert rows[0]["step"] == GOOD_STEPS and rows[0]["text_loss"] == pytest.approx(
      start["text_loss"])
  stopped = rows[-1]
  assert stopped["text_loss"] > 1.1 * start["text_loss"]
  assert all(r["text_loss"] <= 1.1 * start["text_loss"] for r in rows[:-1])
  message = str(err.value)
  assert (f"rose from {start['text_loss']:.4f} (step {GOOD_STEPS}) to "
          f"{stopped['text_loss']:.4f} nats/token at step {stopped['step']}") in message
  assert "LEARNING_RATE=0.3 (now 3)" in message and f"{d}/checkpoints/" in message
  assert {"2", "4"} <= set(_steps_on_disk(d))  # nothing was deleted


def test_text_guard_reports_only_without_a_limit(tmp_path, good_run, large_learning_rate):
  d = _copy(good_run, tmp_path / "run")
  result = _train(d, 8, eval_cfg=_text_guard(None))
  assert result.step == 8 and "text_loss" in result.last_eval


def test_skip_policy_drops_updates_and_counts_them(tmp_path, good_run, huge_learning_rate):
  d = _copy(good_run, tmp_path / "run")
  with pytest.raises(guards.Diverged, match="4 steps in a row"):
    _train(d, 30, on_nonfinite="skip", max_consecutive_skips=4)
  rows = {r["step"]: r for r in read_metrics(os.path.join(d, "metrics.jsonl"))}
  skipped = [s for s, r in rows.items() if r["nonfinite_steps"] == 1.0]
  assert len(skipped) == 4 and skipped == list(range(skipped[0], skipped[0] + 4))
  assert all(np.isfinite(rows[s]["loss"]) for s in rows if s < skipped[0])
  # A skipped step leaves params exactly as they were: checkpoints on either side of a run of
  # skipped steps hold the same arrays.
  saved = sorted(int(s) for s in _steps_on_disk(d))
  inside = [s for s in saved if s >= skipped[0] - 1]
  for s in saved:
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(_saved(d, s)))
  assert len(inside) >= 2
  jax.tree.map(np.testing.assert_array_equal, _saved(d, inside[0]), _saved(d, inside[-1]))


def _builder():
  part = partitioning.Partitioner({"data": 1}, devices=jax.devices()[:1])
  sched = optim.make_schedule(total_steps=10)
  return steps.StepBuilder(micro_config(), part, optim.make_optimizer(sched, name="adamw"), sched,
                           steps.StepSettings())


def _resume(model_dir, **cfg):
  checkpointer = Checkpointer(model_dir, checkpoints.CheckpointConfig(**cfg))
  try:
    return checkpointer.restore_or_init(_builder(), 0)
  finally:
    checkpointer.close()


def _largest_params_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "params"))
           for f in fs]
  return max(files, key=os.path.getsize)


def _flip_4k(path, seed=0):
  rng = np.random.default_rng(seed)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 3)
    f.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_latest_step_is_named_then_fallback_on_request(tmp_path, good_run, damage):
  d = _copy(good_run, tmp_path / "run")
  step_dir = os.path.join(d, "checkpoints", str(GOOD_STEPS))
  victim = _largest_params_file(step_dir)
  rel = os.path.relpath(victim, step_dir)
  if damage == "flip":
    _flip_4k(victim)
  elif damage == "truncate":
    os.truncate(victim, os.path.getsize(victim) // 2)
  else:
    os.remove(victim)
  expected = {"flip": "corrupt", "truncate": "truncated", "delete": "missing"}[damage]
  with pytest.raises(checkpoints.CheckpointDamagedError) as err:
    _resume(d)
  message = str(err.value)
  assert step_dir in message and f"{rel}: " in message and expected in message
  assert "fallback_to_intact=True" in message
  assert os.path.isdir(step_dir)  # untouched

  state, position, how = _resume(d, fallback_to_intact=True)
  assert how == "resumed from step 2" and int(state.step) == 2
  assert position["batches_consumed"] == 2
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), _saved(d, 2))
  # The damaged step is kept aside, not deleted.
  assert not os.path.exists(step_dir) and os.path.isdir(step_dir + checkpoints.DAMAGED_SUFFIX)


def test_unverifiable_damage_is_still_reported_by_step(tmp_path, good_run):
  """Without checksums.json (older checkpoints), orbax's own failure is named, not dumped."""
  d = _copy(good_run, tmp_path / "run")
  step_dir = os.path.join(d, "checkpoints", str(GOOD_STEPS))
  os.remove(os.path.join(step_dir, "checksums.json"))
  for root, _, files in os.walk(os.path.join(step_dir, "params")):
    for f in files:
      if "ocdbt" in root or f.endswith("manifest.ocdbt"):
        os.truncate(os.path.join(root, f), 10)
  with pytest.raises(checkpoints.CheckpointDamagedError, match=re.escape(step_dir)):
    _resume(d)


def test_checksums_cover_every_file_of_the_step(good_run):
  import hashlib
  step_dir = os.path.join(good_run, "checkpoints", str(GOOD_STEPS))
  table = json.load(open(os.path.join(step_dir, "checksums.json")))["files"]
  bookkeeping = {"checksums.json", "_CHECKPOINT_METADATA", "commit_success.txt"}  # orbax rewrites
  on_disk = {os.path.relpath(os.path.join(r, f), step_dir) for r, _, fs in os.walk(step_dir)
             for f in fs if f not in bookkeeping}
  assert set(table) == on_disk and any(k.startswith("params/") for k in table)
  for rel, entry in table.items():
    data = open(os.path.join(step_dir, rel), "rb").read()
    assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_nothing_unpickles_or_executes_loaded_data():
  """Checkpoints (orbax/tensorstore), configs (gin, JSON) and data load without pickle or eval."""
  risky = re.compile(r"\bpickle\b|allow_pickle\s*=\s*True|\beval\(|\bexec\(|torch\.load|"
                     r"yaml\.load\(|marshal\.loads|dill\b|cloudpickle")
  hits = []
  for root in ("ul2flan", "tasks"):
    for r, _, files in os.walk(os.path.join(REPO_ROOT, root)):
      for f in files:
        if f.endswith(".py"):
          path = os.path.join(r, f)
          for i, line in enumerate(open(path, encoding="utf-8"), 1):
            if risky.search(line.split("#")[0]):
              hits.append(f"{os.path.relpath(path, REPO_ROOT)}:{i}: {line.strip()}")
  assert not hits, "\n".join(hits)


def test_an_empty_eval_split_is_said_once_not_scored_as_zero_silently(monkeypatch, caplog):
  """A held-out slice of a small file can be empty: the pass scores no token and writes zeros;
  the user is told once (not every period) what it means and what to fix."""
  from ul2flan.training import evaluator, hooks  # pylint: disable=g-import-not-at-top

  class Writer:
    rows = []
    write_scalars = lambda self, step, row: self.rows.append((step, row))
    flush = lambda self: None

  monkeypatch.setattr(evaluator, "evaluate", lambda *a: {"loss": 0.0, "accuracy": 0.0,
                                                         "tokens": 0.0})
  cfg = lm_dataset(split="validation")
  hook = evaluator.Evaluator(None, cfg, 2, Writer(), hooks.Stopwatch())
  with caplog.at_level("WARNING", logger=evaluator.__name__):
    for step in (2, 4):
      hook(hooks.StepInfo(step, steps.TrainState(step=step, params={}, opt_state=None), {},
                          last=step == 4))
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert len(warnings) == 1 and "'demo_lm' split 'validation' scored no tokens" in warnings[0]
  assert [step for step, _ in Writer.rows] == [2, 4]  # still written: the rows say 0 tokens
