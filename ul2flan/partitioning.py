"""Device mesh and the one table that maps logical axis names to mesh axes.

Models name the logical axes of every parameter and key activation ("batch", "embed", "mlp", ...).
`AXIS_RULES` maps each name to mesh axes of a `data` x `fsdp` x `model` mesh. As in flax's rule
semantics, a name may have several candidate rules; the first whose mesh axes are still unused in
that array (and divide its size) wins, otherwise the dimension is replicated. That is how the same
"embed" name shards parameters over `fsdp` while activations, whose batch already uses `fsdp`,
keep `embed` whole.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

logger = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "model")

# (logical name, mesh axis or tuple of mesh axes or None). Order matters: first usable rule wins.
AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("norm", None),
)

_ACTIVE_RULES: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("rules", default=None)


@contextlib.contextmanager
def axis_rules(rules: Sequence[tuple[str, Any]]):
  token = _ACTIVE_RULES.set(tuple(rules))
  try:
    yield
  finally:
    _ACTIVE_RULES.reset(token)


def _as_tuple(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None,
                    rules: Sequence[tuple[str, Any]], mesh_sizes: Mapping[str, int]) -> P:
  """Maps logical axis names to a PartitionSpec, skipping used or non-dividing mesh axes."""
  used: set[str] = set()
  out = []
  for dim, name in enumerate(names):
    choice = None
    for rule_name, axes in rules:
      if rule_name != name:
        continue
      axes = tuple(a for a in _as_tuple(axes) if mesh_sizes.get(a, 1) > 1)
      if not axes:
        break  # the rule says replicate (or all its axes are trivial)
      if used.intersection(axes):
        continue
      if shape is not None and shape[dim] % math.prod(mesh_sizes[a] for a in axes):
        continue
      choice = axes
      break
    if choice:
      used.update(choice)
      out.append(choice[0] if len(choice) == 1 else choice)
    else:
      out.append(None)
  return P(*out)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation, a no-op outside a mesh / rules context."""
  rules = _ACTIVE_RULES.get()
  mesh = jax.sharding.get_abstract_mesh()
  if rules is None or mesh.empty:
    return x
  spec = logical_to_spec(names, x.shape, rules, dict(mesh.shape))
  return jax.lax.with_sharding_constraint(x, spec)


def mesh_axis_size(axis: str) -> int:
  """Size of a mesh axis in the current mesh context (1 outside a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  return 1 if mesh.empty else dict(mesh.shape).get(axis, 1)


def resolve_mesh_shape(mesh_shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  unknown = set(mesh_shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"MESH_SHAPE has unknown axes {sorted(unknown)}; use {MESH_AXES}")
  sizes = [int(mesh_shape.get(a, 1)) for a in MESH_AXES]
  fill = [i for i, s in enumerate(sizes) if s == -1]
  if len(fill) > 1:
    raise ValueError(f"MESH_SHAPE {dict(mesh_shape)}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
    raise ValueError(
        f"MESH_SHAPE {dict(mesh_shape)} does not divide the {num_devices} available devices; "
        f"choose axis sizes whose product divides {num_devices} (use -1 for one axis to fill).")
  if fill:
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"MESH_SHAPE {dict(mesh_shape)} uses {math.prod(sizes)} devices but {num_devices} are "
        f"available; make the product equal {num_devices} or set one axis to -1.")
  return tuple(sizes)


@gin.configurable
class Partitioner:
  """Builds the mesh and turns logical-axis trees into NamedShardings."""

  def __init__(self, mesh_shape: Mapping[str, int] | None = None,
               axis_rules: Sequence[tuple[str, Any]] = AXIS_RULES,
               devices: Sequence[jax.Device] | None = None):
    devices = list(devices) if devices is not None else jax.devices()
    mesh_shape = dict(mesh_shape) if mesh_shape is not None else {"data": -1}
    sizes = resolve_mesh_shape(mesh_shape, len(devices))
    self.mesh = jax.make_mesh(sizes, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                              devices=devices)
    self.rules = tuple((name, axes) for name, axes in axis_rules)
    logger.info("mesh %s over %d devices", dict(self.mesh.shape), len(devices))

  @property
  def mesh_sizes(self) -> dict[str, int]:
    return dict(self.mesh.shape)

  @property
  def data_parallel_size(self) -> int:
    return self.mesh_sizes["data"] * self.mesh_sizes["fsdp"]

  def spec(self, names: Sequence[str | None], shape: Sequence[int] | None = None) -> P:
    return logical_to_spec(names, shape, self.rules, self.mesh_sizes)

  def sharding(self, names: Sequence[str | None], shape: Sequence[int] | None = None):
    return NamedSharding(self.mesh, self.spec(names, shape))

  def batch_sharding(self, ndim: int = 2) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(("batch",) + (None,) * (ndim - 1)))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def param_shardings(self, boxed_abstract_params) -> Any:
    """NamedShardings for a tree of flax LogicallyPartitioned (abstract) parameters."""
    logical = nn.get_partition_spec(boxed_abstract_params)
    unboxed = nn.unbox(boxed_abstract_params)
    return jax.tree.map(lambda names, leaf: self.sharding(tuple(names), leaf.shape),
                        logical, unboxed, is_leaf=lambda x: isinstance(x, P))

  def activation_context(self):
    """Context for tracing/running steps: the mesh plus the rule table for `constrain`."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(axis_rules(self.rules))
    return stack


def derived_sharding(leaf_shape: Sequence[int], param_shape: Sequence[int],
                     param_sharding: NamedSharding) -> NamedSharding:
  """Sharding for optimizer-state leaves that mirror a parameter (possibly with an axis reduced).

  Adafactor keeps factored row/column statistics: the parameter's shape with one axis dropped.
  Such leaves keep the parameter's partitioning on the surviving axes.
  """
  spec = tuple(param_sharding.spec) + (None,) * (len(param_shape) - len(param_sharding.spec))
  mesh = param_sharding.mesh
  if tuple(leaf_shape) == tuple(param_shape):
    return param_sharding
  if len(leaf_shape) == len(param_shape) - 1:
    for drop in reversed(range(len(param_shape))):
      if tuple(param_shape[:drop]) + tuple(param_shape[drop + 1:]) == tuple(leaf_shape):
        return NamedSharding(mesh, P(*(spec[:drop] + spec[drop + 1:])))
  return NamedSharding(mesh, P())


def host_local_to_global(local_batch: Mapping[str, np.ndarray], partitioner: Partitioner):
  """Assembles the global batch from each process's local rows (multi-host data loading)."""
  return {k: jax.make_array_from_process_local_data(partitioner.batch_sharding(v.ndim), v)
          for k, v in local_batch.items()}
