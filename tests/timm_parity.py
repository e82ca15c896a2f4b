"""Shared parity check: a timm model with random weights against vision_jax's import of it."""

from __future__ import annotations

import numpy as np
from tests import jitted


def randomize_norms(model, seed: int = 0) -> None:
  """Random affine parameters and running statistics for every norm layer.

  timm zero-initialises some norm scales (the last BN of a block) and starts the
  running statistics at 0/1; both would hide layout mistakes.
  """
  import torch  # pylint: disable=import-outside-toplevel
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm,
                             torch.nn.LayerNorm)):
        if getattr(module, "weight", None) is not None:
          module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=g))
        if getattr(module, "bias", None) is not None:
          module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
        if getattr(module, "running_mean", None) is not None:
          module.running_mean.copy_(0.2 * torch.randn(module.running_mean.shape, generator=g))
          module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))


def timm_state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
  """max |ours - ref| / max |ref|: the measure every parity test uses."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


def compare_with_timm(timm_name: str, image_size: int, seed: int = 0, batch: int = 2,
                      **timm_kwargs):
  """Builds `timm_name` with random weights, imports it, returns (rel_error, ours, ref).

  `timm_kwargs` go to `timm.create_model` (num_classes, img_size, ...).
  """
  import timm  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import from_timm  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  model = timm.create_model(timm_name, pretrained=False, **timm_kwargs).eval()
  randomize_norms(model, seed)
  x = np.random.default_rng(seed).standard_normal((batch, image_size, image_size, 3)).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  module, variables = from_timm(timm_name, timm_state_dict(model))
  ours = np.asarray(jitted.apply(module, variables, jnp.asarray(x), train=False))
  return relative_error(ours, ref), ours, ref
