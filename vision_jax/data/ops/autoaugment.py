"""Augmentation policies: RandAugment (Cubuk et al. 2019), ImageNet AutoAugment (Cubuk et al. 2018).

Both act on uint8 RGB images (float input in [0, 255] is rounded first) and
return uint8; put them after the crop and before `value_range`::

  decode|inception_crop(224)|flip_lr|randaugment(2, 9)|value_range(-1, 1)

The image transforms and the magnitude scale follow the TPU EfficientNet
implementation that these recipes were tuned with: a level in [0, 10] maps to
rotations of up to 30 degrees, shears of up to 0.3, translations of up to
`translate_const` pixels (each with a random sign), enhancement factors in
[0.1, 1.9], solarize thresholds in [0, 256], additions up to 110, and cutout
squares of side up to 2 * `cutout_const`; geometric transforms and cutout fill
with grey (128). Two deliberate differences: `Posterize` keeps 4 + 4 * level / 10
bits, the range the AutoAugment paper gives (the TF code keeps 4 * level / 10,
which blanks the image at low levels), and `Contrast` blends towards the true
mean grey level.

In `randaugment` each of the `num_layers` steps applies one op drawn uniformly
from the 16 below, always, at the fixed `magnitude`. In `autoaugment` one of the
25 sub-policies is drawn, and each of its two ops is applied with its own
probability and level.
"""

from __future__ import annotations

import math

import tensorflow as tf

from vision_jax.data.ops.geometry import ensure_decoded
from vision_jax.data.ops.registry import register

MAX_LEVEL = 10.0
FILL = 128

RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
                   "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
                   "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")

# The ImageNet policy of AutoAugment as used to train EfficientNet ("v0"):
# 25 sub-policies of two (op, probability, level) steps.
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)
POLICIES = {"v0": POLICY_V0}


# ---------------------------------------------------------------------------
# Image transforms on uint8 [H, W, C].
# ---------------------------------------------------------------------------
def to_uint8(image: tf.Tensor) -> tf.Tensor:
  image = ensure_decoded(image)
  if image.dtype == tf.uint8:
    return image
  return tf.cast(tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0, 255), tf.uint8)


def blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
  """degenerate + factor * (image - degenerate), clipped: factor 0 -> degenerate, 1 -> image."""
  d = tf.cast(degenerate, tf.float32)
  out = d + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - d)
  return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel to span 0..255 (channels of one value are left alone)."""
  x = tf.cast(image, tf.float32)
  lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
  spread = hi > lo
  scale = tf.where(spread, 255.0 / tf.maximum(hi - lo, 1e-6), 1.0)
  offset = tf.where(spread, -lo * scale, 0.0)
  return tf.cast(tf.clip_by_value(x * scale + offset, 0.0, 255.0), tf.uint8)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
  values = tf.cast(channel, tf.int32)
  hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
  last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))
  step = (tf.reduce_sum(hist) - last) // 255
  lut = (tf.cumsum(hist) + step // 2) // tf.maximum(step, 1)
  lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
  return tf.cast(tf.where(step > 0, tf.gather(lut, values), values), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Histogram equalisation of each channel (as PIL's ImageOps.equalize)."""
  return tf.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255 - image


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
  """Keeps the `bits` most significant bits of each value."""
  step = 2 ** (8 - int(bits))
  return tf.cast(tf.cast(image, tf.int32) // step * step, tf.uint8)


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
  """Inverts the values at or above `threshold`."""
  return tf.where(tf.cast(image, tf.int32) < tf.cast(threshold, tf.int32), image, 255 - image)


def solarize_add(image: tf.Tensor, addition, threshold: int = 128) -> tf.Tensor:
  """Adds `addition` to the values below `threshold` (clipped)."""
  values = tf.cast(image, tf.int32)
  added = tf.cast(tf.clip_by_value(values + tf.cast(addition, tf.int32), 0, 255), tf.uint8)
  return tf.where(values < threshold, added, image)


def _grey(image: tf.Tensor) -> tf.Tensor:
  return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def color(image: tf.Tensor, factor) -> tf.Tensor:
  """Saturation: 0 is greyscale, 1 the image (PIL ImageEnhance.Color)."""
  return blend(_grey(image), image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
  """Contrast: 0 is the mean grey level everywhere, 1 the image."""
  mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
  return blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
  """Brightness: 0 is black, 1 the image."""
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
  """Sharpness: 0 is PIL's SMOOTH-filtered image (border pixels kept), 1 the image."""
  channels = image.shape[-1]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
  smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1],
                                  "VALID")[0]
  smooth = tf.cast(tf.clip_by_value(tf.round(smooth), 0.0, 255.0), tf.uint8)
  inner = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.where(inner, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
  return blend(degenerate, image, factor)


def _project(image: tf.Tensor, transform) -> tf.Tensor:
  """Output pixel (x, y) takes the input at ((a0 x + a1 y + a2), (b0 x + b1 y + b2)); grey fill."""
  matrix = tf.reshape(tf.cast(tf.stack(transform), tf.float32), [1, 8])
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=matrix, output_shape=tf.shape(image)[:2],
      fill_value=tf.constant(float(FILL)), interpolation="NEAREST", fill_mode="CONSTANT")
  return tf.ensure_shape(out[0], image.shape)


def rotate(image: tf.Tensor, degrees) -> tf.Tensor:
  """Rotates about the centre by `degrees`."""
  theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  shape = tf.cast(tf.shape(image), tf.float32)
  cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
  cos, sin = tf.cos(theta), tf.sin(theta)
  return _project(image, [cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])


