"""Attributions from perturbed inputs alone: Occlusion and RISE.

Neither needs a gradient or a layer, so both work on any classifier; both cost many
forward passes, which run in chunks of `batch_size` perturbations inside one
compiled program (a `lax.scan`: one chunk's activations are alive at a time).

* `occlusion` (Zeiler & Fergus, arXiv:1311.2901), as Captum's `Occlusion`: a
  window of `window` pixels (all channels) slides with `strides`; each placement
  replaces the window by the baseline, and every pixel it covers is credited
  y_c(x) - y_c(x occluded). A pixel's attribution is the mean over the windows
  that cover it. Placements start at multiples of the stride,
  ceil((H - window) / stride) + 1 of them per axis, so the last may stick out of the
  image and is cut there (Captum's rule, which covers every pixel).
* `rise` (Petsiuk et al., arXiv:1806.07421): `masks` random masks, each a
  `grid` x `grid` Bernoulli(`keep`) grid, upsampled bilinearly to (grid + 1) cells
  and cropped at a random shift, keep the input where they are 1 and the baseline
  elsewhere; the map is sum_i y_c(x masked by M_i) M_i / (masks * keep). Mask i is
  drawn from `fold_in(key(seed), i)`, so a seed gives the same masks whatever the
  batch size.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.explain import common
from vision_jax.explain.layers import ExplainError

SCORES = ("logit", "probability")


def _score(logits: jax.Array, targets: jax.Array, score: str) -> jax.Array:
  """[M, K] outputs -> [M] target scores."""
  if score == "probability":
    logits = jax.nn.softmax(logits, axis=-1)
  return jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]


def _perturbed_scores(module: nn.Module, variables: Any, images: jax.Array,
                      baseline: jax.Array, targets: jax.Array, masks: jax.Array,
                      score: str) -> jax.Array:
  """Target scores [N, B] of each image with each of B masks [B, H, W] (1 keeps the input)."""
  n = images.shape[0]
  keep = masks[None, :, :, :, None]
  mixed = images[:, None] * keep + baseline[:, None] * (1.0 - keep)
  logits = module.apply(variables, mixed.reshape(-1, *images.shape[1:]), train=False)
  repeated = jnp.repeat(targets, masks.shape[0])
  return _score(logits, repeated, score).reshape(n, masks.shape[0])


def _check_baseline(images: jax.Array, baseline: float | Sequence[float] | Any) -> jax.Array:
  """The baseline as an array shaped like the images: a number, a value per channel, an
  [H, W, C] image or an [N, H, W, C] batch."""
  value = jnp.asarray(baseline, jnp.float32)
  try:
    return jnp.broadcast_to(value, images.shape)
  except ValueError:
    raise ExplainError(f"baseline of shape {value.shape} does not broadcast to the images "
                       f"{images.shape}: give a number, one value per channel "
                       f"({images.shape[-1]}), or an array shaped like an image or the "
                       "batch.") from None


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
  if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
    raise ExplainError(f"{name} must be a positive integer or (height, width), got {value!r}.")
  return int(pair[0]), int(pair[1])


def _prepare(module, variables, images, targets, batch_size, score):
  images = common.check_images(images)
  num_classes = common.num_classes_of(module, variables, images)
  target_array = common.check_targets(targets, images.shape[0], num_classes)
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ExplainError(f"batch_size must be a positive integer, got {batch_size!r}.")
  if score not in SCORES:
    raise ExplainError(f"score must be one of {SCORES}, got {score!r}.")
  return images, target_array


def occlusion_origins(size: int, window: int, stride: int) -> np.ndarray:
  """Start offsets of the windows along one axis (Captum's count: ceil((size - window) /
  stride) + 1, the last one cut at the border)."""
  return np.arange(math.ceil((size - window) / stride) + 1) * stride


@functools.partial(jax.jit, static_argnames=("module", "window", "batch_size", "score"))
def _occlusion(module: nn.Module, variables: Any, images: jax.Array, baseline: jax.Array,
               targets: jax.Array, rows: jax.Array, cols: jax.Array, valid: jax.Array,
               window: tuple[int, int], batch_size: int, score: str):
  logits = module.apply(variables, images, train=False)
  targets = common.resolve_targets(logits, targets)
  full = _score(logits, targets, score)
  height, width = images.shape[1:3]
  y = jnp.arange(height)
  x = jnp.arange(width)

  def step(total, chunk):
    top, left, ok = chunk
    inside = (((y[None, :] >= top[:, None]) & (y[None, :] < top[:, None] + window[0]))[:, :, None]
              & ((x[None, :] >= left[:, None]) & (x[None, :] < left[:, None] + window[1]))[:, None])
    inside = inside.astype(jnp.float32) * ok[:, None, None]
    scores = _perturbed_scores(module, variables, images, baseline, targets, 1.0 - inside, score)
    return total + jnp.einsum("nb,bhw->nhw", full[:, None] - scores, inside), None

  shape = (-1, batch_size)
  total, _ = jax.lax.scan(step, jnp.zeros(images.shape[:3], jnp.float32),
                          (rows.reshape(shape), cols.reshape(shape), valid.reshape(shape)))
  return total, targets


def occlusion(module: nn.Module, variables: Any, images: Any,
              targets: int | Sequence[int] | np.ndarray | None = None, *,
              window: int | Sequence[int] = 4, strides: int | Sequence[int] | None = None,
              baseline: float | Sequence[float] | Any = 0.0, score: str = "logit",
              batch_size: int = 64, upsample: bool = False,
              return_targets: bool = False) -> jax.Array:
  """Occlusion maps: the drop of the target score when a window hides each pixel.

  Args:
    module, variables, images, targets: as `grad_cam`.
    window: (height, width) of the occluding patch, in pixels (all channels).
    strides: step between placements; default half the window (at least 1).
    baseline: what replaces the window: a number, a value per channel (the
      model-input value of black is -mean/std), or an image-shaped array.
    score: 'logit' (Captum's default with a classifier) or 'probability'.
    batch_size: placements per forward pass (times N images).
    upsample: min-max normalise each map (it already has the input size).
    return_targets: also return the classes explained.

  Returns:
    float32 [N, H, W]: the mean score drop over the windows covering each pixel,
    equal to Captum's attribution of any channel; with `upsample`, in [0, 1].

  Raises:
    ExplainError: a window larger than the image, a stride larger than the
      window, a baseline that does not broadcast, a bad target.
  """
  images, target_array = _prepare(module, variables, images, targets, batch_size, score)
  height, width = images.shape[1:3]
  window = _pair("window", window)
  strides = _pair("strides", strides if strides is not None
                  else (max(window[0] // 2, 1), max(window[1] // 2, 1)))
  if window[0] > height or window[1] > width:
    raise ExplainError(f"window {window} is larger than the images ({height}, {width}).")
  if any(s > w for s, w, size in zip(strides, window, (height, width)) if w < size):
    raise ExplainError(f"strides {strides} larger than the window {window} would leave "
                       "pixels that no window covers.")
  base = _check_baseline(images, baseline)
  top = occlusion_origins(height, window[0], strides[0])
  left = occlusion_origins(width, window[1], strides[1])
  rows, cols = (a.ravel() for a in np.meshgrid(top, left, indexing="ij"))
  batch_size = int(min(batch_size, rows.size))
  pad = -rows.size % batch_size
  valid = np.concatenate([np.ones(rows.size), np.zeros(pad)]).astype(np.float32)
  rows, cols = (np.concatenate([a, np.zeros(pad, a.dtype)]).astype(np.int32) for a in (rows, cols))
  total, used = _occlusion(module, variables, images, base, target_array, jnp.asarray(rows),
                           jnp.asarray(cols), jnp.asarray(valid), window, batch_size, score)
  counts = np.zeros((height, width), np.float32)
  for t, l, ok in zip(rows, cols, valid):
    counts[t:t + window[0], l:l + window[1]] += ok
  maps = total / jnp.asarray(counts)
  if upsample:
    maps = common.minmax_normalise(maps)
  return (maps, used) if return_targets else maps


def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of bilinear resizing with half-pixel centres, edges clamped."""
  src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.minimum(np.floor(src).astype(int), max(n_in - 2, 0))
  frac = (src - lo).astype(np.float32)
  m = np.zeros((n_out, n_in), np.float32)
  m[np.arange(n_out), lo] = 1.0 - frac
  m[np.arange(n_out), np.minimum(lo + 1, n_in - 1)] += frac
  return m


def rise_masks(key: jax.Array, indices: jax.Array, size: tuple[int, int], grid: int,
               keep: float) -> jax.Array:
  """RISE masks [len(indices), H, W] in [0, 1]; mask i depends on the key and i only."""
  height, width = size
  cell = (math.ceil(height / grid), math.ceil(width / grid))
  # Resizing the grid to (grid + 1) cells is a matrix on each side; cropping it at a
  # shift is a slice of those matrices' rows.
  rows = jnp.asarray(_linear_matrix(grid, (grid + 1) * cell[0]))
  cols = jnp.asarray(_linear_matrix(grid, (grid + 1) * cell[1]))

  def one(i):
    # One draw per mask (the grid's cells, then the two shifts): each random call
    # is a threefry program of its own, and compiling several costs seconds.
    u = jax.random.uniform(jax.random.fold_in(key, i), (grid * grid + 2,))
    binary = (u[:-2] < keep).astype(jnp.float32).reshape(grid, grid)
    dy = jnp.minimum(jnp.floor(u[-2] * cell[0]).astype(jnp.int32), cell[0] - 1)
    dx = jnp.minimum(jnp.floor(u[-1] * cell[1]).astype(jnp.int32), cell[1] - 1)
    r = jax.lax.dynamic_slice_in_dim(rows, dy, height)
    c = jax.lax.dynamic_slice_in_dim(cols, dx, width)
    return jnp.clip(r @ binary @ c.T, 0.0, 1.0)  # clipped: rounding can overshoot 1

  return jax.vmap(one)(indices)


@functools.partial(jax.jit, static_argnames=("module", "count", "grid", "batch_size", "score"))
def _rise(module: nn.Module, variables: Any, images: jax.Array, baseline: jax.Array,
          targets: jax.Array, key: jax.Array, keep: jax.Array, count: int, grid: int,
          batch_size: int, score: str):
  logits = module.apply(variables, images, train=False)
  targets = common.resolve_targets(logits, targets)
  chunks = -(-count // batch_size)

  def step(total, chunk):
    indices = chunk * batch_size + jnp.arange(batch_size)
    masks = rise_masks(key, indices, images.shape[1:3], grid, keep)
    masks = masks * (indices < count)[:, None, None]  # the last chunk's extra masks count 0
    scores = _perturbed_scores(module, variables, images, baseline, targets, masks, score)
    return total + jnp.einsum("nb,bhw->nhw", scores * (indices < count), masks), None

  total, _ = jax.lax.scan(step, jnp.zeros(images.shape[:3], jnp.float32), jnp.arange(chunks))
  return total / (count * keep), targets


def rise(module: nn.Module, variables: Any, images: Any,
         targets: int | Sequence[int] | np.ndarray | None = None, *,
         masks: int = 2000, grid: int = 7, keep: float = 0.5, seed: int = 0,
         baseline: float | Sequence[float] | Any = 0.0, score: str = "probability",
         batch_size: int = 64, upsample: bool = False,
         return_targets: bool = False) -> jax.Array:
  """RISE maps: the score-weighted mean of random masks.

  Args:
    module, variables, images, targets: as `grad_cam`.
    masks: number of random masks (the paper uses 4000 for ResNet-50 at 224 px; the
      map's noise falls as 1/sqrt(masks)).
    grid: cells per side of the coarse binary grid.
    keep: probability that a cell keeps the input.
    seed: seed of the masks; the same seed gives the same masks and maps.
    baseline: what masked pixels become (as `occlusion`).
    score: 'probability' (the paper's) or 'logit'.
    batch_size: masks per forward pass (times N images).
    upsample: min-max normalise each map (it already has the input size).
    return_targets: also return the classes explained.

  Returns:
    float32 [N, H, W], or [N, H, W] in [0, 1] with `upsample`.
  """
  images, target_array = _prepare(module, variables, images, targets, batch_size, score)
  if not isinstance(masks, (int, np.integer)) or masks < 1:
    raise ExplainError(f"masks must be a positive integer, got {masks!r}.")
  if not isinstance(grid, (int, np.integer)) or grid < 1:
    raise ExplainError(f"grid must be a positive integer, got {grid!r}.")
  if not 0.0 < keep <= 1.0:
    raise ExplainError(f"keep must be in (0, 1], got {keep!r}.")
  base = _check_baseline(images, baseline)
  maps, used = _rise(module, variables, images, base, target_array, jax.random.key(seed),
                     jnp.float32(keep), int(masks), int(grid), int(min(batch_size, masks)),
                     score)
  if upsample:
    maps = common.minmax_normalise(maps)
  return (maps, used) if return_targets else maps
