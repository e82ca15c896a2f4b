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
                      num_classes=num_classes, preprocess_train=lambda x, rngs: x,
                      preprocess_eval=lambda x, rngs: x)
def resize_matrix(src: int, dst: int) -> np.ndarray:
  """(dst, src) matrix of bilinear interpolation weights (half-pixel centres)."""
  centres = (np.arange(dst) + 0.5) * src / dst - 0.5
  lo = np.clip(np.floor(centres).astype(int), 0, src - 1)
  hi = np.clip(lo + 1, 0, src - 1)
  frac = np.clip(centres - lo, 0.0, 1.0)
  m = np.zeros((dst, src))
  m[np.arange(dst), lo] += 1 - frac
  m[np.arange(dst), hi] += frac
  return m


def digits_dataset(image_size: int = 32, max_shift: int = 0, train_split: str = "train",
                   eval_split: str = "test") -> ArrayDataset:
  """The embedded digits, upscaled bilinearly to `image_size` with values in [-1, 1].

  Training images are randomly shifted by up to `max_shift` pixels (after
  upscaling; zero padding) when `max_shift` > 0.
  """
  try:
    train = digits_lib.load_digits(train_split)
    evaluation = digits_lib.load_digits(eval_split)
  except ValueError as e:
    raise DatasetError(str(e)) from None
  m = resize_matrix(8, image_size).astype(np.float32)

  def upscale(images: np.ndarray) -> np.ndarray:
    x = images[..., 0].astype(np.float32) / 16.0
    x = np.einsum("hi,nij,wj->nhw", m, x, m)
    return (x * 2.0 - 1.0)[..., None]

  train = (upscale(train[0]), train[1])
  evaluation = (upscale(evaluation[0]), evaluation[1])

  def shift(images: np.ndarray, rngs) -> np.ndarray:
    if rngs is None or max_shift == 0:
      return images
    s = max_shift
    padded = np.pad(images, ((0, 0), (s, s), (s, s), (0, 0)), constant_values=-1.0)
    dy, dx = np.stack([rng.integers(0, 2 * s + 1, size=2) for rng in rngs], axis=1)
    rows = dy[:, None] + np.arange(image_size)[None]
    cols = dx[:, None] + np.arange(image_size)[None]
    return padded[np.arange(len(images))[:, None, None], rows[:, :, None], cols[:, None, :]]

  return ArrayDataset(train=train, eval=evaluation, num_classes=digits_lib.NUM_CLASSES,
                      preprocess_train=shift, preprocess_eval=lambda x, rng: x)
