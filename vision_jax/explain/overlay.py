"""Heatmaps over images as RGB uint8 arrays (no plotting library needed)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# Matplotlib's 'jet' as piecewise-linear control points per channel: (position, value).
_JET = {
    "r": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "g": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "b": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}


def heatmap_to_rgb(heatmap: Any) -> np.ndarray:
  """A [H, W] map with values in [0, 1] (clipped) -> [H, W, 3] uint8 'jet' colours."""
  h = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)
  channels = []
  for c in "rgb":
    xs, ys = zip(*_JET[c])
    channels.append(np.interp(h, xs, ys))
  return np.round(np.stack(channels, -1) * 255).astype(np.uint8)


def to_uint8_image(image: Any, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None) -> np.ndarray:
  """A model input back to a displayable [H, W, 3] uint8 image.

  Args:
    image: [H, W, C] array: uint8, floats in [0, 1], or normalised floats when
      `mean` and `std` are given. One channel is repeated to three.
    mean: per-channel mean the image was normalised with.
    std: per-channel std the image was normalised with.
  """
  x = np.asarray(image)
  if x.dtype != np.uint8:
    x = x.astype(np.float32)
    if mean is not None and std is not None:
      x = x * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    x = np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
  if x.ndim == 2:
    x = x[..., None]
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  return x


def overlay(image: Any, heatmap: Any, alpha: float = 0.5, mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None) -> np.ndarray:
  """Blends a [0, 1] heatmap over an image: (1 - alpha) image + alpha jet(heatmap), uint8 RGB.

  The heatmap must have the image's height and width (use `upsample=True`).
  """
  rgb = to_uint8_image(image, mean, std)
  heat = heatmap_to_rgb(heatmap)
  if heat.shape[:2] != rgb.shape[:2]:
    raise ValueError(f"heatmap {heat.shape[:2]} and image {rgb.shape[:2]} differ in size; "
                     "compute the map with upsample=True.")
  blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)
  return np.round(blended).astype(np.uint8)
