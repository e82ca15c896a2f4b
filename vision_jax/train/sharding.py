"""Device mesh, parameter sharding rules and global batches.

The mesh has one axis, "data", over every device of every process. Batches are
split along it. Parameters (and optimizer state, EMA) are either replicated
(plain data parallelism) or, with FSDP, each array is split along its largest
dimension that the number of devices divides, over the same axis; XLA inserts
the all-gathers and reduce-scatters. Arrays too small to be worth splitting stay
replicated.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

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


class Prefetcher:
  """Moves host batches onto the mesh (`make_global_batch`) in a background thread.

  It keeps up to `size` global batches ahead of the step. `close()` stops the
  thread and waits for it, so that no transfer is in flight when the process
  exits. An exception raised by the host iterator is re-raised by `next()`.
  """

  _DONE = object()

  def __init__(self, batches: Iterator[dict[str, np.ndarray]], mesh: Mesh, size: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, args=(batches, mesh), daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self, batches, mesh) -> None:
    try:
      for batch in batches:
        if not self._put(make_global_batch(batch, mesh)):
          return
      self._put(self._DONE)
    except Exception as e:  # pylint: disable=broad-except
      self._put(e)

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if item is self._DONE:
      raise StopIteration
    if isinstance(item, Exception):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join()
