"""Class imbalance: `config.data.balance = 'none' | 'sample' | 'loss'`.

- 'none': examples are drawn as the split holds them (the default).
- 'sample': balanced sampling. Every training example is drawn with a
  probability proportional to 1 / (its class's count), with replacement, so each
  class is equally likely in every batch; an epoch keeps the split's size. The
  draws are a pure function of (seed, epoch), so resume stays exact. Available
  for the sources whose labels are known up front: `digits`, `synthetic` and
  `folder:` (a tfds dataset would need a full pass over its records: use 'loss').
- 'loss': class-weighted cross-entropy. Example i weighs N / (C * n_{y_i})
  (N examples, C classes with examples, n_c of class c), so the weights average
  1 over the training split and the learning rate means the same as without;
  soft labels (mixup) weigh the label-weighted mean of their classes' weights.

Both use the training split's class counts (`class_counts`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vision_jax.data.errors import DatasetError

BALANCE_MODES = ("none", "sample", "loss")


def check_mode(mode: Any) -> str:
  """The balance mode, None meaning 'none'; anything else is a DatasetError."""
  mode = "none" if mode is None else mode
  if mode not in BALANCE_MODES:
    raise DatasetError(f"config.data.balance={mode!r}; choose one of {BALANCE_MODES}.")
  return mode


def class_counts(dataset: Any) -> np.ndarray:
  """int64 [num_classes]: training examples per class of any dataset of `get_dataset`."""
  inner = getattr(dataset, "dataset", dataset)  # a MixedDataset wraps the real one
  if hasattr(inner, "train") and isinstance(inner.train, tuple):
    labels = np.asarray(inner.train[1])
  else:
    labels = np.asarray(inner.source.train_labels(inner.train_split))
  return np.bincount(labels.astype(np.int64), minlength=int(dataset.num_classes))


def sampling_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """float64 [N] probabilities, each 1 / (C * n_{label}) over the C classes present."""
  labels = np.asarray(labels, np.int64)
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  present = np.count_nonzero(counts)
  weights = 1.0 / (present * counts[labels])
  return weights / weights.sum()


def loss_weights(counts: np.ndarray) -> np.ndarray:
  """float32 [C]: N / (C_present * n_c) for classes with examples, 1 for empty ones."""
  counts = np.asarray(counts, np.float64)
  present = counts > 0
  weights = np.ones_like(counts)
  weights[present] = counts.sum() / (np.count_nonzero(present) * counts[present])
  return weights.astype(np.float32)
