"""Per-denoiser metrics of UL2R training: each packed segment's group from its mode token, the
per-group sums of the train and eval steps (against NumPy over the preprocessor's own denoiser
labels), the training loss unchanged by them, and what the writers and the eval pass report."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from helpers import micro_config, quiet_train_config
from ul2flan import partitioning
from ul2flan import row_layout
from ul2flan.training import data
from ul2flan.training import metrics
from ul2flan.training import optim
from ul2flan.training import steps

LENGTHS = {"inputs": 128, "targets": 128}


def test_segment_groups_of_a_hand_packed_batch():
  # Group ids 1..3 for A=(7, 8), B=(7, 8, 9) (extends A), C=(5,); rows packed by hand.
  leading = [(7, 8), (7, 8, 9), (5,)]
  row0 = [7, 8, 9, 20, 21] + [7, 8, 22, 23] + [0, 0, 0]  # B, then A, then padding
  pos0 = [0, 1, 2, 3, 4] + [0, 1, 2, 3] + [0, 0, 0]
  want0 = [2] * 5 + [1] * 4 + [0] * 3
  row1 = [5, 30, 31] + [6, 7, 8, 9] + [5, 7, 8, 9, 40]  # C, none (7 8 9 is not at its start), C
  pos1 = [0, 1, 2] + [0, 1, 2, 3] + [0, 1, 2, 3, 4]
  want1 = [3] * 3 + [0] * 4 + [3] * 5
  got = steps.segment_group_ids(jnp.array([row0, row1]), jnp.array([pos0, pos1]), leading)
  np.testing.assert_array_equal(np.asarray(got), [want0, want1])


@pytest.fixture(scope="module")
def ul2r_rows():
  """Sixteen unpacked demo_ul2r rows (one example each) and each row's denoiser kind, read from
  the preprocessor's own `denoiser` feature (which the converter drops)."""
  task = seqio.get_mixture_or_task("demo_ul2r")
  ds = task.get_dataset(LENGTHS, split="validation", shuffle=False, seed=0).take(16)
  kinds = [ex["denoiser"].decode()[0] for ex in ds.as_numpy_iterator()]
  converter = row_layout.PrefixLMFeatureConverter(pack=False)
  batch = next(converter(ds, LENGTHS).batch(16).as_numpy_iterator())
  assert len(set(kinds)) == 3, kinds  # R, X and S all present
  return {k: np.asarray(v) for k, v in batch.items()}, kinds


def _builder(groups=None, microbatches=1):
  part = partitioning.Partitioner({"data": 1}, devices=jax.devices()[:1])
  sched = optim.make_schedule(kind="constant", base_learning_rate=1e-3, warmup_steps=0)
  return steps.StepBuilder(micro_config(), part, optim.make_optimizer(sched, name="adamw"), sched,
                           steps.StepSettings(num_microbatches=microbatches,
                                              segment_groups=groups))


def _groups():
  return data.denoiser_groups(data.DatasetConfig(mixture_or_task_name="demo_ul2r",
                                                 task_feature_lengths=LENGTHS))


def _step(builder, batch):
  params = builder.init_params(0)
  state = builder.make_state(0, params, builder.init_opt_state(params))
  with builder.partitioner.activation_context():
    new_state, out = jax.jit(builder.train_step)(state, batch)
  return jax.device_get(new_state.params), {k: np.asarray(v) for k, v in out.items()}


def test_groups_of_the_demo_ul2r_task_are_its_mode_tokens():
  from ul2flan import vocabularies
  vocab = vocabularies.get_vocabulary()
  assert _groups() == {"R": tuple(vocab.encode("[NLU]")), "X": tuple(vocab.encode("[NLG]")),
                       "S": tuple(vocab.encode("[S2S]"))}
  assert data.denoiser_groups(data.DatasetConfig(mixture_or_task_name="demo_lm",
                                                 task_feature_lengths={"targets": 64})) == {}


