"""Device mesh and the one table that maps logical axis names onto it.

Every parameter, optimizer-state and batch sharding in the trainer is derived from
`LOGICAL_RULES`; there are no per-layer special cases.
"""

import logging
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from models.config import PyTree

MESH_AXES = ('data', 'fsdp', 'tensor')
# `config.mesh`, or a plain {'data': ..., 'fsdp': ..., 'tensor': ...}.
MeshConfig = ml_collections.ConfigDict | Mapping[str, int]

# logical axis -> mesh axes (T5X/MaxText style). Unlisted logical axes are replicated.
LOGICAL_RULES = (
  ('batch', ('data', 'fsdp')),
  ('embed', 'fsdp'),
  ('vocab', 'tensor'),
  ('heads', 'tensor'),
  ('kv_heads', 'tensor'),
  ('mlp', 'tensor'),
  ('layers', None),
  ('head_dim', None),
  ('v_head_dim', None),  # the value's (and out projection's) head width, as 'head_dim'.
  ('norm', None),
  ('position', None),
  ('length', None),
  ('act_calib', None),  # the leading size-1 axis of W8A8's frozen calibrated params (act_quant.py).
  # The leading axis of a member group's stacked state and batches (train/group.py): replicated,
  # or over config.mesh.members (e.g. 'data': each data-parallel slice trains its own members).
  ('member', None),
)


def member_rules(axis: str) -> tuple:
  """LOGICAL_RULES with the member axis over mesh axis `axis` ('': as the table has it)."""
  if not axis:
    return LOGICAL_RULES
  return tuple(r for r in LOGICAL_RULES if r[0] != 'member') + (('member', axis),)


def mesh_shape(mesh_config: MeshConfig, num_devices: int) -> dict:
  """Resolve -1 entries (at most one) so the axes multiply to `num_devices`."""
  shape = {a: int(mesh_config[a]) for a in MESH_AXES}
  fill = [a for a, n in shape.items() if n == -1]
  if len(fill) > 1:
    raise ValueError(f'config.mesh: at most one axis may be -1, got {shape}')
  if any(n == 0 or n < -1 for n in shape.values()):
    raise ValueError(f'config.mesh: axis sizes must be positive or -1, got {shape}')
  known = int(np.prod([n for n in shape.values() if n != -1]))
  if fill:
    if num_devices % known:
      raise ValueError(
        f'config.mesh: {shape} cannot fill {num_devices} devices '
        f'({num_devices} is not divisible by {known})'
      )
    shape[fill[0]] = num_devices // known
  if int(np.prod(list(shape.values()))) != num_devices:
    raise ValueError(
      f'config.mesh: data*fsdp*tensor = {int(np.prod(list(shape.values())))} '
      f'{shape} but there are {num_devices} devices'
    )
  return shape


def make_mesh(mesh_config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  dims = tuple(shape[a] for a in MESH_AXES)
  # jax.make_mesh orders devices by topology (ICI rings on TPU slices, hosts contiguous).
  # Auto axes: GSPMD propagates shardings from the explicit in/out shardings of the step.
  return jax.make_mesh(
    dims, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(dims), devices=devices
  )


def _mesh_axes(spec: P, shape: Sequence[int], sizes: Mapping[str, int], warn: bool = True) -> list:
  """Mesh axes per dim of one array under LOGICAL_RULES; a dim they don't divide is replicated."""
  mesh_spec = nn.logical_to_mesh_axes(spec, LOGICAL_RULES)
  axes = []
  for dim, ax in zip(shape, tuple(mesh_spec) + (None,) * (len(shape) - len(mesh_spec))):
    size = int(np.prod([sizes[a] for a in ((ax,) if isinstance(ax, str) else ax or ())]))
    if size > 1 and dim % size:
      if warn:
        logging.warning(
          'Replicating a dim of size %d (logical %s): not divisible by mesh %s=%d',
          dim,
          spec,
          ax,
          size,
        )
      ax = None
    axes.append(ax)
  return axes


def logical_to_mesh(spec: P, shape: Sequence[int], mesh: Mesh) -> NamedSharding:
  """NamedSharding for one array; a dim the mesh axes don't divide is replicated."""
  return NamedSharding(mesh, P(*_mesh_axes(spec, shape, mesh.shape)))


def shards(spec: P, shape: Sequence[int], sizes: Mapping[str, int]) -> int:
  """How many devices one array is split over (the rest hold copies), from the mesh shape."""
  axes = _mesh_axes(spec, shape, sizes, warn=False)
  names = [a for ax in axes for a in ((ax,) if isinstance(ax, str) else ax or ())]
  return int(np.prod([sizes[a] for a in names]))


def tree_shardings(logical_specs: PyTree, shapes: PyTree, mesh: Mesh) -> PyTree:
  """Shardings for a pytree given its logical specs and its shapes (ShapeDtypeStructs/arrays)."""
  return jax.tree.map(
    lambda spec, x: logical_to_mesh(spec, x.shape, mesh),
    logical_specs,
    shapes,
    is_leaf=lambda x: isinstance(x, P),
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches: leading dim over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(nn.logical_to_mesh_axes(('batch',), LOGICAL_RULES)[0]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
