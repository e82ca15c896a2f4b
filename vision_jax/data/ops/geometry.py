"""Geometry ops: decoding, resizing, crops, flips, padding.

Images are [H, W, C] tensors. Decoded pixels stay uint8 (values 0..255) until a
value op (`value_range`, `normalize`) turns them into float32; resizes round
back to uint8 when given uint8, so the chain stays cheap to copy. The crop ops
also accept the encoded bytes: on a JPEG they decode only the crop window
(`tf.image.decode_and_crop_jpeg`, the fused path); other formats are decoded
first. Encoded inputs are decoded to 3 channels (greyscale is replicated, alpha
is dropped).
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from vision_jax.data.ops.registry import register

_METHODS = ("bilinear", "bicubic", "nearest", "area", "lanczos3", "lanczos5", "gaussian",
            "mitchellcubic")
# (shape [3] int32, seed) -> (top, left, height, width) int32 scalars.
WindowFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]]


def as_size(size: int | Sequence[int], what: str = "size") -> tuple[int, int]:
  """(height, width) from an int or a pair; ValueError unless positive integers."""
  if isinstance(size, int) and not isinstance(size, bool):
    size = (size, size)
  if (not isinstance(size, (tuple, list)) or len(size) != 2
      or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
    raise ValueError(f"{what} must be a positive int or a pair (height, width) of them, "
                     f"not {size!r}.")
  return int(size[0]), int(size[1])


def check_method(method: str) -> str:
  if method not in _METHODS:
    raise ValueError(f"method must be one of {_METHODS}, not {method!r}.")
  return method


def decode_image(contents: tf.Tensor, channels: int = 3) -> tf.Tensor:
  """Decodes JPEG, PNG, GIF (first frame) or BMP bytes to uint8 [H, W, channels]."""
  image = tf.io.decode_image(contents, channels=channels, expand_animations=False,
                             dtype=tf.uint8)
  return tf.ensure_shape(image, [None, None, channels])


def set_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
  """Converts a decoded image between 1, 3 and 4 channels (4 -> 3 drops alpha)."""
  have = image.shape[-1]
  if have is None:
    raise ValueError("The number of channels of the image must be known.")
  if have == channels:
    return image
  if have == 4:
    image, have = image[..., :3], 3
    if channels == 3:
      return image
  if have == 1 and channels == 3:
    return tf.image.grayscale_to_rgb(image)
  if have == 3 and channels == 1:
    return tf.image.rgb_to_grayscale(image)
  raise ValueError(f"Cannot convert an image with {have} channels to {channels}.")


def ensure_decoded(image: tf.Tensor, channels: int = 3) -> tf.Tensor:
  """Decodes encoded bytes; passes decoded images through."""
  return decode_image(image, channels) if image.dtype == tf.string else image


def resize_to(image: tf.Tensor, size: tf.Tensor | Sequence[int], method: str = "bilinear",
              antialias: bool = False) -> tf.Tensor:
  """Resizes to `size` = (height, width), keeping integer dtypes (rounded, saturated)."""
  dtype = image.dtype
  out = tf.image.resize(image, size, method=method, antialias=antialias)
  if dtype.is_integer:
    return tf.cast(tf.clip_by_value(tf.round(out), dtype.min, dtype.max), dtype)
  return tf.cast(out, dtype)


def crop_window(image: tf.Tensor, window_fn: WindowFn, seed: tf.Tensor) -> tf.Tensor:
  """Crops the window that `window_fn` picks for the image's shape.

  On encoded JPEG bytes only the window is decoded (fused decode-and-crop); other
  encoded formats are decoded, then cropped; decoded images are sliced.
  """
  if image.dtype != tf.string:
    top, left, height, width = window_fn(tf.shape(image), seed)
    # tf.slice with a dynamic size forgets the static channel count; later ops
    # (autoaugment, say) need it.
    return tf.ensure_shape(
        tf.slice(image, tf.stack([top, left, 0]), tf.stack([height, width, -1])),
        [None, None, image.shape[-1]])

  def fused():
    shape = tf.image.extract_jpeg_shape(image)
    window = tf.stack(window_fn(shape, seed))
    return tf.ensure_shape(tf.image.decode_and_crop_jpeg(image, window, channels=3),
                           [None, None, 3])

  def decode_then_crop():
    decoded = decode_image(image, 3)
    top, left, height, width = window_fn(tf.shape(decoded), seed)
    return tf.ensure_shape(
        tf.slice(decoded, tf.stack([top, left, 0]), tf.stack([height, width, -1])),
        [None, None, 3])

  return tf.cond(tf.io.is_jpeg(image), fused, decode_then_crop)


def _check_fits(shape: tf.Tensor, height: int, width: int, op: str) -> list:
  return [tf.debugging.assert_greater_equal(
      shape[:2], tf.constant([height, width], shape.dtype),
      message=f"{op}: the image is smaller than the crop; resize it first (e.g. resize_small)")]


@register("decode")
def decode(channels: int = 3):
  """Decodes encoded image bytes (JPEG/PNG/GIF/BMP) to uint8 with `channels` (1 or 3) channels."""
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, not {channels!r}.")

  def op(image, seed):
    del seed
    if image.dtype == tf.string:
      return decode_image(image, channels)
    return set_channels(image, channels)

  return op


@register("resize")
def resize(size: int | Sequence[int], method: str = "bilinear", antialias: bool = False):
  """Resizes to size (int: square) with `method`; uint8 stays uint8."""
  size = as_size(size)
  check_method(method)

  def op(image, seed):
    del seed
    return resize_to(ensure_decoded(image), size, method, antialias)

  return op


@register("resize_small")
def resize_small(size: int, method: str = "bilinear", antialias: bool = False):
  """Resizes so that the shorter side is `size`, keeping the aspect ratio."""
  if not isinstance(size, int) or size <= 0:
    raise ValueError(f"size must be a positive int, not {size!r}.")
  check_method(method)

  def op(image, seed):
    del seed
    image = ensure_decoded(image)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    return resize_to(image, new, method, antialias)

  return op


@register("central_crop")
def central_crop(size: int | Sequence[int]):
  """Crops the centre window of `size`; fused with decoding on JPEG bytes."""
  height, width = as_size(size)

  def window(shape, seed):
    del seed
    with tf.control_dependencies(_check_fits(shape, height, width, "central_crop")):
      top = (shape[0] - height) // 2
      left = (shape[1] - width) // 2
    return top, left, tf.constant(height, shape.dtype), tf.constant(width, shape.dtype)

  return lambda image, seed: crop_window(image, window, seed)


@register("random_crop", random=True)
def random_crop(size: int | Sequence[int]):
  """Crops a uniformly placed window of `size`; fused with decoding on JPEG bytes."""
  height, width = as_size(size)

  def window(shape, seed):
    with tf.control_dependencies(_check_fits(shape, height, width, "random_crop")):
      u = tf.random.stateless_uniform([2], seed)
    room = tf.cast(shape[:2] - tf.constant([height, width], shape.dtype) + 1, tf.float32)
    offset = tf.cast(tf.floor(u * room), shape.dtype)
    return offset[0], offset[1], tf.constant(height, shape.dtype), tf.constant(width, shape.dtype)

  return lambda image, seed: crop_window(image, window, seed)


@register("inception_crop", random=True)
def inception_crop(size: int | Sequence[int] | None = None, area_min: float = 0.08,
                   area_max: float = 1.0, ratio_min: float = 3 / 4, ratio_max: float = 4 / 3,
                   method: str = "bilinear", antialias: bool = False):
  """Random-resized crop (Szegedy et al. 2015): area and aspect ratio drawn, then resized to size.

  The window covers a fraction in [area_min, area_max] of the image with an
  aspect ratio in [ratio_min, ratio_max] (after 10 failed draws, the whole
  image). On JPEG bytes only the window is decoded.
  """
  if size is not None:
    size = as_size(size)
  if not 0 < area_min <= area_max <= 1:
    raise ValueError(f"need 0 < area_min <= area_max <= 1, got {area_min}, {area_max}.")
  if not 0 < ratio_min <= ratio_max:
    raise ValueError(f"need 0 < ratio_min <= ratio_max, got {ratio_min}, {ratio_max}.")
  check_method(method)

  def window(shape, seed):
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.zeros([1, 0, 4], tf.float32), seed=seed,
        min_object_covered=area_min, aspect_ratio_range=(ratio_min, ratio_max),
        area_range=(area_min, area_max), max_attempts=10, use_image_if_no_bounding_boxes=True)
    return begin[0], begin[1], extent[0], extent[1]

  def op(image, seed):
    crop = crop_window(image, window, seed)
    return crop if size is None else resize_to(crop, size, method, antialias)

  return op


@register("flip_lr", random=True)
def flip_lr(prob: float = 0.5):
  """Mirrors the image left-right with probability `prob`."""
  if not 0 <= prob <= 1:
    raise ValueError(f"prob must be in [0, 1], not {prob!r}.")

  def op(image, seed):
    image = ensure_decoded(image)
    flip = tf.random.stateless_uniform([], seed) < prob
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)

  return op


@register("pad")
def pad(amount: int | Sequence[int], value: float = 0):
  """Pads `amount` pixels (int, or (top, bottom, left, right)) of constant `value`."""
  if isinstance(amount, int) and not isinstance(amount, bool):
    amount = (amount,) * 4
  if (not isinstance(amount, (tuple, list)) or len(amount) != 4
      or not all(isinstance(a, int) and a >= 0 for a in amount)):
    raise ValueError(f"amount must be a non-negative int or 4 of them, not {amount!r}.")
  top, bottom, left, right = amount

  def op(image, seed):
    del seed
    image = ensure_decoded(image)
    return tf.pad(image, [[top, bottom], [left, right], [0, 0]],
                  constant_values=tf.cast(value, image.dtype))

  return op