def test_train_step_per_denoiser_sums_match_numpy_and_leave_the_loss_alone(ul2r_rows):
  batch, kinds = ul2r_rows
  with_groups = _builder(_groups())
  params_g, out_g = _step(with_groups, batch)
  params_0, out_0 = _step(_builder(None), batch)
  # The loss, the metrics it had and the update are those of a step without groups.
  for k in out_0:
    np.testing.assert_array_equal(out_g[k], out_0[k], err_msg=k)
  jax.tree.map(np.testing.assert_array_equal, params_g, params_0)

  # Reference: NumPy log-softmax of the same logits, rows grouped by the example's denoiser.
  params = with_groups.init_params(0)
  logits = np.asarray(with_groups.model.apply(
      {"params": params}, batch["decoder_input_tokens"],
      decoder_causal_attention=batch["decoder_causal_attention"]), np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights
  correct = (logits.argmax(-1) == targets) * weights
  for kind in "RXS":
    rows = [i for i, k in enumerate(kinds) if k == kind]
    assert out_g[f"loss_weight/{kind}"] == weights[rows].sum()
    np.testing.assert_allclose(out_g[f"nll_sum/{kind}"], nll[rows].sum(), rtol=1e-5)
    assert out_g[f"correct_sum/{kind}"] == correct[rows].sum()
  # Every UL2R segment has a denoiser: the groups add up to the totals.
  total = out_g["loss_weight"]
  assert sum(out_g[f"loss_weight/{k}"] for k in "RXS") == total
  np.testing.assert_allclose(sum(out_g[f"nll_sum/{k}"] for k in "RXS"), out_g["loss"] * total,
                             rtol=1e-5)
  np.testing.assert_allclose(sum(out_g[f"correct_sum/{k}"] for k in "RXS"),
                             out_g["accuracy"] * total, rtol=1e-6)


def test_microbatches_sum_the_groups_like_one_batch(ul2r_rows):
  batch, _ = ul2r_rows
  _, one = _step(_builder(_groups()), batch)
  _, two = _step(_builder(_groups(), microbatches=2), batch)
  for kind in "RXS":
    assert two[f"loss_weight/{kind}"] == one[f"loss_weight/{kind}"]
    np.testing.assert_allclose(two[f"nll_sum/{kind}"], one[f"nll_sum/{kind}"], rtol=1e-5)


def test_eval_step_has_the_same_groups(ul2r_rows):
  batch, kinds = ul2r_rows
  builder = _builder(_groups())
  out = jax.jit(builder.eval_step)(builder.init_params(0), batch)
  assert sum(float(out[f"loss_weight/{k}"]) for k in "RXS") == float(out["weight"])
  rows = [i for i, k in enumerate(kinds) if k == "S"]
  assert float(out["loss_weight/S"]) == batch["decoder_loss_weights"][rows].sum()


def test_per_group_turns_window_sums_into_loss_and_accuracy():
  # Two steps' sums averaged over the window (as the metrics logger does): R has 10 + 30
  # tokens with nll 5 + 15 and 4 + 8 correct; X had no token in the window.
  window = {"loss": 2.0, "nll_sum/R": (5 + 15) / 2, "correct_sum/R": (4 + 8) / 2,
            "loss_weight/R": (10 + 30) / 2, "nll_sum/X": 0.0, "correct_sum/X": 0.0,
            "loss_weight/X": 0.0}
  assert metrics.per_group(window) == {"loss": 2.0, "loss/R": 0.5, "accuracy/R": 0.3,
                                       "loss_weight/R": 20.0}


def test_training_writes_per_denoiser_metrics_and_eval(tmp_path):
  """A UL2R run logs loss and accuracy per denoiser in metrics.jsonl, TensorBoard and the eval
  pass; a plain LM run logs none."""
  from ul2flan.training import settings, trainer
  cfg = data.DatasetConfig(mixture_or_task_name="demo_ul2r", task_feature_lengths=LENGTHS,
                           batch_size=4, feature_converter="prefix_lm", shuffle=False)
  eval_cfg = settings.EvalConfig(
      dataset_cfg=data.DatasetConfig(mixture_or_task_name="demo_ul2r",
                                     task_feature_lengths=LENGTHS, batch_size=4,
                                     feature_converter="prefix_lm", split="validation",
                                     shuffle=False, repeat=False),
      period=2, steps=2)
  result = trainer.train(str(tmp_path), train_dataset_cfg=cfg,
                         train_cfg=quiet_train_config(2, log_period=2),
                         model_config=micro_config(),
                         partitioner=partitioning.Partitioner({"data": 1},
                                                              devices=jax.devices()[:1]),
                         eval_cfg=eval_cfg)
  rows = metrics.read_metrics(tmp_path / "metrics.jsonl")
  eval_rows = metrics.read_metrics(tmp_path / "metrics_eval.jsonl")
  for row in (rows[-1], eval_rows[-1], result.last_eval):
    groups = [k for k in ("R", "X", "S") if f"loss/{k}" in row]
    assert groups and all(0 <= row[f"accuracy/{k}"] <= 1 for k in groups), row
    assert not any(k.startswith(("nll_sum/", "correct_sum/")) for k in row), row
  last_eval = eval_rows[-1]
  tokens = sum(last_eval[f"loss_weight/{k}"] for k in "RXS" if f"loss_weight/{k}" in last_eval)
  assert tokens == last_eval["tokens"]
  events = list((tmp_path / "tensorboard" / "train").iterdir())
  assert events and any(b"loss/" in p.read_bytes() for p in events)
