"""Value ops (pixel ranges, normalisation) and label ops.

Until a value op runs, pixels are in [0, 255] (uint8, or float32 after the colour
ops); `value_range` and `normalize` return float32.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from vision_jax.data.ops.geometry import ensure_decoded
from vision_jax.data.ops.registry import register


def _floats(value: float | Sequence[float], name: str) -> tuple[float, ...]:
  values = value if isinstance(value, (tuple, list)) else (value,)
  if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    raise ValueError(f"{name} must be a number or a list of numbers, not {value!r}.")
  return tuple(float(v) for v in values)


@register("value_range")
def value_range(vmin: float = -1.0, vmax: float = 1.0, in_min: float = 0.0,
                in_max: float = 255.0, clip: bool = False):
  """Maps pixel values linearly from [in_min, in_max] to [vmin, vmax] (float32)."""
  for name, v in (("vmin", vmin), ("vmax", vmax), ("in_min", in_min), ("in_max", in_max)):
    _floats(v, name)
  if in_max == in_min:
    raise ValueError("in_max must differ from in_min.")
  scale = (vmax - vmin) / (in_max - in_min)

  def op(image, seed):
    del seed
    x = tf.cast(ensure_decoded(image), tf.float32)
    x = (x - in_min) * scale + vmin
    return tf.clip_by_value(x, min(vmin, vmax), max(vmin, vmax)) if clip else x

  return op


@register("normalize")
def normalize(mean: float | Sequence[float], std: float | Sequence[float]):
  """(x - mean) / std per channel (float32), in the input's scale (e.g. after value_range(0, 1))."""
  mean, std = _floats(mean, "mean"), _floats(std, "std")
  if any(s == 0 for s in std):
    raise ValueError("std must not contain 0.")

  def op(image, seed):
    del seed
    x = tf.cast(ensure_decoded(image), tf.float32)
    return (x - tf.constant(mean)) / tf.constant(std)

  return op


@register("onehot", on="label")
def onehot(depth: int, on: float = 1.0, off: float = 0.0):
  """Integer label -> float32 one-hot of `depth` (training only: eval needs integer labels)."""
  if not isinstance(depth, int) or depth <= 0:
    raise ValueError(f"depth must be a positive int, not {depth!r}.")

  def op(label, seed):
    del seed
    return tf.one_hot(tf.cast(label, tf.int32), depth, on_value=float(on), off_value=float(off),
                      dtype=tf.float32)

  return op


@register("keep", on=None)
def keep(*keys: str):
  """Keeps only the named features (at the end of a chain it replaces the default image+label)."""
  if not keys or not all(isinstance(k, str) for k in keys):
    raise ValueError(f"keep needs one or more feature names, got {keys!r}.")

  def op(features, seed):
    del seed
    missing = [k for k in keys if k not in features]
    if missing:
      raise KeyError(f"keep{keys}: the example has no {missing}; it has {sorted(features)}.")
    return {k: features[k] for k in keys}

  return op
