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


def calibrate_batch_norms(model, images) -> None:
  """Running statistics of every BatchNorm measured on `images` (NCHW), as training leaves them.

  Random weights with random running statistics make a deep network chaotic: in
  tf_efficientnetv2_s at 300 px the logits reach 1e7 and timm's own float32
  output differs from its float64 output by 67% (top-1 changes), so a float32
  comparison says nothing about the port. Statistics measured on data normalise
  every layer as in a trained network; there timm's float32 rounding is ~4e-6.
  """
  import torch  # pylint: disable=import-outside-toplevel
  norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
  for module in norms:
    module.reset_running_stats()
    module.momentum = None  # a cumulative average: one batch gives its exact statistics
  model.train()
  with torch.no_grad():
    model(images)
  model.eval()


def timm_state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
  """max |ours - ref| / max |ref|: the measure every parity test uses."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


def compare_with_timm(timm_name: str, image_size: int, seed: int = 0, batch: int = 2,
                      calibrate: bool = False, float64: bool = False, **timm_kwargs):
  """Builds `timm_name` with random weights, imports it, returns (rel_error, ours, ref).

  `calibrate` measures the BatchNorm statistics on a separate random batch
  (`calibrate_batch_norms`) instead of drawing them: needed for deep BatchNorm
  networks whose random version amplifies float32 rounding past any tolerance.
  `float64` runs both sides in float64 instead, for such networks at small image
  sizes, where measured statistics are degenerate too (a 2x2 last stage): the
  rounding moves from 1e-7 to 1e-16, which 20-40 chaotic blocks amplify to 1e-7
  at worst instead of past 1, while a padding, epsilon or layout slip still shows
  in full. Our logits leave `classifier_head` as float32: a correct, calm port
  gives ~5e-8 then.
  `timm_kwargs` go to `timm.create_model` (num_classes, img_size, ...).
  """
  import timm  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import from_timm  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  model = timm.create_model(timm_name, pretrained=False, **timm_kwargs).eval()
  randomize_norms(model, seed)
  if calibrate:
    calibration = np.random.default_rng(seed + 1).standard_normal((4, 3, image_size, image_size))
    calibrate_batch_norms(model, torch.from_numpy(calibration.astype(np.float32)))
  dtype = np.float64 if float64 else np.float32
  if float64:
    model = model.double()
  x = np.random.default_rng(seed).standard_normal((batch, image_size, image_size, 3)).astype(dtype)
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  module, variables = from_timm(timm_name, timm_state_dict(model))
  if not float64:
    ours = np.asarray(jitted.apply(module, variables, jnp.asarray(x), train=False))
    return relative_error(ours, ref), ours, ref
  with jax.enable_x64(True):
    module = module.clone(dtype=jnp.float64, param_dtype=jnp.float64)
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    ours = np.asarray(jax.jit(lambda v, images: module.apply(v, images, train=False))(
        variables, jnp.asarray(x)))
  return relative_error(ours, ref), ours, ref
