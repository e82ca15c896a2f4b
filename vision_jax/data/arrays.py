"""In-memory datasets whose batches are a pure function of (seed, step).

Because batch `s` is computed from the step number alone (epoch = s // steps
per epoch, then a permutation seeded by (seed, epoch)), a run resumed at step S
sees exactly the batches an uninterrupted run sees from S on. Each process
takes its own contiguous slice of every global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

Batch = dict[str, np.ndarray]
# (images, one Generator per example or None for deterministic) -> float32 NHWC batch.
Preprocess = Callable[[np.ndarray, "list[np.random.Generator] | None"], np.ndarray]


@dataclasses.dataclass
class ArrayDataset:
  """A labelled image dataset held in host memory.

  Attributes:
    train: (images, labels) of the training split.
    eval: (images, labels) of the evaluation split.
    num_classes: number of classes.
    preprocess_train: (images, rngs) -> float32 NHWC batch, or a dict of arrays
      with it under "image" (and e.g. DINO's local crops under "local"); rngs holds one
      Generator per example, seeded by (seed, epoch, example index), so that an
      example's augmentation does not depend on the batch or process it lands in.
    preprocess_eval: same, called with rngs None (deterministic).
    views: augmented views per training example (2: batch['image'] is
      [N, 2, H, W, C], for SimCLR); evaluation batches always hold one.
    local_views: DINO local crops per training example (batch['local'] is
      [N, local_views, h, w, C]); 0 for none.
    balance: 'sample' draws each epoch's examples with replacement, each with a
      probability proportional to 1 / (its class's count) (`data.balance`);
      anything else uses a permutation of the split.
  """

  train: tuple[np.ndarray, np.ndarray]
  eval: tuple[np.ndarray, np.ndarray]
  num_classes: int
  preprocess_train: Preprocess
  preprocess_eval: Preprocess
  views: int = 1
  balance: str = "none"
  local_views: int = 0

  @property
  def num_train(self) -> int:
    return len(self.train[1])

  @property
  def num_eval(self) -> int:
    return len(self.eval[1])

  def train_iterator(self, global_batch: int, seed: int, start_step: int = 0,
                     process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
    """Endless training batches from `start_step` on; this process's slice of each."""
    images, labels = self.train
    n = len(labels)
    if global_batch > n:
      raise ValueError(f"The batch size {global_batch} is larger than the training split ({n}).")
    local = _local_size(global_batch, process_count)
    steps_per_epoch = n // global_batch  # the incomplete tail of each epoch is dropped
    weights = None
    if self.balance == "sample":
      from vision_jax.data.balance import sampling_weights  # pylint: disable=import-outside-toplevel
      weights = sampling_weights(labels, self.num_classes)
    step = start_step
    while True:
      epoch, offset = divmod(step, steps_per_epoch)
      rng = np.random.default_rng([seed, epoch])
      order = rng.permutation(n) if weights is None else rng.choice(n, size=n, p=weights)
      start = offset * global_batch + process_index * local
      index = order[start:start + local]
      rngs = [np.random.default_rng([seed, epoch, int(i)]) for i in index]
      processed = self.preprocess_train(images[index], rngs)
      # A preprocess may give more than the image (DINO's local crops: {"image", "local"}).
      batch = dict(processed) if isinstance(processed, dict) else {"image": processed}
      batch["label"] = labels[index]
      yield batch
      step += 1

  def eval_iterator(self, global_batch: int, process_index: int = 0,
                    process_count: int = 1) -> Iterator[Batch]:
    """One ordered pass over the eval split; the last batch is padded, 'mask' marks real rows."""
    images, labels = self.eval
    n = len(labels)
    local = _local_size(global_batch, process_count)
    for start in range(0, n, global_batch):
      index = np.arange(start + process_index * local, start + (process_index + 1) * local)
      mask = index < n
      index = np.where(mask, index, 0)
      yield {"image": self.preprocess_eval(images[index], None), "label": labels[index],
             "mask": mask}


def _local_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"The global batch size {global_batch} does not divide across "
                     f"{process_count} processes.")
  return global_batch // process_count


def synthetic_dataset(image_size: int = 224, num_classes: int = 1000, num_train: int = 256,
                      num_eval: int = 64, channels: int = 3) -> ArrayDataset:
  """Random images and labels, for benchmarks: the input pipeline costs almost nothing."""
  rng = np.random.default_rng(0)
  shape = (image_size, image_size, channels)
  train = rng.standard_normal((num_train,) + shape).astype(np.float32)
  labels = rng.integers(0, num_classes, num_train).astype(np.int32)
  eval_labels = rng.integers(0, num_classes, num_eval).astype(np.int32)
  return ArrayDataset(train=(train, labels), eval=(train[np.arange(num_eval) % num_train], eval_labels),
                      num_classes=num_classes, preprocess_train=lambda x, rngs: x,
                      preprocess_eval=lambda x, rngs: x)