def shear_x(image: tf.Tensor, level) -> tf.Tensor:
  return _project(image, [1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def shear_y(image: tf.Tensor, level) -> tf.Tensor:
  return _project(image, [1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0])


def translate_x(image: tf.Tensor, pixels) -> tf.Tensor:
  return _project(image, [1.0, 0.0, -pixels, 0.0, 1.0, 0.0, 0.0, 0.0])


def translate_y(image: tf.Tensor, pixels) -> tf.Tensor:
  return _project(image, [1.0, 0.0, 0.0, 0.0, 1.0, -pixels, 0.0, 0.0])


def cutout(image: tf.Tensor, half_size: int, seed: tf.Tensor) -> tf.Tensor:
  """Fills a square of side 2 * half_size (clipped at the borders) centred uniformly with grey."""
  shape = tf.shape(image)
  centre = tf.cast(tf.floor(tf.random.stateless_uniform([2], seed) *
                            tf.cast(shape[:2], tf.float32)), tf.int32)
  rows = tf.range(shape[0])
  cols = tf.range(shape[1])
  inside_r = (rows >= centre[0] - half_size) & (rows < centre[0] + half_size)
  inside_c = (cols >= centre[1] - half_size) & (cols < centre[1] + half_size)
  inside = (inside_r[:, None] & inside_c[None, :])[:, :, None]
  return tf.where(inside, tf.constant(FILL, tf.uint8), image)


def _signed(value: float, seed: tf.Tensor) -> tf.Tensor:
  return tf.where(tf.random.stateless_uniform([], seed) < 0.5, -value, value)


def apply_named(name: str, image: tf.Tensor, level: float, seed: tf.Tensor,
                translate_const: float, cutout_const: float) -> tf.Tensor:
  """Applies the policy op `name` at `level` (0..10) to a uint8 image."""
  frac = level / MAX_LEVEL
  enhance = frac * 1.8 + 0.1
  if name == "AutoContrast":
    return autocontrast(image)
  if name == "Equalize":
    return equalize(image)
  if name == "Invert":
    return invert(image)
  if name == "Rotate":
    return rotate(image, _signed(frac * 30.0, seed))
  if name == "Posterize":
    return posterize(image, 4 + int(frac * 4))
  if name == "Solarize":
    return solarize(image, int(frac * 256))
  if name == "SolarizeAdd":
    return solarize_add(image, int(frac * 110))
  if name == "Color":
    return color(image, enhance)
  if name == "Contrast":
    return contrast(image, enhance)
  if name == "Brightness":
    return brightness(image, enhance)
  if name == "Sharpness":
    return sharpness(image, enhance)
  if name == "ShearX":
    return shear_x(image, _signed(frac * 0.3, seed))
  if name == "ShearY":
    return shear_y(image, _signed(frac * 0.3, seed))
  if name == "TranslateX":
    return translate_x(image, _signed(frac * translate_const, seed))
  if name == "TranslateY":
    return translate_y(image, _signed(frac * translate_const, seed))
  if name == "Cutout":
    return cutout(image, int(frac * cutout_const), seed)
  raise ValueError(f"Unknown policy op {name!r}.")


def _check_rgb(image: tf.Tensor, op: str) -> tf.Tensor:
  image = to_uint8(image)
  if image.shape.rank != 3 or image.shape[-1] != 3:
    raise ValueError(f"{op} needs an RGB image [H, W, 3], got shape {image.shape}.")
  return image


@register("randaugment", random=True)
def randaugment(num_layers: int = 2, magnitude: float = 10, translate_const: float = 100,
                cutout_const: float = 40):
  """RandAugment: `num_layers` ops drawn uniformly from 16, each at `magnitude` (0..10 scale)."""
  if not isinstance(num_layers, int) or num_layers < 0:
    raise ValueError(f"num_layers must be a non-negative int, not {num_layers!r}.")
  if not isinstance(magnitude, (int, float)) or magnitude < 0:
    raise ValueError(f"magnitude must be a non-negative number, not {magnitude!r}.")

  def op(image, seed):
    x = _check_rgb(image, "randaugment")
    seeds = tf.random.experimental.stateless_split(seed, 2 * max(num_layers, 1))
    for layer in range(num_layers):
      index = tf.random.stateless_uniform([], seeds[2 * layer], 0, len(RANDAUGMENT_OPS),
                                          dtype=tf.int32)
      branches = [
          lambda name=name, x=x, s=seeds[2 * layer + 1]: apply_named(
              name, x, float(magnitude), s, translate_const, cutout_const)
          for name in RANDAUGMENT_OPS]
      x = tf.switch_case(index, branches)
    return x

  return op


@register("autoaugment", random=True)
def autoaugment(policy: str = "v0", translate_const: float = 250, cutout_const: float = 100):
  """AutoAugment with the ImageNet policy used by EfficientNet ("v0")."""
  if policy not in POLICIES:
    raise ValueError(f"policy must be one of {sorted(POLICIES)}, not {policy!r}.")
  subpolicies = POLICIES[policy]

  def op(image, seed):
    x = _check_rgb(image, "autoaugment")
    seeds = tf.random.experimental.stateless_split(seed, 5)
    index = tf.random.stateless_uniform([], seeds[0], 0, len(subpolicies), dtype=tf.int32)

    def run(subpolicy):
      y = x
      for j, (name, prob, level) in enumerate(subpolicy):
        apply = tf.random.stateless_uniform([], seeds[1 + 2 * j]) < prob
        y = tf.cond(apply,
                    lambda y=y, name=name, level=level, s=seeds[2 + 2 * j]: apply_named(
                        name, y, float(level), s, translate_const, cutout_const),
                    lambda y=y: y)
      return y

    return tf.switch_case(index, [lambda sp=sp: run(sp) for sp in subpolicies])

  return op
