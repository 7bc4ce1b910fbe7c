"""Gin model configs against the published parameter counts (PaLM paper, Table 1)."""

import os

import gin
import pytest

from ul2flan.model import config as model_config
from ul2flan.model import decoder as model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Published totals in billions (Chowdhery et al. 2022, Table 1), to the precision printed there.
PUBLISHED = {"palm_8b": 8.63, "palm_62b": 62.50, "palm_540b": 540.35, "palm_1b": 1.01}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_count_matches_published(name):
  gin.clear_config()
  gin.parse_config_file(os.path.join(REPO, "gin_configs", "models", f"{name}.gin"))
  cfg = model_config.DecoderConfig()
  gin.clear_config()
  # Table 1 prints two decimals; allow that rounding (and 1e-4 relative for 540B).
  tol = max(0.005, 1e-4 * PUBLISHED[name])
  assert cfg.num_params() / 1e9 == pytest.approx(PUBLISHED[name], abs=tol)


def test_tiny_config_builds_model_of_analytic_size():
  import jax, jax.numpy as jnp, flax.linen as nn
  gin.clear_config()
  gin.parse_config_file(os.path.join(REPO, "gin_configs", "models", "tiny.gin"))
  cfg = model_config.DecoderConfig()
  gin.clear_config()
  shapes = jax.eval_shape(lambda: nn.unbox(model.Decoder(cfg).init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32))))
  assert model.count_params(shapes["params"]) == cfg.num_params()
  assert cfg.num_params() < 5e6
