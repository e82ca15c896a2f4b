"""Pixel attributions from input gradients: plain gradients, SmoothGrad, Integrated Gradients.

* `input_gradients`: d y_c / d x (Simonyan et al., arXiv:1312.6034).
* `smooth_grad`: the mean gradient over noisy copies of the image (Smilkov et
  al., arXiv:1706.03825), noise std = `noise_level` x (max - min) of each image.
* `integrated_gradients` (Sundararajan et al., arXiv:1703.01365): (x - x') times
  the path integral of the gradient along the straight line from a baseline x'
  to x. Completeness says the attributions sum to y_c(x) - y_c(x'); the gap is
  returned so that the caller can see whether `steps` was enough.

Quadrature rules (alpha_k: points on the path, w_k: weights; n = steps):
  riemann_left   alpha = k/n, k = 0..n-1          w = 1/n
  riemann_right  alpha = k/n, k = 1..n            w = 1/n   ('riemann', the paper's sum)
  riemann_middle alpha = (k + 1/2)/n, k = 0..n-1  w = 1/n
  trapezoid      alpha = k/(n-1), k = 0..n-1      w = 1/(n-1), halved at both ends
The Riemann rules are Captum's. Captum's 'riemann_trapezoid' uses the trapezoid
points with weights 1/n (halved at the ends), which sum to (n-1)/n instead of 1;
ours sum to 1, so its attributions are ours times (n-1)/n.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.explain import common
from vision_jax.explain.layers import ExplainError

RULES = ("riemann", "riemann_left", "riemann_right", "riemann_middle", "trapezoid")
BASELINES = ("black", "blurred")


class IntegratedGradients(NamedTuple):
  """What `integrated_gradients(..., full_output=True)` returns.

  Attributes:
    maps: [N, H, W] channel-reduced attributions (or upsampled/normalised maps).
    attributions: [N, H, W, C] per-input-value attributions.
    completeness_error: [N] sum of attributions minus (y_c(x) - y_c(baseline)).
    score_difference: [N] y_c(x) - y_c(baseline), the amount to be explained.
    targets: [N] the classes explained.
  """

  maps: jax.Array
  attributions: jax.Array
  completeness_error: jax.Array
  score_difference: jax.Array
  targets: jax.Array


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """(alphas, weights) of a rule from the module docstring's table."""
  if steps < 2:
    raise ExplainError(f"steps must be >= 2, got {steps}.")
  n = steps
  if rule in ("riemann", "riemann_right"):
    alphas = np.arange(1, n + 1) / n
  elif rule == "riemann_left":
    alphas = np.arange(n) / n
  elif rule == "riemann_middle":
    alphas = (np.arange(n) + 0.5) / n
  elif rule == "trapezoid":
    alphas = np.arange(n) / (n - 1)
    weights = np.full(n, 1.0 / (n - 1))
    weights[[0, -1]] /= 2
    return alphas.astype(np.float32), weights.astype(np.float32)
  else:
    raise ExplainError(f"method must be one of {RULES}, got {rule!r}.")
  return alphas.astype(np.float32), np.full(n, 1.0 / n, np.float32)


def _score_fn(module: nn.Module, variables: Any):
  def score(x, one_hot):
    logits = module.apply(variables, x, train=False)
    return jnp.sum(logits * one_hot), logits
  return score


@functools.partial(jax.jit, static_argnames=("module",))
def _gradient(module: nn.Module, variables: Any, images: jax.Array, targets: jax.Array):
  grad_fn = jax.grad(_score_fn(module, variables), has_aux=True)
  logits = module.apply(variables, images, train=False)
  targets = common.resolve_targets(logits, targets)
  grads, _ = grad_fn(images, jax.nn.one_hot(targets, logits.shape[-1]))
  return grads, targets


# Path points are evaluated in chunks of this many: one compiled function serves
# every step count, and memory does not grow with `steps`.
PATH_CHUNK = 8


@functools.partial(jax.jit, static_argnames=("module",))
def _endpoints(module: nn.Module, variables: Any, images: jax.Array, baseline: jax.Array,
               targets: jax.Array):
  """(targets, their one-hot, y_c(x) - y_c(baseline))."""
  logits = module.apply(variables, images, train=False)
  targets = common.resolve_targets(logits, targets)
  one_hot = jax.nn.one_hot(targets, logits.shape[-1])
  base_logits = module.apply(variables, baseline, train=False)
  return targets, one_hot, jnp.sum((logits - base_logits) * one_hot, axis=-1)


