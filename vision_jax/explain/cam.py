"""Class activation maps: one layer's activation A [N, h, w, C], weighted and summed.

Gradient CAMs use the class score's gradient G = dy_c/dA (one forward and backward
pass serves all five) and keep the positive part of the result:

  gradcam    channel weight mean_ij G (Selvaraju et al., arXiv:1610.02391)
  gradcam++  channel weight sum_ij alpha ReLU(G), closed-form alpha of eq. 19
             (Chattopadhay et al., arXiv:1710.11063)
  xgradcam   channel weight sum_ij G A / sum_ij A (Fu et al., arXiv:2008.02312)
  layercam   sum_c ReLU(G) A, per location (Jiang et al., IEEE TIP 2021)
  hirescam   sum_c G A, per location (Draelos & Carin, arXiv:2011.08891)

Gradient-free ones: Eigen-CAM projects A on its first principal direction
(Muhammad & Yeasin, arXiv:2008.00299); Score-CAM weights channels by the softmax
of the target scores of the input masked by each upsampled channel (Wang et al.,
arXiv:1910.01279). Epsilons, zero-gradient rules and mask scaling follow
pytorch-grad-cam, against which each is tested.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.explain import common
from vision_jax.explain.layers import (ExplainError, TargetLayer, forward_with_layer,
                                       resolve_layer, to_map)


def activation_and_gradient(module: nn.Module, variables: Any, images: jax.Array,
                            targets: jax.Array, layer: TargetLayer):
  """(logits, resolved targets, A, dy/dA) for one layer, in one forward and backward pass."""
  def forward(delta):
    return forward_with_layer(module, variables, images, layer, delta)

  delta = jnp.zeros(layer.shape, jnp.float32)
  logits, vjp, activation = jax.vjp(forward, delta, has_aux=True)
  targets = common.resolve_targets(logits, targets)
  # The score of image n is its own target logit; images do not interact in
  # eval mode, so one backward pass of the summed scores gives every gradient.
  (grad_delta,) = vjp(jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype))
  gradient = to_map(layer, grad_delta).astype(jnp.float32)
  return logits, targets, activation, gradient


# The CAMs that weight one layer's activation A by its gradient G, all from one backward pass.
GRADIENT_CAMS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")


def _gradient_cam(method: str, activation: jax.Array, gradient: jax.Array) -> jax.Array:
  """The [N, h, w] map of one gradient CAM, before its final ReLU."""
  if method == "layercam":
    # Jiang et al. 2021: each location's own positive gradient weights its activation.
    return jnp.sum(jax.nn.relu(gradient) * activation, axis=-1)
  if method == "hirescam":
    # Draelos & Carin 2020: the elementwise product, so the map sums to the score's
    # first-order change and no spatial averaging blurs it.
    return jnp.sum(gradient * activation, axis=-1)
  if method == "gradcam":
    weights = gradient.mean(axis=(1, 2))
  elif method == "xgradcam":
    # Fu et al. 2020, eq. 9: gradients weighted by each channel's normalised activation.
    total = activation.sum(axis=(1, 2), keepdims=True)
    weights = (gradient * activation / (total + 1e-7)).sum(axis=(1, 2))
  else:
    # Grad-CAM++, eq. 19 with the exponential's derivatives written as powers of G.
    g2 = gradient ** 2
    g3 = g2 * gradient
    total = activation.sum(axis=(1, 2), keepdims=True)
    alpha = g2 / (2.0 * g2 + total * g3 + 1e-6)
    alpha = jnp.where(gradient != 0, alpha, 0.0)
    weights = (jax.nn.relu(gradient) * alpha).sum(axis=(1, 2))
  return jnp.einsum("nhwc,nc->nhw", activation, weights)


@functools.partial(jax.jit, static_argnames=("module", "layer"))
def _cams(module: nn.Module, variables: Any, images: jax.Array, targets: jax.Array,
          layer: TargetLayer) -> tuple[dict[str, jax.Array], jax.Array]:
  """Every gradient CAM from one pass: they cost the same forward and backward, and
  one compiled function then serves them all."""
  _, targets, activation, gradient = activation_and_gradient(
      module, variables, images, targets, layer)
  maps = {method: jax.nn.relu(_gradient_cam(method, activation, gradient))
          for method in GRADIENT_CAMS}
  return maps, targets


def _forward(module, variables, images, layer):
  delta = jnp.zeros(layer.shape, jnp.float32)
  return forward_with_layer(module, variables, images, layer, delta)


@functools.partial(jax.jit, static_argnames=("module", "layer"))
def _eigen_cam(module: nn.Module, variables: Any, images: jax.Array, targets: jax.Array,
               layer: TargetLayer) -> tuple[jax.Array, jax.Array]:
  """Eigen-CAM: the activation's projection on its first principal direction."""
  logits, activation = _forward(module, variables, images, layer)
  n, h, w, c = activation.shape
  rows = activation.reshape(n, h * w, c)
  rows = rows - rows.mean(axis=1, keepdims=True)
  _, _, vt = jnp.linalg.svd(rows, full_matrices=False)
  direction = vt[:, 0]
  # An SVD's sign is arbitrary. Keep the one whose channel weights sum positive: the
  # map then correlates positively with the summed activation (p . (A 1) = s^2 v . 1).
  direction = direction * jnp.where(direction.sum(-1, keepdims=True) < 0, -1.0, 1.0)
  projection = jnp.einsum("npc,nc->np", rows, direction).reshape(n, h, w)
  return jax.nn.relu(projection), common.resolve_targets(logits, targets)


