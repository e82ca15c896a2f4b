"""Data: sources, preprocessing strings, batch augmentations, one iterator interface.

`get_dataset(config.data)` returns an object with `num_train`, `num_classes`,
`train_iterator(global_batch, seed, start_step=0, process_index=0,
process_count=1)` (endless; batch s is a pure function of (seed, s)) and
`eval_iterator(global_batch, process_index=0, process_count=1)` (one ordered
pass, last batch padded, 'mask' marks real rows). Both yield this process's
numpy slice of each global batch: {'image': float32 NHWC, 'label': int32, or
float32 soft labels [N, classes] after onehot/mixup/cutmix}.

config.data.name selects the source:
  "digits"          the embedded handwritten digits (no TensorFlow involved);
  "synthetic"       random arrays, for benchmarks;
  "folder:/path"    root/<split>/<class>/*.{jpg,jpeg,png} (`folder.FolderSource`);
  anything else     a tensorflow-datasets builder, e.g. "cifar10", "imagenet2012"
                    (`tfds_source.TfdsSource`), read with tf.data (`pipeline`).
The tf.data sources take preprocess_train / preprocess_eval op strings
(`ops`), e.g. "decode|inception_crop(224)|flip_lr|value_range(-1,1)", and every
source takes config.data.mix ("mixup(0.2)", "cutmix(1.0)", ...; see `mix`).
docs/data.md lists every field and op.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from absl import logging

from vision_jax.data import digits as digits_lib
from vision_jax.data.arrays import ArrayDataset
from vision_jax.data.errors import DatasetError, PreprocessError

DATASETS = ("digits", "synthetic", "folder:/path", "<tfds builder name>")
_TF_FIELDS = ("preprocess_train", "preprocess_eval", "shuffle_buffer", "cache", "data_dir",
              "validate_files", "image_key", "label_key")

__all__ = ["ArrayDataset", "DatasetError", "PreprocessError", "digits_dataset", "get_dataset",
           "synthetic_dataset"]


def get_dataset(data_config: Any) -> Any:
  """Builds the dataset named by `data_config.name` (see the module docstring).

  Raises:
    DatasetError: unknown name, missing or unprepared data, bad fields.
    PreprocessError: a malformed preprocessing or mix string (a DatasetError).
  """
  name = data_config.get("name")
  if name in ("digits", "synthetic"):
    ignored = [f for f in _TF_FIELDS if data_config.get(f) is not None]
    if ignored:
      logging.warning("config.data.%s: not used by the %r source (it preprocesses in memory).",
                      "/".join(ignored), name)
  if name == "digits":
    dataset = digits_dataset(image_size=data_config.get("image_size", 32),
                             max_shift=data_config.get("max_shift", 0),
                             train_split=data_config.get("train_split", "train"),
                             eval_split=data_config.get("eval_split", "test"),
                             classes=data_config.get("classes", None),
                             train_per_class=data_config.get("train_per_class", None),
                             augment=data_config.get("augment", "shift"),
                             views=data_config.get("views", 1))
  elif name == "synthetic":
    dataset = synthetic_dataset(image_size=data_config.get("image_size", 224),
                                num_classes=data_config.get("num_classes", 1000),
                                num_train=data_config.get("num_train", 256),
                                num_eval=data_config.get("num_eval", 64))
  elif isinstance(name, str) and name.startswith("folder:"):
    dataset = _tf_dataset(data_config, folder=name[len("folder:"):])
  elif isinstance(name, str) and name.strip():
    dataset = _tf_dataset(data_config, tfds_name=name)
  else:
    raise DatasetError(f"Unknown dataset {name!r} in config.data.name. Available: {DATASETS}.")
  mix = data_config.get("mix")
  if mix:
    from vision_jax.data import mix as mix_lib  # pylint: disable=import-outside-toplevel
    dataset = mix_lib.MixedDataset(dataset, mix_lib.get_batch_op(mix), mix)
  return dataset


def _tf_dataset(data_config: Any, folder: str | None = None, tfds_name: str | None = None):
  """A tf.data dataset over an image folder or a tfds builder (TensorFlow is imported here)."""
  # pylint: disable=import-outside-toplevel
  from vision_jax.data.pipeline import TfDataset
  train_split = data_config.get("train_split") or "train"
  eval_split = data_config.get("eval_split")
  if folder is not None:
    from vision_jax.data.folder import FolderSource, default_eval_split
    if not folder:
      raise DatasetError("config.data.name='folder:' needs a path: 'folder:/path/to/root'.")
    eval_split = eval_split or default_eval_split(folder)
    source = FolderSource(folder, [train_split, eval_split],
                          data_config.get("validate_files") or "auto")
  else:
    from vision_jax.data.tfds_source import TfdsSource
    source = TfdsSource(tfds_name, data_dir=data_config.get("data_dir"),
                        image_key=data_config.get("image_key") or "image",
                        label_key=data_config.get("label_key") or "label")
    eval_split = eval_split or source.default_eval_split()
  specs = {}
  for field in ("preprocess_train", "preprocess_eval"):
    specs[field] = data_config.get(field)
    if not specs[field]:
      raise DatasetError(
          f"config.data.{field} is required for {source.name}: an op string such as "
          "'decode|inception_crop(224)|flip_lr|value_range(-1,1)' (train) or "
          "'decode|resize_small(256)|central_crop(224)|value_range(-1,1)' (eval).")
  return TfDataset(source, train_split, eval_split, specs["preprocess_train"],
                   specs["preprocess_eval"], shuffle_buffer=data_config.get("shuffle_buffer"),
                   cache=bool(data_config.get("cache", False)))


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
                   eval_split: str = "test", classes=None,
                   train_per_class: int | None = None, augment: str = "shift",
                   views: int = 1) -> ArrayDataset:
  """The embedded digits, upscaled bilinearly to `image_size` with values in [-1, 1].

  Training augmentation (`augment`): "shift" moves each training image by up to
  `max_shift` pixels (after upscaling; background padding) when `max_shift` > 0;
  "simclr" draws a SimCLR-style view instead (random resized crop, brightness
  and contrast jitter, pixel noise, random erasing: `digits.simclr_view`).
  `views=2` returns two independent augmentations of every training image,
  batch['image'] being [N, 2, H, W, 1] (for SimCLR); evaluation is unchanged. `classes` keeps only those
  digits, relabelled 0..len(classes)-1 in the given order (both splits);
  `train_per_class` keeps the first n training images of each kept class (a
  fixed few-shot subset, for transfer experiments).
  """
  try:
    train = digits_lib.load_digits(train_split)
    evaluation = digits_lib.load_digits(eval_split)
  except ValueError as e:
    raise DatasetError(str(e)) from None
  num_classes = digits_lib.NUM_CLASSES
  if classes is not None:
    classes = [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(10)):
      raise DatasetError(f"config.data.classes={classes!r}: give distinct digits from 0 to 9.")
    relabel = np.full(10, -1)
    relabel[classes] = np.arange(len(classes))

    def subset(images, labels, per_class=None):
      keep = np.isin(labels, classes)
      if per_class is not None:
        rank = np.array([np.sum(labels[:i][keep[:i]] == labels[i]) for i in range(len(labels))])
        keep &= rank < per_class
      return images[keep], relabel[labels[keep]].astype(np.int32)

    train = subset(*train, per_class=train_per_class)
    evaluation = subset(*evaluation)
    num_classes = len(classes)
  elif train_per_class is not None:
    raise DatasetError("config.data.train_per_class needs config.data.classes.")
  if augment not in ("shift", "simclr"):
    raise DatasetError(f"config.data.augment={augment!r}: the digits source knows 'shift' "
                       "(supervised) and 'simclr' (contrastive views).")
  if views not in (1, 2):
    raise DatasetError(f"config.data.views={views!r}: use 1, or 2 for SimCLR pairs.")
  raw_train = train
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

  if augment == "simclr":
    train = raw_train  # cropped from the 8x8 originals: one resampling per view

    def one_view(images, rngs):
      if rngs is None:
        return upscale(images)
      return digits_lib.simclr_view(images, rngs, image_size)
  else:
    one_view = shift

  def preprocess_train(images, rngs):
    if views == 1 or rngs is None:
      return one_view(images, rngs)
    # Each example's generator continues its stream, so the second view differs from the first.
    return np.stack([one_view(images, rngs), one_view(images, rngs)], axis=1)

  return ArrayDataset(train=train, eval=evaluation, num_classes=num_classes,
                      preprocess_train=preprocess_train, preprocess_eval=lambda x, rng: x,
                      views=views)