@functools.partial(jax.jit, static_argnames=("module",))
def _path_sum(module: nn.Module, variables: Any, baseline: jax.Array, diff: jax.Array,
              one_hot: jax.Array, alphas: jax.Array, weights: jax.Array) -> jax.Array:
  """sum_k w_k * grad y_c(baseline + alpha_k * diff) over one chunk of path points."""
  grad_fn = jax.grad(_score_fn(module, variables), has_aux=True)

  def step(total, alpha_weight):
    alpha, weight = alpha_weight
    grads, _ = grad_fn(baseline + alpha * diff, one_hot)
    return total + weight * grads, None

  # A scan keeps one point's activations alive at a time.
  total, _ = jax.lax.scan(step, jnp.zeros_like(diff), (alphas, weights))
  return total


def _integrated(module: nn.Module, variables: Any, images: jax.Array, baseline: jax.Array,
                targets: jax.Array, alphas: np.ndarray, weights: np.ndarray):
  targets, one_hot, score_difference = _endpoints(module, variables, images, baseline, targets)
  diff = images - baseline
  pad = -len(alphas) % PATH_CHUNK
  # Padding points carry weight zero: they cost a little compute and change nothing.
  alphas = np.concatenate([alphas, np.zeros(pad, np.float32)])
  weights = np.concatenate([weights, np.zeros(pad, np.float32)])
  path_sum = jnp.zeros_like(images)
  for start in range(0, len(alphas), PATH_CHUNK):
    chunk = slice(start, start + PATH_CHUNK)
    path_sum = path_sum + _path_sum(module, variables, baseline, diff, one_hot,
                                    jnp.asarray(alphas[chunk]), jnp.asarray(weights[chunk]))
  attributions = diff * path_sum
  error = attributions.sum(axis=(1, 2, 3)) - score_difference
  return attributions, error, score_difference, targets


