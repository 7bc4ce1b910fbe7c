"""The training loss: summed cross-entropy with PaLM's z-loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy_with_z_loss(logits: Array, targets: Array, weights: Array,
                              z_loss: float) -> tuple[Array, Array, Array]:
  """Summed (not averaged) weighted cross-entropy, z-loss and correct-token count.

  Sums let gradient accumulation and cross-device reduction divide once by the total weight,
  so k microbatches equal one big batch exactly.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  weights = weights.astype(jnp.float32)
  z = z_loss * jnp.square(log_z)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(z * weights), jnp.sum(correct * weights)
