"""The embedded real dataset: scikit-learn's handwritten digits (UCI, CC BY 4.0).

1,797 greyscale 8x8 images with values 0..16, ten classes, shipped inside the
package as `digits.npz` so that a fresh install trains something real offline.
The split is fixed and stored with the data: a stratified 80/20 split made with
`sklearn.model_selection.train_test_split(test_size=0.2, stratify=labels,
random_state=0)`, giving 1,437 training and 360 test images.
"""

from __future__ import annotations

import os

import numpy as np

from vision_jax.data.arrays import ArrayDataset
from vision_jax.data.errors import DatasetError

_PATH = os.path.join(os.path.dirname(__file__), "digits.npz")
NUM_CLASSES = 10
SPLITS = ("train", "test", "all")


def load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [N, 8, 8, 1] with values 0..16, labels int32 [N]) of a split."""
  if split not in SPLITS:
    raise ValueError(f"digits has splits {SPLITS}, not {split!r}.")
  with np.load(_PATH) as data:
    images, labels = data["images"], data["labels"].astype(np.int32)
    index = np.arange(len(labels)) if split == "all" else data[f"{split}_index"]
  return images[index][..., None], labels[index]


def crop_resize_matrices(starts: np.ndarray, sizes: np.ndarray, src: int, dst: int) -> np.ndarray:
  """(N, dst, src) bilinear weights that resample the window [start, start + size) to dst pixels.

  Coordinates are continuous with pixel i covering [i, i + 1). As with cropping
  first and resizing the crop, samples near the window's edge are clamped to the
  window (never read from outside it). With start 0 and size src this is a plain
  bilinear resize (half-pixel centres).
  """
  centres = starts[:, None] + (np.arange(dst)[None] + 0.5) * sizes[:, None] / dst - 0.5
  low = np.clip(starts, 0.0, src - 1.0)[:, None]
  high = np.clip(starts + sizes - 1.0, low[:, 0], src - 1.0)[:, None]
  centres = np.clip(centres, low, high)
  lo = np.floor(centres).astype(np.int64)
  hi = np.minimum(lo + 1, src - 1)
  frac = (centres - lo).astype(np.float32)
  n = len(starts)
  m = np.zeros((n, dst, src), np.float32)
  rows = np.arange(n)[:, None], np.arange(dst)[None]
  np.add.at(m, (*rows, lo), 1.0 - frac)
  np.add.at(m, (*rows, hi), frac)
  return m


# DINO's local crops cover 5-40% of the image (its `local_crops_scale`, Caron et al. 2021).
LOCAL_SCALE = (0.05, 0.4)


def simclr_view(images: np.ndarray, rngs, image_size: int, *, min_scale: float = 0.4,
                max_scale: float = 1.0, jitter: float = 0.4, jitter_prob: float = 0.8, noise: float = 0.1,
                erase_prob: float = 0.5) -> np.ndarray:
  """One SimCLR-style random view of each raw digit, as float32 [N, image_size, image_size, 1].

  The greyscale analogue of SimCLR's ImageNet chain (there is no colour to
  jitter and a flipped digit is another symbol, so neither flips nor hue are used):
  1. random resized crop: area scale in [min_scale, max_scale], aspect ratio in
     [3/4, 4/3], bilinear resample of the 8x8 original to image_size;
  2. with probability jitter_prob, brightness and contrast jitter of strength
     `jitter` (factors in [1 - jitter, 1 + jitter]);
  3. Gaussian pixel noise of std `noise` (on the [-1, 1] scale);
  4. with probability erase_prob, one random square (1/4 to 1/2 of the side)
     set to the background value.

  Args:
    images: raw digits, [N, 8, 8, 1] with values 0..16.
    rngs: one numpy Generator per image.
    image_size: output side.

  Returns:
    Views with values around [-1, 1] (background -1).
  """
  n, src = len(images), images.shape[1]
  # 12 uniform draws per example; draw 7 is unused (the pixel noise comes from the generator
  # afterwards) and kept so that a given seed still gives the same views.
  draws = np.stack([rng.random(12) for rng in rngs]) if n else np.zeros((0, 12))
  area = min_scale + (max_scale - min_scale) * draws[:, 0]
  log_ratio = np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * draws[:, 1]
  ratio = np.exp(log_ratio)
  height = np.clip(src * np.sqrt(area / ratio), 1.0, src)
  width = np.clip(src * np.sqrt(area * ratio), 1.0, src)
  top = (src - height) * draws[:, 2]
  left = (src - width) * draws[:, 3]
  rows = crop_resize_matrices(top, height, src, image_size)
  cols = crop_resize_matrices(left, width, src, image_size)
  x = images[..., 0].astype(np.float32) / 8.0 - 1.0  # [-1, 1]
  x = np.einsum("nhi,nij,nwj->nhw", rows, x, cols)
  # Brightness / contrast jitter around the background, on [0, 2] then back.
  apply = (draws[:, 4] < jitter_prob)[:, None, None]
  brightness = 1.0 + jitter * (2.0 * draws[:, 5] - 1.0)
  contrast = 1.0 + jitter * (2.0 * draws[:, 6] - 1.0)
  y = x + 1.0
  mean = y.mean(axis=(1, 2), keepdims=True)
  jittered = ((y * brightness[:, None, None]) - mean) * contrast[:, None, None] + mean
  x = np.where(apply, np.clip(jittered, 0.0, 2.0) - 1.0, x)
  # Pixel noise, drawn from each example's own generator.
  if noise and n:
    x = x + noise * np.stack([rng.standard_normal((image_size, image_size), np.float32)
                              for rng in rngs])
  # Random erasing.
  side = np.round(image_size * (0.25 + 0.25 * draws[:, 8])).astype(int)
  y0 = np.floor((image_size - side + 1) * draws[:, 9]).astype(int)
  x0 = np.floor((image_size - side + 1) * draws[:, 10]).astype(int)
  grid = np.arange(image_size)
  inside = ((grid[None, :, None] >= y0[:, None, None]) & (grid[None, :, None] < (y0 + side)[:, None, None])
            & (grid[None, None, :] >= x0[:, None, None]) & (grid[None, None, :] < (x0 + side)[:, None, None]))
  erase = inside & (draws[:, 11] < erase_prob)[:, None, None]
  x = np.where(erase, -1.0, x)
  return x[..., None].astype(np.float32)


def digits_dataset(image_size: int = 32, max_shift: int = 0, train_split: str = "train",
                   eval_split: str = "test", classes=None,
                   train_per_class: int | None = None, augment: str = "shift",
                   views: int = 1, local_crops: int = 0, local_image_size: int | None = None,
                   local_scale: tuple[float, float] = LOCAL_SCALE) -> ArrayDataset:
  """The embedded digits, upscaled bilinearly to `image_size` with values in [-1, 1].

  Training augmentation (`augment`): "shift" moves each training image by up to
  `max_shift` pixels (after upscaling; background padding) when `max_shift` > 0;
  "simclr" draws a SimCLR-style view instead (random resized crop, brightness
  and contrast jitter, pixel noise, random erasing: `digits.simclr_view`).
  `views=2` returns two independent augmentations of every training image,
  batch['image'] being [N, 2, H, W, 1] (for SimCLR); evaluation is unchanged.
  `local_crops=n` (with augment='simclr' and views=2) adds DINO's multi-crop:
  batch['local'] [N, n, h, h, 1], views whose crop covers `local_scale` of the
  digit's area, at `local_image_size` (default half of image_size). `classes` keeps only those
  digits, relabelled 0..len(classes)-1 in the given order (both splits);
  `train_per_class` keeps the first n training images of each kept class (a
  fixed few-shot subset, for transfer experiments).
  """
  try:
    train = load_digits(train_split)
    evaluation = load_digits(eval_split)
  except ValueError as e:
    raise DatasetError(str(e)) from None
  num_classes = NUM_CLASSES
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
  if local_crops and (augment != "simclr" or views != 2):
    raise DatasetError(f"config.data.local_crops={local_crops}: local crops are DINO's "
                       "multi-crop; they need augment='simclr' and views=2 (the global crops).")
  lo, hi = local_scale
  if not 0 < lo <= hi <= 1:
    raise DatasetError(f"config.data.local_scale={tuple(local_scale)!r}: need 0 < low <= high "
                       "<= 1 (fractions of the digit's area).")
  local_image_size = local_image_size or max(1, image_size // 2)
  raw_train = train
  # A plain bilinear resize of the whole 8x8 image (half-pixel centres).
  m = crop_resize_matrices(np.zeros(1), np.full(1, 8.0), 8, image_size)[0]

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
      return simclr_view(images, rngs, image_size)
  else:
    one_view = shift

  def preprocess_train(images, rngs):
    if views == 1 or rngs is None:
      return one_view(images, rngs)
    # Each example's generator continues its stream, so the second view differs from the first.
    pair = np.stack([one_view(images, rngs), one_view(images, rngs)], axis=1)
    if not local_crops:
      return pair
    local = np.stack([simclr_view(images, rngs, local_image_size, min_scale=lo, max_scale=hi)
                      for _ in range(local_crops)], axis=1)
    return {"image": pair, "local": local}

  return ArrayDataset(train=train, eval=evaluation, num_classes=num_classes,
                      preprocess_train=preprocess_train, preprocess_eval=lambda x, rng: x,
                      views=views, local_views=local_crops)
