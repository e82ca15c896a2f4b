"""The `Source` interface: where the examples of a tf.data pipeline come from.

It lives apart from the pipeline so that the sources (`folder.FolderSource`,
`tfds_source.TfdsSource`) and the pipeline (`pipeline.TfDataset`) both import it
and neither imports the other: `vision_jax.data.get_dataset` builds the source
and hands it to the pipeline.
"""

from __future__ import annotations

import abc

import numpy as np
import tensorflow as tf


def share_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of process `process_index`'s share; the first `n % P` shares get one more."""
  per, extra = divmod(num_examples, process_count)
  start = process_index * per + min(process_index, extra)
  return start, start + per + (1 if process_index < extra else 0)


class Source(abc.ABC):
  """Where examples come from. Subclasses: `TfdsSource`, `FolderSource`.

  Examples are dicts with at least "image" (encoded bytes or uint8 [H, W, C])
  and "label" (integer) once `load` has run.
  """

  num_classes: int
  name: str

  @abc.abstractmethod
  def num_examples(self, split: str) -> int:
    """Number of examples of a split."""

  @abc.abstractmethod
  def share_sizes(self, split: str, process_count: int) -> list[int]:
    """Number of examples of each process's share of `split`."""

  @abc.abstractmethod
  def read(self, split: str, process_index: int, process_count: int, *,
           training: bool, seed: int = 0) -> tf.data.Dataset:
    """This process's share of `split`, in a fixed order (a function of `seed` at most)."""

  def load(self, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Runs inside the parallel map, before preprocessing (e.g. reads a file)."""
    return example

  def shuffle_buffer(self, share_size: int, requested: int | None) -> int:
    """Shuffle buffer for a share; `requested` is config.data.shuffle_buffer."""
    return max(1, min(share_size, requested or 10_000))

  def exclude_unreadable(self, split: str) -> list[str]:
    """Leaves out the examples of `split` that became unreadable during the run.

    Called when reading fails; returns what was left out (named and counted by the
    source), or nothing when the source cannot tell (then the error stops the run).
    """
    del split
    return []

  def train_labels(self, split: str) -> np.ndarray:
    """int64 [N]: the label of every example of `split` (one pass over its records)."""
    ds = self.read(split, 0, 1, training=False).map(lambda example: example["label"])
    labels = [np.asarray(b) for b in ds.batch(4096).as_numpy_iterator()]
    return np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)

  def explain_failure(self, split: str, error: Exception) -> str:
    """A message for an error raised while reading or decoding `split`."""
    return (f"Reading split {split!r} of {self.name} failed: {error}. Check the data, or the "
            "preprocessing strings.")