@functools.partial(jax.jit, static_argnames=("module", "samples", "squared"))
def _smooth(module: nn.Module, variables: Any, images: jax.Array, targets: jax.Array,
            key: jax.Array, noise_level: jax.Array, samples: int, squared: bool):
  grad_fn = jax.grad(_score_fn(module, variables), has_aux=True)
  logits = module.apply(variables, images, train=False)
  targets = common.resolve_targets(logits, targets)
  one_hot = jax.nn.one_hot(targets, logits.shape[-1])
  spread = images.max(axis=(1, 2, 3), keepdims=True) - images.min(axis=(1, 2, 3), keepdims=True)
  sigma = noise_level * spread

  def step(total, k):
    noisy = images + sigma * jax.random.normal(k, images.shape, images.dtype)
    grads, _ = grad_fn(noisy, one_hot)
    return total + (grads * grads if squared else grads), None

  total, _ = jax.lax.scan(step, jnp.zeros_like(images), jax.random.split(key, samples))
  return total / samples, targets


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur of [N, H, W, C] images (reflect padding, kernel radius 3 sigma)."""
  radius = max(int(3 * sigma + 0.5), 1)
  x = np.arange(-radius, radius + 1, dtype=np.float32)
  kernel = np.exp(-0.5 * (x / sigma) ** 2)
  kernel = jnp.asarray(kernel / kernel.sum())
  images = jnp.asarray(images, jnp.float32)

  def blur_axis(v, axis):
    pad = [(0, 0)] * 4
    pad[axis] = (radius, radius)
    v = jnp.pad(v, pad, mode="reflect")
    length = images.shape[axis]
    return sum(kernel[i] * jax.lax.slice_in_dim(v, i, i + length, axis=axis)
               for i in range(2 * radius + 1))

  return blur_axis(blur_axis(images, 1), 2)


def make_baseline(images: jax.Array, baseline: str | Any, black_value: float | Sequence[float],
                  blur_sigma: float | None) -> jax.Array:
  """The IG baseline: 'black', 'blurred' or a user array broadcastable to the images."""
  if isinstance(baseline, str):
    if baseline == "black":
      value = jnp.asarray(black_value, jnp.float32).reshape(-1)
      return jnp.broadcast_to(value, images.shape) if value.size > 1 else (
          jnp.full(images.shape, value[0], jnp.float32))
    if baseline == "blurred":
      sigma = blur_sigma if blur_sigma is not None else max(images.shape[1:3]) / 20.0
      return gaussian_blur(images, sigma)
    raise ExplainError(f"baseline must be one of {BASELINES} or an array, got {baseline!r}.")
  value = jnp.asarray(baseline, jnp.float32)
  try:
    return jnp.broadcast_to(value, images.shape)
  except ValueError:
    raise ExplainError(f"baseline of shape {value.shape} does not broadcast to the images "
                       f"{images.shape}.") from None


def _maps(attributions: jax.Array, channel_reduce: str, upsample: bool) -> jax.Array:
  maps = common.reduce_channels(attributions, channel_reduce)
  return common.minmax_normalise(maps) if upsample else maps


def _prepare(module, variables, images, targets):
  images = common.check_images(images)
  num_classes = common.num_classes_of(module, variables, images)
  return images, common.check_targets(targets, images.shape[0], num_classes)


def integrated_gradients(module: nn.Module, variables: Any, images: Any,
                         targets: int | Sequence[int] | np.ndarray | None = None, *,
                         baseline: str | Any = "black", steps: int = 50,
                         method: str = "riemann_right",
                         black_value: float | Sequence[float] = 0.0,
                         blur_sigma: float | None = None, channel_reduce: str = "sum",
                         upsample: bool = False, full_output: bool = False):
  """Integrated Gradients of the target logit with respect to the input.

  Args:
    module, variables, images, targets: as `grad_cam`.
    baseline: 'black' (every input value `black_value`), 'blurred' (Gaussian blur
      of the image, std `blur_sigma` pixels, default max(H, W) / 20) or an array
      broadcastable to the images.
    steps: number of points on the path.
    method: quadrature rule, one of `RULES` (see the module docstring).
    black_value: model-input value of a black pixel: 0 for inputs in [0, 1], or
      the per-channel -mean/std for normalised inputs.
    blur_sigma: std of the blurred baseline, in pixels.
    channel_reduce: how the [N, H, W, C] attributions become maps ('sum' keeps
      completeness: each map sums to the score difference).
    upsample: min-max normalise each map (they already have the input size).
    full_output: return an `IntegratedGradients` tuple with the attributions and
      the completeness error.

  Returns:
    [N, H, W] float32 maps, or `IntegratedGradients` with `full_output`.
  """
  images, target_array = _prepare(module, variables, images, targets)
  alphas, weights = quadrature(method, steps)
  base = make_baseline(images, baseline, black_value, blur_sigma)
  attributions, error, difference, used = _integrated(
      module, variables, images, base, target_array, alphas, weights)
  maps = _maps(attributions, channel_reduce, upsample)
  if full_output:
    return IntegratedGradients(maps, attributions, error, difference, used)
  return maps


def input_gradients(module: nn.Module, variables: Any, images: Any,
                    targets: int | Sequence[int] | np.ndarray | None = None, *,
                    channel_reduce: str = "abs_max", upsample: bool = False) -> jax.Array:
  """Saliency: |d y_c / d x| reduced over channels (max of absolute values by default)."""
  images, target_array = _prepare(module, variables, images, targets)
  grads, _ = _gradient(module, variables, images, target_array)
  return _maps(grads, channel_reduce, upsample)


def smooth_grad(module: nn.Module, variables: Any, images: Any,
                targets: int | Sequence[int] | np.ndarray | None = None, *,
                samples: int = 25, noise_level: float = 0.15, squared: bool = False,
                seed: int = 0, channel_reduce: str = "abs_max",
                upsample: bool = False) -> jax.Array:
  """SmoothGrad: the gradient averaged over `samples` noisy copies of each image.

  Args:
    module, variables, images, targets: as `grad_cam`.
    samples: number of noisy copies.
    noise_level: noise std as a fraction of each image's value range (0.1-0.2 in the paper).
    squared: average squared gradients (SmoothGrad-Squared).
    seed: seed of the noise.
    channel_reduce, upsample: as `input_gradients`.
  """
  if samples < 1:
    raise ExplainError(f"samples must be >= 1, got {samples}.")
  images, target_array = _prepare(module, variables, images, targets)
  grads, _ = _smooth(module, variables, images, target_array, jax.random.key(seed),
                     jnp.float32(noise_level), samples, squared)
  return _maps(grads, channel_reduce, upsample)
