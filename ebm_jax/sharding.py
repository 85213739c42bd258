"""Data-parallel sharding over a ('data',) mesh with jit + NamedSharding (no pmap)."""

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A 1-D mesh over all (global) devices. Auto axis types: jax.make_mesh defaults to
  Explicit in jax 0.10, under which a plain data-parallel step can fail with ShardingTypeError."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.array(devices), (DATA,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis."""
  return NamedSharding(mesh, P(DATA))


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the global batch -> global arrays sharded over the batch."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
