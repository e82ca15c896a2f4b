"""Load torchvision ResNet state dicts into vision_jax models.

torchvision's `resnet18/34/50/101/152` are ResNet v1.5 (the stride of a
bottleneck sits in its 3x3 conv), with the same module tree as timm's ResNets:
`conv1`, `bn1`, `layer{s}.{b}.{conv,bn}{1,2,3}`, `layer{s}.{b}.downsample.{0,1}`
and the classifier `fc`. Their state dicts therefore go through timm's resnet
mapping and its checks (`vision_jax.weights.from_timm`) unchanged; only the
names are checked here.

`wide_resnet*` (bottleneck twice as wide as a quarter of its output) and
`resnext*` (grouped 3x3 convs) have no vision_jax counterpart and are refused
with a `WeightLoadError`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from vision_jax.weights.timm import WeightLoadError, from_timm

# torchvision name -> vision_jax registry name (the timm name is the same).
TORCHVISION_RESNETS: dict[str, str] = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "resnet152": "resnet152",
}

# torchvision ResNet variants whose layout vision_jax's ResNet cannot express.
_UNSUPPORTED: dict[str, str] = {
    "wide_resnet50_2": "its bottlenecks are twice as wide (e.g. 128 -> 256 channels in stage 1), "
                       "while vision_jax's bottleneck width is always a quarter of its output",
    "wide_resnet101_2": "its bottlenecks are twice as wide (e.g. 128 -> 256 channels in stage 1), "
                        "while vision_jax's bottleneck width is always a quarter of its output",
    "resnext50_32x4d": "its 3x3 convolutions are grouped (ResNeXt), which vision_jax's ResNet "
                       "does not implement",
    "resnext101_32x8d": "its 3x3 convolutions are grouped (ResNeXt), which vision_jax's ResNet "
                        "does not implement",
    "resnext101_64x4d": "its 3x3 convolutions are grouped (ResNeXt), which vision_jax's ResNet "
                        "does not implement",
}


def from_torchvision(name: str, state_dict: Mapping[str, Any], dtype: Any = jnp.float32,
                     **overrides: Any):
  """Builds the vision_jax ResNet that matches a torchvision checkpoint, and its variables.

  Args:
    name: torchvision model name, `resnet18`, `resnet34`, `resnet50`, `resnet101` or
      `resnet152`; a '.TAG' suffix (e.g. 'resnet50.IMAGENET1K_V2') is allowed and ignored.
    state_dict: torchvision parameter names -> arrays (numpy, torch tensors on the CPU or
      anything `np.asarray` takes), e.g. `model.state_dict()` or
      `safetensors.numpy.load_file(...)`. `num_batches_tracked` entries are ignored.
    dtype: compute dtype of the returned module.
    **overrides: extra `create_model` overrides (drop_path_rate=0.1, say).

  Returns:
    (module, variables): `module.apply(variables, images_nhwc, train=False)` gives the
    torchvision model's eval-mode logits on the NCHW version of the input. The number
    of classes is read from `fc.weight` (no `fc.*`: 0 classes, pooled features).

  Raises:
    WeightLoadError: the name is not a supported torchvision ResNet, or keys are
      missing, unexpected or of the wrong shape (every mismatch is listed).
  """
  arch = name.split(".")[0]
  if arch in _UNSUPPORTED:
    raise WeightLoadError(
        f"from_torchvision({name!r}): torchvision's {arch} has no vision_jax counterpart: "
        f"{_UNSUPPORTED[arch]}. Supported: {', '.join(TORCHVISION_RESNETS)}.")
  if arch not in TORCHVISION_RESNETS:
    raise WeightLoadError(
        f"from_torchvision({name!r}): unknown torchvision model. Supported: "
        f"{', '.join(TORCHVISION_RESNETS)}.")
  state_dict = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                for k, v in state_dict.items()}
  try:
    return from_timm(TORCHVISION_RESNETS[arch], state_dict, dtype=dtype, **overrides)
  except WeightLoadError as e:
    raise WeightLoadError(
        f"from_torchvision({name!r}): torchvision's ResNet keys are timm's, so timm's "
        f"resnet mapping checked them:\n{e}") from e
