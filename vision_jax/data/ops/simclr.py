"""SimCLR's augmentations (Chen et al. 2020) and `two_views`.

The SimCLR training chain, on ImageNet::

  decode|two_views|inception_crop(224)|flip_lr|color_jitter(1.0)|random_grayscale(0.2)|
  gaussian_blur(0.5)|value_range(0, 1)

Everything after `two_views` runs twice with independent seeds; the result's
"image" is [2, H, W, C]. The colour ops take pixels in [0, 255] (uint8 or
float32) and return float32 in [0, 255]; they need 3 channels.
"""

from __future__ import annotations

import tensorflow as tf

from vision_jax.data.ops.geometry import ensure_decoded
from vision_jax.data.ops.registry import register


def _check_prob(prob: float) -> None:
  if not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
    raise ValueError(f"prob must be in [0, 1], not {prob!r}.")


def _unit(image: tf.Tensor) -> tf.Tensor:
  """[0, 255] pixels -> float32 in [0, 1]."""
  return tf.cast(ensure_decoded(image), tf.float32) / 255.0


def _with_prob(prob: float, seed: tf.Tensor, fn, x: tf.Tensor) -> tf.Tensor:
  if prob >= 1:
    return fn(x)
  if prob <= 0:
    return x
  return tf.cond(tf.random.stateless_uniform([], seed) < prob, lambda: fn(x), lambda: x)


@register("color_jitter", random=True)
def color_jitter(strength: float = 1.0, prob: float = 0.8, random_order: bool = True):
  """SimCLR colour distortion of strength s, applied with probability `prob`.

  Brightness (multiplicative) and contrast and saturation factors are drawn from
  [1 - 0.8 s, 1 + 0.8 s], the hue shift from [-0.2 s, 0.2 s]; the four are
  applied in a random order (SimCLR v2's `color_jitter`).
  """
  if not isinstance(strength, (int, float)) or strength < 0:
    raise ValueError(f"strength must be a non-negative number, not {strength!r}.")
  _check_prob(prob)
  amount = 0.8 * strength
  hue = min(0.2 * strength, 0.5)

  def op(image, seed):
    seeds = tf.random.experimental.stateless_split(seed, 6)

    def factor(s):
      return tf.random.stateless_uniform([], s, max(0.0, 1.0 - amount), 1.0 + amount)

    transforms = [
        lambda x: x * factor(seeds[2]),
        lambda x: tf.image.adjust_contrast(x, factor(seeds[3])),
        lambda x: tf.image.adjust_saturation(x, factor(seeds[4])),
        lambda x: tf.image.adjust_hue(x, tf.random.stateless_uniform([], seeds[5], -hue, hue)),
    ]

    def jitter(x):
      if random_order:
        order = tf.argsort(tf.random.stateless_uniform([4], seeds[1]))
      else:
        order = tf.range(4)
      for i in range(4):
        x = tf.switch_case(order[i], [lambda t=t: t(x) for t in transforms])
        x = tf.clip_by_value(x, 0.0, 1.0)
      return x

    return _with_prob(prob, seeds[0], jitter, _unit(image)) * 255.0

  return op


@register("random_grayscale", random=True)
def random_grayscale(prob: float = 0.2):
  """Replaces the image by its greyscale version (3 channels) with probability `prob`."""
  _check_prob(prob)

  def op(image, seed):
    x = tf.cast(ensure_decoded(image), tf.float32)
    return _with_prob(prob, seed, lambda x: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), x)

  return op


@register("gaussian_blur", random=True)
def gaussian_blur(prob: float = 0.5, sigma_min: float = 0.1, sigma_max: float = 2.0,
                  kernel_frac: float = 0.1):
  """Gaussian blur with sigma drawn from [sigma_min, sigma_max], with probability `prob`.

  The kernel spans `kernel_frac` of the image height (SimCLR: 10%), made odd;
  borders are reflected.
  """
  _check_prob(prob)
  if not 0 < sigma_min <= sigma_max:
    raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}.")
  if not 0 < kernel_frac < 1:
    raise ValueError(f"kernel_frac must be in (0, 1), not {kernel_frac!r}.")

  def op(image, seed):
    seeds = tf.random.experimental.stateless_split(seed, 2)
    x = tf.cast(ensure_decoded(image), tf.float32)

    def blur(x):
      sigma = tf.random.stateless_uniform([], seeds[1], sigma_min, sigma_max)
      height = tf.cast(tf.shape(x)[0], tf.float32)
      radius = tf.cast(height * kernel_frac, tf.int32) // 2
      r = tf.cast(tf.range(-radius, radius + 1), tf.float32)
      kernel = tf.exp(-tf.square(r) / (2.0 * tf.square(sigma)))
      kernel /= tf.reduce_sum(kernel)
      channels = x.shape[-1]
      padded = tf.pad(x[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                      mode="REFLECT")
      vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
      horizontal = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
      y = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID")
      y = tf.nn.depthwise_conv2d(y, horizontal, [1, 1, 1, 1], "VALID")
      return tf.ensure_shape(y[0], x.shape)

    return _with_prob(prob, seeds[0], blur, x)

  return op


@register("solarize", random=True)
def solarize(prob: float = 0.2, threshold: float = 128.0):
  """Inverts pixels at or above `threshold` (of 255), with probability `prob` (BYOL: 0.2)."""
  _check_prob(prob)

  def op(image, seed):
    x = tf.cast(ensure_decoded(image), tf.float32)
    return _with_prob(prob, seed, lambda x: tf.where(x < threshold, x, 255.0 - x), x)

  return op


@register("local_crops", on=None, random=True)
def local_crops(count: int):
  """DINO's multi-crop (Caron et al. 2021): the ops after it run `count` times on the
  features as they were before `two_views`, giving "local" [count, h, w, C]::

    decode|two_views|inception_crop(224, area_min=0.32)|...|
      local_crops(10)|inception_crop(96, area_min=0.05, area_max=0.32)|...

  The ops between `two_views` and `local_crops` make the two global crops.
  """

  def op(features, seed):
    raise RuntimeError("local_crops is handled by the chain (Preprocess); it is not an op.")

  op.count = count
  return op


@register("two_views", on=None, random=True)
def two_views():
  """Marks where the chain splits: the ops after it run twice, "image" becomes [2, H, W, C]."""

  def op(features, seed):
    raise RuntimeError("two_views is handled by the chain (Preprocess); it is not an op.")

  return op
