"""timm's evaluation resize and crop, with the same output sizes and crop offsets.

timm evaluates at `input_size` after resizing to floor(input_size / crop_pct):
  center: the shorter side to that size (the longer one truncated, as
          torchvision's Resize(int) does), then a centre crop whose offset is
          round((H - size) / 2);
  squash: both sides to that size (aspect ratio lost), then the centre crop.
PIL resizes with an antialiasing (widened) kernel, so `tf.image.resize` is
called with antialias=True and its result rounded to uint8, as PIL stores it.
A plain "resize_small|central_crop" rounds sizes and offsets differently and
shifts the crop by a pixel.
"""

from __future__ import annotations

import math

import tensorflow as tf

from vision_jax.data.ops.geometry import check_method, ensure_decoded, resize_to
from vision_jax.data.ops.registry import register

CROP_MODES = ("center", "squash")


@register("timm_resize_crop")
def timm_resize_crop(size: int, crop_pct: float = 0.875, crop_mode: str = "center",
                     method: str = "bicubic"):
  """timm's eval geometry: resize to floor(size / crop_pct) (shorter side, or both sides when
  crop_mode='squash'), then a centre crop of size x size."""
  if not isinstance(size, int) or size <= 0:
    raise ValueError(f"size must be a positive int, not {size!r}.")
  if not 0.0 < float(crop_pct) <= 1.0 + 1e-9:
    raise ValueError(f"crop_pct must be in (0, 1], not {crop_pct!r}.")
  if crop_mode not in CROP_MODES:
    raise ValueError(f"crop_mode must be one of {CROP_MODES}, not {crop_mode!r}.")
  check_method(method)
  scale = math.floor(size / float(crop_pct))

  def op(image, seed):
    del seed
    image = ensure_decoded(image)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    if crop_mode == "squash":
      new_h = new_w = tf.constant(scale, tf.int32)
    else:
      # torchvision Resize(int): the shorter side becomes `scale`, the longer one
      # int(scale * long / short) (truncated).
      short, long_ = tf.minimum(h, w), tf.maximum(h, w)
      other = tf.cast(tf.cast(scale, tf.float64) * tf.cast(long_, tf.float64)
                      / tf.cast(short, tf.float64), tf.int32)
      new_h = tf.where(h <= w, scale, other)
      new_w = tf.where(h <= w, other, scale)
    resized = resize_to(image, tf.stack([new_h, new_w]), method, antialias=True)
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float64) / 2.0), tf.int32)
    return resized[top:top + size, left:left + size]

  return op
