"""Trainer modes: continuing another run ("full"), rematerialisation, factored Adafactor sharding.

References: an uninterrupted run of the same length; the same model without remat; the same
optimizer on one device (and the sharding a factored statistic must have, derived here by hand).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from ul2flan import checkpoints, config, partitioning
from ul2flan.commands import configurables  # noqa: F401  (gin knows make_optimizer)
from ul2flan.model import decoder as decoder_lib
from ul2flan.model import losses
from ul2flan.training import steps, trainer
from ul2flan.training.metrics import read_metrics
from helpers import lm_dataset, micro_config, quiet_train_config, read_last_params

STEPS = 4


def _train(model_dir, steps_total, devices=None, mesh=None, ckpt=None, config=None):
  part = partitioning.Partitioner(mesh or {"data": 1}, devices=devices or jax.devices()[:1])
  return trainer.train(
      str(model_dir), train_dataset_cfg=lm_dataset(), train_cfg=quiet_train_config(steps_total),
      model_config=config or micro_config(), partitioner=part,
      checkpoint_cfg=ckpt or checkpoints.CheckpointConfig(save_period=1000, async_save=False))


def _losses(model_dir):
  return [m["loss"] for m in read_metrics(os.path.join(model_dir, "metrics.jsonl"))]


def test_full_mode_continues_another_run_exactly(tmp_path):
  """INITIAL_CHECKPOINT_MODE="full" from a 4-step run, trained to 8, equals 8 steps straight:
  same step count, optimizer state and data position carried over."""
  _train(tmp_path / "src", STEPS)
  _train(tmp_path / "straight", 2 * STEPS)
  _train(tmp_path / "continued", 2 * STEPS, ckpt=checkpoints.CheckpointConfig(
      save_period=1000, async_save=False, initial_checkpoint_path=str(tmp_path / "src"),
      initial_checkpoint_mode="full"))
  np.testing.assert_allclose(_losses(tmp_path / "continued"),
                             _losses(tmp_path / "straight")[STEPS:], rtol=1e-6)
  (s1, p1), (s2, p2) = read_last_params(tmp_path / "straight"), read_last_params(tmp_path / "continued")
  assert s1 == s2 == 2 * STEPS
  jax.tree.map(np.testing.assert_array_equal, p1, p2)


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("policy", ["full", "dots", "dots_with_no_batch_dims"])
def test_remat_policy_keeps_loss_and_gradients(policy, scan_layers):
  reference_cfg = micro_config(scan_layers=scan_layers)
  remat_cfg = micro_config(scan_layers=scan_layers, remat_policy=policy)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(2, 700, size=(2, 24)), jnp.int32)
  targets = jnp.roll(tokens, -1, axis=1)
  params = decoder_lib.Decoder(reference_cfg).init(jax.random.key(0), tokens)["params"]

  def loss(cfg):
    def fn(p):
      logits = decoder_lib.Decoder(cfg).apply({"params": p}, tokens)
      nll, _, _ = losses.cross_entropy_with_z_loss(logits, targets, jnp.ones_like(tokens), 0.0)
      return nll
    return jax.jit(jax.value_and_grad(fn))(params)

  (ref_loss, ref_grads), (got_loss, got_grads) = loss(reference_cfg), loss(remat_cfg)
  np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               got_grads, ref_grads)


def test_factored_adafactor_statistics_follow_the_param_sharding():
  """Factored second moments keep the parameter's mesh axes on the dimension they keep."""
  cfg = micro_config(d_model=128, mlp_dim=256, head_dim=32)
  part = partitioning.Partitioner({"fsdp": 2, "model": 2})
  tx = optax.adafactor(1e-3, factored=True, momentum=None)
  builder = steps.StepBuilder(cfg, part, tx, optax.constant_schedule(1e-3),
                              steps.StepSettings(z_loss=0.0))
  shardings, shapes = builder.opt_shardings[0], builder.abstract_opt_state[0]
  for name in ("wi_gate", "wi_up", "wo"):  # (embed, mlp), (embed, mlp), (mlp, embed)
    param = builder.abstract_params["layer_0"]["mlp"][name]
    spec = dict(zip(param.shape, param.sharding.spec))  # 128 -> embed's axis, 256 -> mlp's
    assert set(spec.values()) == {"fsdp", "model"}
    for field in ("v_row", "v_col"):  # each keeps one of the two dimensions
      (kept,) = getattr(shapes, field)["layer_0"]["mlp"][name].shape
      assert getattr(shardings, field)["layer_0"]["mlp"][name].spec == P(spec[kept])


def test_factored_adafactor_on_fsdp_and_model_mesh_matches_one_device(tmp_path):
  cfg = micro_config(d_model=128, mlp_dim=256, head_dim=32)
  config.parse_gin([], ["make_optimizer.factored = True", "make_optimizer.momentum = None"])
  try:
    _train(tmp_path / "one", STEPS, config=cfg)
    _train(tmp_path / "mesh", STEPS, config=cfg, devices=jax.devices()[:4],
           mesh={"fsdp": 2, "model": 2})
  finally:
    config.parse_gin([])
  np.testing.assert_allclose(_losses(tmp_path / "mesh"), _losses(tmp_path / "one"), rtol=2e-4)
