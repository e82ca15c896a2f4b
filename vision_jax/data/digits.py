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


def simclr_view(images: np.ndarray, rngs, image_size: int, *, min_scale: float = 0.4,
                jitter: float = 0.4, jitter_prob: float = 0.8, noise: float = 0.1,
                erase_prob: float = 0.5) -> np.ndarray:
  """One SimCLR-style random view of each raw digit, as float32 [N, image_size, image_size, 1].

  The greyscale analogue of SimCLR's ImageNet chain (there is no colour to
  jitter and a flipped digit is another symbol, so neither flips nor hue are used):
  1. random resized crop: area scale in [min_scale, 1], aspect ratio in
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
  area = min_scale + (1.0 - min_scale) * draws[:, 0]
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
