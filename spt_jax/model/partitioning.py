"""Logical axis rules for SPT and the device mesh the local runner shards over.

The rules map the logical names in `params_axes` and in activation constraints
onto the ('data', 'model') mesh axes, as T5X's `PjitPartitioner` does. SPT adds
four logical axes, which T5X runs register through
`standard_logical_axis_rules.additional_rules = @spt_logical_axis_rules()`:

  memory         the bank's memories   -> ('data', 'model') by default: a bank
                                          of 1e5-1e6 memories is the largest SPT
                                          tensor, so it is split over every
                                          device, not replicated over either axis
  memory_length  vectors per memory    -> replicated
  memory_embed   the key width         -> replicated
  prompt         soft prompt positions -> replicated
"""

import contextlib
import warnings
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import flax
import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
import numpy as np

from spt_jax import gin_utils

MeshAxes = Optional[Union[str, Tuple[str, ...]]]
LogicalRules = Sequence[Tuple[str, MeshAxes]]
MESH_AXES = ('data', 'model')


def spt_logical_axis_rules(
    memory_mesh_axis: MeshAxes = MESH_AXES,
) -> LogicalRules:
  """Rules for the logical axes SPT adds to the T5 network.

  Args:
    memory_mesh_axis: the mesh axis, or axes, the bank's `memory` axis is
      split over. With one axis (e.g. 'data') the bank is replicated over
      the other: each shard's keys' gradient is then all-reduced over it.
  """
  return (
      ('memory', memory_mesh_axis),
      ('memory_length', None),
      ('memory_embed', None),
      ('prompt', None),
  )


def standard_logical_axis_rules(
    additional_rules: LogicalRules = (),
) -> LogicalRules:
  """T5X's default rules (1-D parameter and activation partitioning) plus more.

  Data parallelism over `data`, Megatron-style model parallelism over `model`.
  """
  return tuple(additional_rules) + (
      ('batch', 'data'),
      ('vocab', 'model'),
      ('embed', None),
      ('mlp', 'model'),
      ('heads', 'model'),
      ('kv', None),
      ('joined_kv', 'model'),
      ('relpos_buckets', None),
      ('abspos_buckets', None),
      ('length', None),
      ('layers', None),
      ('stack', None),
      ('mlp_activations', None),
  )


def default_rules(memory_mesh_axis: MeshAxes = MESH_AXES) -> LogicalRules:
  """The standard rules with SPT's axes, as the gin configs bind them."""
  return standard_logical_axis_rules(spt_logical_axis_rules(memory_mesh_axis))


def create_mesh(
    num_partitions: int = 1, devices: Optional[Sequence[Any]] = None
) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh with `num_partitions` devices per model replica.

  Args:
    num_partitions: size of the `model` axis; must divide the device count.
    devices: devices to use (default: all, across every host).

  Returns:
    The mesh; its `data` axis spans the remaining factor.
  """
  devices = list(jax.devices() if devices is None else devices)
  if (
      isinstance(num_partitions, bool)
      or not isinstance(num_partitions, int)
      or num_partitions < 1
      or len(devices) % num_partitions
  ):
    divisors = [d for d in range(1, len(devices) + 1) if len(devices) % d == 0]
    raise gin_utils.ConfigError(
        f'NUM_PARTITIONS={num_partitions!r} (devices per model replica) must '
        f'divide the {len(devices)} available devices: use one of '
        f'{", ".join(map(str, divisors))}.'
    )
  grid = np.asarray(devices).reshape(
      len(devices) // num_partitions, num_partitions
  )
  return jax.sharding.Mesh(grid, MESH_AXES)


def params_shardings(
    params_axes: Any, mesh: jax.sharding.Mesh, rules: LogicalRules
):
  """NamedShardings for a parameter tree from its `params_axes` collection."""
  logical_specs = flax.core.unfreeze(
      nn_partitioning.get_axis_names(params_axes)
  )
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def data_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Batch arrays split along their leading dimension over `data`."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))


def global_batch(
    local_batch: Mapping[str, Any], mesh: jax.sharding.Mesh
) -> dict[str, jax.Array]:
  """Assembles each host's rows of a batch into arrays split over `data`."""
  sharding = data_sharding(mesh)
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
      for k, v in local_batch.items()
  }


def current_mesh() -> Optional[Any]:
  """The mesh in scope while tracing, or None.

  `jax.set_mesh` sets an abstract mesh; `with mesh:` (the local trainer's
  `mesh_and_rules`, T5X's partitioned functions) only the older physical one.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    from jax.interpreters import pxla  # pylint: disable=g-import-not-at-top

    physical = pxla.thread_resources.env.physical_mesh
  return None if physical.empty else physical


def logical_mesh_axis(
    logical_name: str,
) -> Optional[Tuple[Any, Union[str, Tuple[str, ...]], int]]:
  """(mesh, mesh axis or axes, number of shards) a logical axis is split over.

  None when no mesh or rules are in scope, or when the rules replicate the
  axis or split it into one shard.
  """
  mesh = current_mesh()
  if mesh is None:
    return None
  spec = nn_partitioning.logical_to_mesh_axes((logical_name,))
  axis = spec[0] if spec else None
  names = (axis,) if isinstance(axis, str) else axis
  if (
      not isinstance(names, tuple)
      or not names
      or not all(
          isinstance(name, str) and name in mesh.axis_names for name in names
      )
  ):
    return None
  size = mesh_axis_size(mesh, axis)
  return (mesh, axis, size) if size > 1 else None


def mesh_axis_size(mesh, axis: Union[str, Tuple[str, ...]]) -> int:
  """Number of shards along a mesh axis, or along several axes together."""
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  names = (axis,) if isinstance(axis, str) else axis
  return int(np.prod([sizes[name] for name in names]))


@contextlib.contextmanager
def mesh_and_rules(mesh: jax.sharding.Mesh, rules: LogicalRules):
  """Activates a mesh and logical axis rules for tracing sharded code."""
  with mesh, nn_partitioning.axis_rules(rules):
    yield