def resize_align_corners(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear [N, h, w, C] -> [N, H, W, C] with corner pixels aligned (align_corners=True).

  Score-CAM's masks are made this way in pytorch-grad-cam (`UpsamplingBilinear2d`); two
  small interpolation matrices make it one pair of matmuls.
  """
  def matrix(n_in: int, n_out: int) -> np.ndarray:
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == 1 or n_out == 1:
      m[:, 0] = 1.0
      return m
    src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(src).astype(int), n_in - 2)
    frac = (src - lo).astype(np.float32)
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] += frac
    return m

  rows = jnp.asarray(matrix(maps.shape[1], size[0]))
  cols = jnp.asarray(matrix(maps.shape[2], size[1]))
  return jnp.einsum("Hh,nhwc,Ww->nHWc", rows, maps, cols)


@functools.partial(jax.jit, static_argnames=("module", "layer", "batch_size"))
def _score_cam(module: nn.Module, variables: Any, images: jax.Array, targets: jax.Array,
               layer: TargetLayer, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Score-CAM: each channel, upsampled and min-max scaled, masks the input; the target
  scores of the masked inputs, softmaxed over channels, weight the channels."""
  logits, activation = _forward(module, variables, images, layer)
  targets = common.resolve_targets(logits, targets)
  n, _, _, channels = activation.shape
  pad = -channels % batch_size
  # Zero channels pad the last chunk; their scores are dropped before the softmax.
  padded = jnp.pad(activation, ((0, 0), (0, 0), (0, 0), (0, pad)))
  chunks = padded.reshape(*padded.shape[:3], -1, batch_size).transpose(3, 0, 1, 2, 4)

  def scores(chunk):  # [N, h, w, B] -> [N, B] target logits of the masked inputs
    masks = resize_align_corners(chunk, images.shape[1:3])
    lo = masks.min(axis=(1, 2), keepdims=True)
    hi = masks.max(axis=(1, 2), keepdims=True)
    masks = (masks - lo) / (hi - lo + 1e-8)
    masked = images[:, None] * masks.transpose(0, 3, 1, 2)[..., None]
    out = module.apply(variables, masked.reshape(-1, *images.shape[1:]), train=False)
    out = out.reshape(n, batch_size, -1)
    return jnp.take_along_axis(out, targets[:, None, None], axis=-1)[..., 0]

  # A sequential map: one chunk's activations are alive at a time.
  all_scores = jax.lax.map(scores, chunks).transpose(1, 0, 2).reshape(n, -1)[:, :channels]
  weights = jax.nn.softmax(all_scores, axis=-1)
  return jax.nn.relu(jnp.einsum("nhwc,nc->nhw", activation, weights)), targets


def _run(method: str, module: nn.Module, variables: Any, images: Any,
         targets: int | Sequence[int] | np.ndarray | None, layer: str | None,
         upsample: bool, return_targets: bool, batch_size: int = 32):
  images = common.check_images(images)
  num_classes = common.num_classes_of(module, variables, images)
  target_array = common.check_targets(targets, images.shape[0], num_classes)
  resolved = resolve_layer(module, layer, images.shape, images.dtype)
  if method == "eigencam":
    maps, used = _eigen_cam(module, variables, images, target_array, resolved)
  elif method == "scorecam":
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ExplainError(f"batch_size must be a positive integer, got {batch_size!r}.")
    batch_size = min(batch_size, resolved.shape[-1])
    maps, used = _score_cam(module, variables, images, target_array, resolved, batch_size)
  else:
    all_maps, used = _cams(module, variables, images, target_array, resolved)
    maps = all_maps[method]
  if upsample:
    maps = common.upsample(maps, images.shape[1:3])
  return (maps, used) if return_targets else maps


def grad_cam(module: nn.Module, variables: Any, images: Any,
             targets: int | Sequence[int] | np.ndarray | None = None, *,
             layer: str | None = None, upsample: bool = False,
             return_targets: bool = False) -> jax.Array:
  """Grad-CAM maps, one per image.

  Args:
    module: a classifier (any registered model with num_classes > 0).
    variables: its variables; the model runs in eval mode.
    images: [N, H, W, C] float model inputs (already normalised).
    targets: class per image (or one for all); None explains the predicted class.
    layer: '/'-joined module path of the layer to read; None is the family
      default (see `vision_jax.explain.layers`). `available_layers` lists names.
    upsample: resize to [N, H, W] bilinearly and min-max normalise per image.
    return_targets: also return the classes that were explained.

  Returns:
    float32 [N, h, w] at the layer's resolution (ReLU of the weighted channel sum,
    not normalised), or [N, H, W] in [0, 1] with `upsample`; plus the targets.

  Raises:
    ExplainError: unknown layer (the message lists the available ones), a target
      out of range, or a model without class logits.
  """
  return _run("gradcam", module, variables, images, targets, layer, upsample, return_targets)


def grad_cam_plus_plus(module: nn.Module, variables: Any, images: Any,
                       targets: int | Sequence[int] | np.ndarray | None = None, *,
                       layer: str | None = None, upsample: bool = False,
                       return_targets: bool = False) -> jax.Array:
  """Grad-CAM++ maps, one per image; arguments and result as `grad_cam`."""
  return _run("gradcam++", module, variables, images, targets, layer, upsample, return_targets)


def xgrad_cam(module: nn.Module, variables: Any, images: Any,
              targets: int | Sequence[int] | np.ndarray | None = None, *,
              layer: str | None = None, upsample: bool = False,
              return_targets: bool = False) -> jax.Array:
  """XGrad-CAM (Fu et al., arXiv:2008.02312): channel weight sum_ij G A / sum_ij A.

  Arguments and result as `grad_cam`; the same compiled function computes both.
  """
  return _run("xgradcam", module, variables, images, targets, layer, upsample, return_targets)


def layer_cam(module: nn.Module, variables: Any, images: Any,
              targets: int | Sequence[int] | np.ndarray | None = None, *,
              layer: str | None = None, upsample: bool = False,
              return_targets: bool = False) -> jax.Array:
  """Layer-CAM (Jiang et al., IEEE TIP 2021): ReLU(sum_c ReLU(G) * A), location by location.

  Meant for shallower layers too, where a channel-wide weight loses detail. Arguments and
  result as `grad_cam`.
  """
  return _run("layercam", module, variables, images, targets, layer, upsample, return_targets)


def hires_cam(module: nn.Module, variables: Any, images: Any,
              targets: int | Sequence[int] | np.ndarray | None = None, *,
              layer: str | None = None, upsample: bool = False,
              return_targets: bool = False) -> jax.Array:
  """HiResCAM (Draelos & Carin, arXiv:2011.08891): ReLU(sum_c G * A).

  Arguments and result as `grad_cam`.
  """
  return _run("hirescam", module, variables, images, targets, layer, upsample, return_targets)


def eigen_cam(module: nn.Module, variables: Any, images: Any,
              targets: int | Sequence[int] | np.ndarray | None = None, *,
              layer: str | None = None, upsample: bool = False,
              return_targets: bool = False) -> jax.Array:
  """Eigen-CAM (Muhammad & Yeasin, arXiv:2008.00299): the first principal component.

  The layer's activation, as [h*w, C] rows centred per channel, is projected on its
  first right singular vector; the ReLU of that projection is the map. It needs no
  gradient and ignores `targets` (returned only for a uniform interface). The
  singular vector's sign is arbitrary; the one whose channel weights sum positive is
  used, so the map grows where the summed activation grows. Arguments and result as
  `grad_cam`.
  """
  return _run("eigencam", module, variables, images, targets, layer, upsample, return_targets)


def score_cam(module: nn.Module, variables: Any, images: Any,
              targets: int | Sequence[int] | np.ndarray | None = None, *,
              layer: str | None = None, batch_size: int = 32, upsample: bool = False,
              return_targets: bool = False) -> jax.Array:
  """Score-CAM (Wang et al., arXiv:1910.01279): channels weighted by masked-input scores.

  Each of the layer's C channels is upsampled to the input size (bilinear with
  aligned corners), min-max scaled to [0, 1] and multiplies the input; the softmax
  over channels of the target logits of those C masked inputs weights the channels.
  Costs N * C forward passes, run `batch_size` channels at a time in one compiled
  program. Other arguments and the result as `grad_cam`.
  """
  return _run("scorecam", module, variables, images, targets, layer, upsample, return_targets,
              batch_size)
