"""Grad-CAM (Selvaraju et al., arXiv:1610.02391) and Grad-CAM++ (Chattopadhay et al., arXiv:1710.11063).

Both weight the channels of one layer's activation A [N, h, w, C] by a summary
of the class score's gradient G = dy_c/dA and keep the positive part of the
weighted sum: Grad-CAM uses the spatial mean of G, Grad-CAM++ the positive
gradients weighted by its closed-form alpha (eq. 19 of the paper, with the same
epsilon and zero-gradient rule as pytorch-grad-cam, against which it is tested).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.explain import common
from vision_jax.explain.layers import TargetLayer, forward_with_layer, resolve_layer, to_map


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


def _cam_weights(method: str, activation: jax.Array, gradient: jax.Array) -> jax.Array:
  if method == "gradcam":
    return gradient.mean(axis=(1, 2))
  # Grad-CAM++, eq. 19 with the exponential's derivatives written as powers of G.
  g2 = gradient ** 2
  g3 = g2 * gradient
  total = activation.sum(axis=(1, 2), keepdims=True)
  alpha = g2 / (2.0 * g2 + total * g3 + 1e-6)
  alpha = jnp.where(gradient != 0, alpha, 0.0)
  return (jax.nn.relu(gradient) * alpha).sum(axis=(1, 2))


@functools.partial(jax.jit, static_argnames=("module", "layer"))
def _cams(module: nn.Module, variables: Any, images: jax.Array, targets: jax.Array,
          layer: TargetLayer) -> tuple[dict[str, jax.Array], jax.Array]:
  """Grad-CAM and Grad-CAM++ from one pass: both cost the same forward and backward,
  and one compiled function then serves both methods."""
  _, targets, activation, gradient = activation_and_gradient(
      module, variables, images, targets, layer)
  maps = {}
  for method in ("gradcam", "gradcam++"):
    weights = _cam_weights(method, activation, gradient)
    maps[method] = jax.nn.relu(jnp.einsum("nhwc,nc->nhw", activation, weights))
  return maps, targets


def _run(method: str, module: nn.Module, variables: Any, images: Any,
         targets: int | Sequence[int] | np.ndarray | None, layer: str | None,
         upsample: bool, return_targets: bool):
  images = common.check_images(images)
  num_classes = common.num_classes_of(module, variables, images)
  target_array = common.check_targets(targets, images.shape[0], num_classes)
  resolved = resolve_layer(module, layer, images.shape, images.dtype)
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
