"""Random erasing (Zhong et al., "Random Erasing Data Augmentation", arXiv:1708.04896).

With probability `prob`, one rectangle of the image is replaced by noise or a
constant, which the ConvNeXt, DeiT and MaxViT recipes train with. The rectangle
is drawn as timm's `RandomErasing` draws it: an area fraction uniform in
[min_area, max_area], a log-uniform aspect ratio (height / width) in
[min_aspect, max_aspect], side lengths rounded to whole pixels, up to 10 tries
for a rectangle strictly smaller than the image (none fits: nothing is erased),
and a corner uniform over the positions where it fits. timm erases after
normalisation, so its noise is standard normal in normalised units; this op
therefore wants a float image and belongs after `normalize` in the chain.
"""

from __future__ import annotations

import math

import tensorflow as tf

from vision_jax.data.errors import PreprocessError
from vision_jax.data.ops.registry import register

_MODES = ("pixel", "rand", "const")
# timm tries this many rectangles before giving up on an image.
_ATTEMPTS = 10


def _number(value: float, name: str) -> float:
  if not isinstance(value, (int, float)) or isinstance(value, bool):
    raise ValueError(f"{name} must be a number, not {value!r}.")
  return float(value)


@register("random_erasing", random=True)
def random_erasing(prob: float, min_area: float = 0.02, max_area: float = 1 / 3,
                   min_aspect: float = 0.3, max_aspect: float | None = None,
                   mode: str = "pixel"):
  """Erases a random rectangle with probability `prob` (timm's RandomErasing; float images).

  Args:
    prob: probability that an image is erased at all (ConvNeXt's recipe: 0.25).
    min_area: smallest area of the rectangle, as a fraction of the image's.
    max_area: largest area fraction.
    min_aspect: smallest height / width ratio.
    max_aspect: largest ratio; None is 1 / min_aspect, as timm.
    mode: 'pixel' (an independent standard normal value per pixel and channel, timm's
      `--remode pixel` that the recipes use), 'rand' (one normal value per channel for
      the whole rectangle) or 'const' (zeros, the mean once normalised).

  Returns:
    The op (image, seed) -> image, same shape and dtype.
  """
  prob = _number(prob, "prob")
  min_area, max_area = _number(min_area, "min_area"), _number(max_area, "max_area")
  min_aspect = _number(min_aspect, "min_aspect")
  if not 0.0 <= prob <= 1.0:
    raise ValueError(f"prob must be in [0, 1], not {prob}.")
  if not 0.0 < min_area <= max_area <= 1.0:
    raise ValueError(f"need 0 < min_area <= max_area <= 1 (fractions of the image's area), "
                     f"not min_area={min_area}, max_area={max_area}.")
  if max_aspect is None:
    max_aspect = 1.0 / min_aspect if min_aspect > 0 else min_aspect
  max_aspect = _number(max_aspect, "max_aspect")
  if not 0.0 < min_aspect <= max_aspect:
    raise ValueError(f"need 0 < min_aspect <= max_aspect (height / width ratios), not "
                     f"min_aspect={min_aspect}, max_aspect={max_aspect}.")
  if mode not in _MODES:
    raise ValueError(f"mode must be one of {_MODES}, not {mode!r}.")
  log_aspect = (math.log(min_aspect), math.log(max_aspect))

  def op(image, seed):
    if not image.dtype.is_floating:
      raise PreprocessError(
          f"random_erasing needs a float image (normalised values), not {image.dtype.name}; "
          "put it after value_range(...) or normalize(...) in the op string.")
    seeds = tf.random.experimental.stateless_split(seed, 5)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    erase = tf.random.stateless_uniform([], seeds[0]) < prob
    area = tf.cast(height * width, tf.float32)
    target = tf.random.stateless_uniform([_ATTEMPTS], seeds[1], min_area, max_area) * area
    aspect = tf.exp(tf.random.stateless_uniform([_ATTEMPTS], seeds[2], *log_aspect))
    # Python's round() and tf.round both round halves to even.
    heights = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    widths = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (heights < height) & (widths < width)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)  # the first try that fits
    h, w = heights[first], widths[first]
    erase &= tf.reduce_any(fits)
    # Corners uniform over 0..height-h and 0..width-w inclusive (timm's randint).
    corner = tf.random.stateless_uniform([2], seeds[3])
    top = tf.minimum(tf.cast(corner[0] * tf.cast(height - h + 1, tf.float32), tf.int32),
                     height - h)
    left = tf.minimum(tf.cast(corner[1] * tf.cast(width - w + 1, tf.float32), tf.int32),
                      width - w)
    rows, cols = tf.range(height), tf.range(width)
    inside = (((rows >= top) & (rows < top + h))[:, None]
              & ((cols >= left) & (cols < left + w))[None, :])
    mask = (inside & erase)[:, :, None]
    if mode == "pixel":
      fill = tf.random.stateless_normal(shape, seeds[4], dtype=image.dtype)
    elif mode == "rand":
      fill = tf.random.stateless_normal(tf.stack([1, 1, shape[2]]), seeds[4], dtype=image.dtype)
    else:
      fill = tf.zeros([], image.dtype)
    return tf.where(mask, fill, image)

  return op
