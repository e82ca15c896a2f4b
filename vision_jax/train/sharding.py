"""Device mesh, parameter sharding rules and global batches.

The mesh has one axis, "data", over every device of every process. Batches are
split along it. Parameters (and optimizer state, EMA) are either replicated
(plain data parallelism) or, with FSDP, each array is split along its largest
dimension that the number of devices divides, over the same axis; XLA inserts
the all-gathers and reduce-scatters. Arrays too small to be worth splitting stay
replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over all devices (or the first `num_devices`), axis 'data'."""
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"Asked for {num_devices} devices, but only {len(devices)} exist.")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int = 2**12) -> P:
  """Splits the largest dimension divisible by `num_shards`; small arrays stay whole."""
  if int(np.prod(shape)) < min_size or num_shards == 1:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % num_shards == 0:
      spec = [None] * len(shape)
      spec[dim] = DATA_AXIS
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp: bool) -> Any:
  """NamedShardings for every leaf of an (abstract) train state."""
  n = mesh.shape[DATA_AXIS]

  def leaf(x):
    shape = tuple(getattr(x, "shape", ()))
    return NamedSharding(mesh, fsdp_spec(shape, n) if fsdp else P())

  return jax.tree_util.tree_map(leaf, abstract_state)


def make_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """One global jax.Array per key from each process's local slice (split on 'data')."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
