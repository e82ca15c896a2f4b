"""Heatmaps over images as RGB uint8 arrays (no plotting library needed).

`overlay` draws a map over the model input it was computed on. `input_window`,
`map_to_photo`, `orient` and `photo_overlay` put it back on the photograph the
input was cut from: at the photograph's size and aspect ratio (the eval resize
and centre crop undone, the part the model did not see marked), turned as its
EXIF orientation shows it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
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


# ---------------------------------------------------------------------------
# Back onto the photograph: undo the eval resize and crop, then the EXIF turn.

# Image ops that leave the pixel grid where it is (values and colours).
_GRID_KEEPING_OPS = frozenset({"decode", "value_range", "normalize", "color_jitter",
                               "random_grayscale", "gaussian_blur", "solarize"})


class PlacementError(ValueError):
  """The preprocessing moves pixels in a way that cannot be undone onto the photograph."""


@dataclasses.dataclass(frozen=True)
class InputWindow:
  """Where the model's input lies on the stored photograph.

  The input of `input_height` x `input_width` pixels covers the rectangle
  [top, top + height) x [left, left + width) of the photograph, in the
  photograph's own pixels (floats: a resize makes fractional edges). Parts of
  the rectangle may lie outside the photograph (after `pad`).
  """

  top: float
  left: float
  height: float
  width: float
  input_height: int
  input_width: int


def input_window(preprocess: str, height: int, width: int) -> InputWindow:
  """Follows the geometry of an eval op string over a photograph of height x width.

  Args:
    preprocess: the op string that made the model input (e.g. the run's
      preprocess_eval, or `eval_preprocess(...)` of converted weights).
    height: the stored photograph's height (as decoded, before any EXIF turn).
    width: its width.

  Returns:
    The rectangle of the photograph that the model input covers.

  Raises:
    PlacementError: a random geometric op (a crop, a flip), an op whose geometry
      is not known here, or a crop larger than the image.
  """
  # pylint: disable=import-outside-toplevel
  from vision_jax.data.opstring import parse
  from vision_jax.data.ops.geometry import as_size
  top, left = 0.0, 0.0
  step_y, step_x = 1.0, 1.0  # photograph pixels per current pixel
  h, w = int(height), int(width)
  for call in parse(preprocess):
    info, args = _bind(call)
    name = call.name
    if info.on != "image" or args.pop("key", "image") != "image" or name in _GRID_KEEPING_OPS:
      continue  # labels, other features, or values only
    if info.random:
      raise PlacementError(f"the preprocessing has {call.text!r}, which moves pixels at random: "
                           "the map cannot be placed on the photograph; draw it at the model's "
                           "input size instead (--size input).")
    if name == "resize":
      new_h, new_w = as_size(args["size"])
    elif name == "resize_small":
      # As the op computes it: float32 scale, rounded sizes, at least `size`.
      size = args["size"]
      scale = np.float32(size) / np.float32(min(h, w))
      new_h = max(int(np.round(np.float32(h) * scale)), size)
      new_w = max(int(np.round(np.float32(w) * scale)), size)
    elif name == "timm_resize_crop":
      size = args["size"]
      scale = math.floor(size / float(args.get("crop_pct", 0.875)))
      if args.get("crop_mode", "center") == "squash":
        new_h = new_w = scale
      else:
        other = int(scale * max(h, w) / min(h, w))
        new_h, new_w = (scale, other) if h <= w else (other, scale)
      step_y, step_x = step_y * h / new_h, step_x * w / new_w
      crop_top, crop_left = int(np.round((new_h - size) / 2)), int(np.round((new_w - size) / 2))
      top, left = top + crop_top * step_y, left + crop_left * step_x
      h, w = size, size
      continue
    elif name == "central_crop":
      crop_h, crop_w = as_size(args["size"])
      if crop_h > h or crop_w > w:
        raise PlacementError(f"{call.text!r} crops {crop_h}x{crop_w} out of a {h}x{w} image.")
      top, left = top + (h - crop_h) // 2 * step_y, left + (w - crop_w) // 2 * step_x
      h, w = crop_h, crop_w
      continue
    elif name == "pad":
      amount = args["amount"]
      amount = (amount,) * 4 if isinstance(amount, int) else amount
      pad_top, pad_bottom, pad_left, pad_right = amount
      top, left = top - pad_top * step_y, left - pad_left * step_x
      h, w = h + pad_top + pad_bottom, w + pad_left + pad_right
      continue
    else:
      raise PlacementError(f"the preprocessing has {call.text!r}, whose geometry is not known "
                           "here: the map cannot be placed on the photograph; draw it at the "
                           "model's input size instead (--size input).")
    step_y, step_x = step_y * h / new_h, step_x * w / new_w
    h, w = new_h, new_w
  return InputWindow(top, left, step_y * h, step_x * w, h, w)


def _bind(call) -> tuple[Any, dict[str, Any]]:
  """An op's registration and its call's arguments by name, defaults filled in (plus `key`)."""
  # pylint: disable=import-outside-toplevel
  from vision_jax.data.errors import PreprocessError
  from vision_jax.data.ops import registry
  try:
    info = registry.op_info(call.name)
  except PreprocessError as e:
    raise PlacementError(str(e)) from None
  kwargs = dict(call.kwargs)
  key = kwargs.pop("key", info.on)
  try:
    bound = inspect.signature(info.factory).bind(*call.args, **kwargs)
  except TypeError as e:
    raise PlacementError(f"bad arguments in {call.text!r}: {e}.") from None
  bound.apply_defaults()
  return info, dict(bound.arguments, key=key)


def map_to_photo(heatmap: Any, window: InputWindow, height: int, width: int) -> np.ndarray:
  """Resamples an input-sized map onto the stored photograph's pixel grid.

  Each photograph pixel whose centre lies inside `window` gets the map's value
  there, interpolated bilinearly between input pixel centres (half-pixel
  convention, as the resizes of the pipeline); the others, which the model did
  not see, get NaN.

  Args:
    heatmap: [input_height, input_width] map.
    window: where the input lies on the photograph (`input_window`).
    height: the photograph's height.
    width: its width.

  Returns:
    float32 [height, width], NaN outside the window.
  """
  heat = np.asarray(heatmap, np.float32)
  if heat.shape != (window.input_height, window.input_width):
    raise ValueError(f"the map is {heat.shape[0]}x{heat.shape[1]} but the model input is "
                     f"{window.input_height}x{window.input_width}; compute it with upsample=True.")
  rows, row_seen = _axis_weights(height, window.top, window.height, window.input_height)
  cols, col_seen = _axis_weights(width, window.left, window.width, window.input_width)
  out = rows @ heat @ cols.T
  out[~row_seen, :] = np.nan
  out[:, ~col_seen] = np.nan
  return out


def _axis_weights(n: int, start: float, extent: float, size: int) -> tuple[np.ndarray, np.ndarray]:
  """[n, size] linear-interpolation weights from input pixels to photograph pixels on one axis,
  and which photograph pixels fall inside the input."""
  centres = np.arange(n, dtype=np.float64) + 0.5
  seen = (centres >= start) & (centres < start + extent)
  u = np.clip((centres - start) * size / extent - 0.5, 0.0, size - 1.0)
  lo = np.floor(u).astype(np.int64)
  hi = np.minimum(lo + 1, size - 1)
  frac = u - lo
  weights = np.zeros((n, size), np.float32)
  weights[np.arange(n), lo] += 1.0 - frac
  weights[np.arange(n), hi] += frac
  return weights, seen


# EXIF Orientation -> the turn that shows the stored pixels upright, as
# PIL.ImageOps.exif_transpose does it (np.rot90 turns counter-clockwise).
_ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def orient(array: Any, orientation: int) -> np.ndarray:
  """Turns a stored-pixel array ([H, W] or [H, W, C]) as EXIF `orientation` (1..8) displays it."""
  return np.ascontiguousarray(_ORIENT.get(int(orientation), _ORIENT[1])(np.asarray(array)))


def read_photo(path: str) -> tuple[np.ndarray, int]:
  """A photograph's stored pixels as uint8 RGB [H, W, 3] and its EXIF orientation (1 if none).

  The stored pixels are the grid the data pipeline decodes (TensorFlow ignores
  EXIF), so the model input is cut from them; `orient` then turns a result the
  way a viewer shows the photograph.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(path) as image:
    orientation = int(image.getexif().get(0x0112, 1) or 1)
    rgb = np.asarray(image.convert("RGB"))
  return rgb, orientation if orientation in _ORIENT else 1


def photo_overlay(photo: Any, heatmap: Any, alpha: float = 0.5, unseen: float = 0.35) -> np.ndarray:
  """Blends a photograph-sized map over the photograph; NaN pixels (not seen) are darkened.

  Args:
    photo: [H, W, 3] uint8.
    heatmap: [H, W] in [0, 1], NaN where the model saw nothing (`map_to_photo`).
    alpha: heatmap opacity.
    unseen: brightness kept where the map is NaN, so the region the model did
      not see reads as dimmed.
  """
  rgb = to_uint8_image(photo).astype(np.float32)
  heat = np.asarray(heatmap, np.float32)
  if heat.shape != rgb.shape[:2]:
    raise ValueError(f"heatmap {heat.shape} and photograph {rgb.shape[:2]} differ in size.")
  seen = np.isfinite(heat)
  colours = heatmap_to_rgb(np.where(seen, heat, 0.0)).astype(np.float32)
  blended = np.where(seen[..., None], (1.0 - alpha) * rgb + alpha * colours, unseen * rgb)
  return np.round(blended).astype(np.uint8)
