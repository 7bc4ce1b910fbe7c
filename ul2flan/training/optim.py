"""Optimizers and learning-rate schedules (optax), configured through gin."""

from __future__ import annotations

import gin
import jax.numpy as jnp
import optax

from ul2flan.checks import check_int, check_number


@gin.configurable(denylist=["total_steps"])  # train() passes its own TRAIN_STEPS
def make_schedule(kind: str = "rsqrt", base_learning_rate: float = 1e-2, warmup_steps: int = 100,
                  total_steps: int | None = None, end_learning_rate: float = 0.0,
                  decay_steps: int | None = None, linear_warmup: bool = False,
                  warmup_fraction: float | None = None) -> optax.Schedule:
  """"rsqrt" (PaLM), "cosine" (U-PaLM's UL2R stage), or "constant" (Flan).

  `warmup_fraction` (of the run's total steps, rounded up) replaces `warmup_steps` when set, so a
  preset's warm-up scales with TRAIN_STEPS (the Hugging Face pipelines warm up over 5%).

  `base_learning_rate` is always the peak. "rsqrt" holds it for `warmup_steps` (optionally ramping
  up linearly) and then decays as 1/sqrt(step); "constant" may ramp up linearly; "cosine" warms up
  linearly to `base_learning_rate` then decays to `end_learning_rate` over `decay_steps`
  (default: the run's total steps).
  """
  check_number(base_learning_rate, "make_schedule.base_learning_rate (LEARNING_RATE)", 0.0)
  if warmup_fraction is not None:
    check_number(warmup_fraction, "make_schedule.warmup_fraction", 0.0, 1.0)
    warmup_steps = int(-(-warmup_fraction * (total_steps or 0) // 1))
  check_int(warmup_steps, "make_schedule.warmup_steps", minimum=0)
  if kind == "constant":
    if warmup_steps:
      return lambda step: base_learning_rate * jnp.minimum(1.0, (step + 1) / warmup_steps)
    return optax.constant_schedule(base_learning_rate)
  if kind == "rsqrt":
    # PaLM: constant `base` for the first `warmup_steps`, then base * sqrt(warmup / step).
    def rsqrt(step):
      step = jnp.asarray(step, jnp.float32) + 1.0
      warm = float(max(warmup_steps, 1))
      ramp = jnp.minimum(1.0, step / warm) if linear_warmup else 1.0
      return base_learning_rate * ramp * jnp.sqrt(warm / jnp.maximum(step, warm))
    return rsqrt
  if kind == "cosine":
    steps = decay_steps or total_steps
    if not steps:
      raise ValueError("cosine schedule needs decay_steps or total_steps")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else base_learning_rate, peak_value=base_learning_rate,
        warmup_steps=warmup_steps, decay_steps=max(steps, warmup_steps + 1),
        end_value=end_learning_rate)
  raise ValueError(f"unknown schedule kind {kind!r}; use 'rsqrt', 'cosine' or 'constant'")


@gin.configurable
def make_optimizer(schedule: optax.Schedule, name: str = "adafactor", *,
                   factored: bool = False, momentum: float | None = 0.9,
                   decay_rate: float = 0.8, clipping_threshold: float | None = 1.0,
                   multiply_by_parameter_scale: bool = True,
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.95,
                   grad_clip_norm: float | None = None) -> optax.GradientTransformation:
  """Adafactor as PaLM used it (unfactored second moment, parameter scaling, beta1 0.9,
  decay 1 - k^-0.8, update clipping 1.0), or AdamW. Flan's t5x runs use the factored
  Adafactor without momentum: set `factored=True, momentum=None`.
  """
  if name == "adafactor":
    tx = optax.adafactor(
        learning_rate=schedule, factored=factored, momentum=momentum, decay_rate=decay_rate,
        clipping_threshold=clipping_threshold,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        weight_decay_rate=weight_decay or None)
  elif name == "adamw":
    tx = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
  else:
    raise ValueError(f"unknown optimizer {name!r}; use 'adafactor' or 'adamw'")
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx
