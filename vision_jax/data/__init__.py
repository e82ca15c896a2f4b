"""Data sources. The trainer asks `get_dataset(config.data)` for one interface:
`train_iterator(global_batch, seed, start_step, process_index, process_count)` and
`eval_iterator(global_batch, process_index, process_count)`, both yielding this
process's numpy slice of each global batch as {'image', 'label'[, 'mask']}.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vision_jax.data import digits as digits_lib
from vision_jax.data.arrays import ArrayDataset

DATASETS = ("digits", "synthetic")


class DatasetError(ValueError):
  """A data config names something that cannot be read."""


def get_dataset(data_config: Any) -> ArrayDataset:
  """Builds the dataset named by `data_config.name`."""
  name = data_config.get("name")
  if name == "digits":
    return digits_dataset(image_size=data_config.get("image_size", 32),
                          max_shift=data_config.get("max_shift", 0),
                          train_split=data_config.get("train_split", "train"),
                          eval_split=data_config.get("eval_split", "test"))
  if name == "synthetic":
    return synthetic_dataset(image_size=data_config.get("image_size", 224),
                             num_classes=data_config.get("num_classes", 1000),
                             num_train=data_config.get("num_train", 256),
                             num_eval=data_config.get("num_eval", 64))
  raise DatasetError(f"Unknown dataset {name!r} in config.data.name. Available: {DATASETS}.")


def synthetic_dataset(image_size: int = 224, num_classes: int = 1000, num_train: int = 256,
                      num_eval: int = 64, channels: int = 3) -> ArrayDataset:
  """Random images and labels, for benchmarks: the input pipeline costs almost nothing."""
  rng = np.random.default_rng(0)
  shape = (image_size, image_size, channels)
  train = rng.standard_normal((num_train,) + shape).astype(np.float32)
  labels = rng.integers(0, num_classes, num_train).astype(np.int32)
  eval_labels = rng.integers(0, num_classes, num_eval).astype(np.int32)
  return ArrayDataset(train=(train, labels), eval=(train[np.arange(num_eval) % num_train], eval_labels),
                      num_classes=num_classes, preprocess_train=lambda x, rng: x,
                      preprocess_eval=lambda x, rng: x)
