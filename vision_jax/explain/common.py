"""Pieces every attribution method shares: targets, channel reduction, resizing."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.explain.layers import ExplainError, family_of

# Stands for "the predicted class" inside the jitted functions, so that one
# compiled function serves both explicit targets and targets=None.
PREDICTED = -1

CHANNEL_REDUCTIONS = ("sum", "abs_sum", "abs_max", "l2")


def num_classes_of(module: nn.Module, variables: Any, images: Any) -> int:
  """Number of logits the model returns (read from the module, else from an abstract call)."""
  n = getattr(module, "num_classes", None)
  if isinstance(n, int):
    if n <= 0:
      raise ExplainError(f"{family_of(module)} was built with num_classes={n}: attribution "
                         "needs class logits.")
    return n
  out = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, images)
  return int(out.shape[-1])


def check_images(images: Any) -> jax.Array:
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ExplainError(f"images must be a batch [N, H, W, C], got shape {images.shape}.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ExplainError(f"images must be float model inputs (already normalised), got "
                       f"{images.dtype}.")
  return images.astype(jnp.float32)


def check_targets(targets: int | Sequence[int] | np.ndarray | None, batch: int,
                  num_classes: int) -> jax.Array:
  """Targets as an int32 [N] array; None means the predicted class of each image.

  Raises:
    ExplainError: a target outside [0, num_classes), or the wrong number of targets.
  """
  if targets is None:
    return jnp.full((batch,), PREDICTED, jnp.int32)
  t = np.asarray(targets)
  if t.ndim == 0:
    t = np.full((batch,), int(t))
  if t.shape != (batch,):
    raise ExplainError(f"targets must be one class per image ({batch}), got shape {t.shape}.")
  if not np.issubdtype(t.dtype, np.integer):
    raise ExplainError(f"targets must be integer class indices, got dtype {t.dtype}.")
  bad = np.flatnonzero((t < 0) | (t >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise ExplainError(f"target {int(t[i])} (image {i}) is out of range: the model has "
                       f"{num_classes} classes, so targets must be in [0, {num_classes - 1}].")
  return jnp.asarray(t, jnp.int32)


def resolve_targets(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Replaces PREDICTED entries by the argmax class (inside jit)."""
  return jnp.where(targets == PREDICTED, jnp.argmax(logits, axis=-1), targets).astype(jnp.int32)


def reduce_channels(attributions: jax.Array, how: str) -> jax.Array:
  """[N, H, W, C] attributions -> [N, H, W] map."""
  if how == "sum":
    return attributions.sum(-1)
  if how == "abs_sum":
    return jnp.abs(attributions).sum(-1)
  if how == "abs_max":
    return jnp.abs(attributions).max(-1)
  if how == "l2":
    return jnp.sqrt((attributions ** 2).sum(-1))
  raise ExplainError(f"channel_reduce must be one of {CHANNEL_REDUCTIONS}, got {how!r}.")


def minmax_normalise(maps: jax.Array, eps: float = 1e-7) -> jax.Array:
  """Per-image (x - min) / (max - min + eps), as pytorch-grad-cam's scale_cam_image."""
  lo = maps.min(axis=(1, 2), keepdims=True)
  maps = maps - lo
  return maps / (eps + maps.max(axis=(1, 2), keepdims=True))


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[N, h, w] -> [N, H, W]: bilinear (half-pixel centres, as OpenCV), then min-max per image."""
  maps = jnp.asarray(maps, jnp.float32)
  if tuple(maps.shape[1:]) != tuple(size):
    maps = jax.image.resize(maps, (maps.shape[0], *size), method="linear", antialias=False)
  return minmax_normalise(maps)
