"""Load torchvision state dicts into vision_jax models.

torchvision's `resnet18/34/50/101/152` are ResNet v1.5 (the stride of a
bottleneck sits in its 3x3 conv), with the same module tree as timm's ResNets:
`conv1`, `bn1`, `layer{s}.{b}.{conv,bn}{1,2,3}`, `layer{s}.{b}.downsample.{0,1}`
and the classifier `fc`, so they use timm's resnet key mapping. torchvision's
`vgg11` ... `vgg19_bn` share timm's feature keys but keep the classifier as
`classifier.{0,3,6}` Linear layers after an adaptive average pool to 7x7; they are
built with `head_style='torchvision'` (see `models/vgg.py` and `weights/timm_vgg.py`).
Matching, checks and the error report are those of `weights.core`, shared with
every loader.

`wide_resnet*` (bottleneck twice as wide as a quarter of its output) and
`resnext*` (grouped 3x3 convs) have no vision_jax counterpart and are refused
with a `WeightLoadError`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax.numpy as jnp

from vision_jax.weights import timm_resnet, timm_vgg
from vision_jax.weights.core import (Path, Transform, WeightLoadError, infer_architecture,
                                     shapes_of, to_numpy)
from vision_jax.weights.core import load_state_dict

LeafKey = Callable[[str, Path], tuple[str, Transform]]

# torchvision name -> (vision_jax registry name, key mapping, classifier weight key,
# create_model arguments).
TORCHVISION_MODELS: dict[str, tuple[str, LeafKey, str, dict[str, Any]]] = {
    name: (name, timm_resnet.leaf_key, "fc.weight", {})
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
}
TORCHVISION_MODELS.update({
    name: (name, timm_vgg.torchvision_leaf_key, "classifier.6.weight",
           {"head_style": "torchvision"})
    for name in ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
                 "vgg19_bn")
})
# torchvision's ImageNet-1k weights of those models: WEIGHTS name -> (file name in torch's
# hub cache, as torchvision downloads it; eval resize side; eval crop side). All of them
# resize bilinearly and normalise with the ImageNet mean and std. Written out, not read
# from torchvision, because importing torchvision after TensorFlow crashes the process;
# tests/test_hub.py checks the table against torchvision's own enums.
TORCHVISION_URL = "https://download.pytorch.org/models/"
TORCHVISION_WEIGHTS: dict[str, dict[str, tuple[str, int, int]]] = {
    "resnet18": {"IMAGENET1K_V1": ("resnet18-f37072fd.pth", 256, 224)},
    "resnet34": {"IMAGENET1K_V1": ("resnet34-b627a593.pth", 256, 224)},
    "resnet50": {"IMAGENET1K_V1": ("resnet50-0676ba61.pth", 256, 224),
                 "IMAGENET1K_V2": ("resnet50-11ad3fa6.pth", 232, 224)},
    "resnet101": {"IMAGENET1K_V1": ("resnet101-63fe2227.pth", 256, 224),
                  "IMAGENET1K_V2": ("resnet101-cd907fc2.pth", 232, 224)},
    "resnet152": {"IMAGENET1K_V1": ("resnet152-394f9c45.pth", 256, 224),
                  "IMAGENET1K_V2": ("resnet152-f82ba261.pth", 232, 224)},
    "vgg11": {"IMAGENET1K_V1": ("vgg11-8a719046.pth", 256, 224)},
    "vgg11_bn": {"IMAGENET1K_V1": ("vgg11_bn-6002323d.pth", 256, 224)},
    "vgg13": {"IMAGENET1K_V1": ("vgg13-19584684.pth", 256, 224)},
    "vgg13_bn": {"IMAGENET1K_V1": ("vgg13_bn-abd245e5.pth", 256, 224)},
    "vgg16": {"IMAGENET1K_V1": ("vgg16-397923af.pth", 256, 224)},
    "vgg16_bn": {"IMAGENET1K_V1": ("vgg16_bn-6c64b313.pth", 256, 224)},
    "vgg19": {"IMAGENET1K_V1": ("vgg19-dcbb9e9d.pth", 256, 224)},
    "vgg19_bn": {"IMAGENET1K_V1": ("vgg19_bn-c79401a0.pth", 256, 224)},
}
# Kept for callers that list the supported ResNets.
TORCHVISION_RESNETS: dict[str, str] = {n: v[0] for n, v in TORCHVISION_MODELS.items()
                                       if n.startswith("resnet")}
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
  """Builds the vision_jax model that matches a torchvision checkpoint, and its variables.

  Args:
    name: torchvision model name, one of `TORCHVISION_MODELS` (`resnet18` ... `resnet152`,
      `vgg11` ... `vgg19_bn`); a '.TAG' suffix (e.g. 'resnet50.IMAGENET1K_V2') is allowed
      and ignored.
    state_dict: torchvision parameter names -> arrays (numpy, torch tensors on any device
      or anything `np.asarray` takes), e.g. `model.state_dict()` or
      `safetensors.numpy.load_file(...)`. `num_batches_tracked` entries are ignored.
    dtype: compute dtype of the returned module.
    **overrides: extra `create_model` overrides (drop_path_rate=0.1, say).

  Returns:
    (module, variables): `module.apply(variables, images_nhwc, train=False)` gives the
    torchvision model's eval-mode logits on the NCHW version of the input. The number
    of classes is read from the classifier (no classifier: 0 classes, pooled features).

  Raises:
    WeightLoadError: the name is not a supported torchvision model, or keys are
      missing, unexpected or of the wrong shape (every mismatch is listed).
  """
  arch = name.split(".")[0]
  supported = ", ".join(TORCHVISION_MODELS)
  if arch in _UNSUPPORTED:
    raise WeightLoadError(
        f"from_torchvision({name!r}): torchvision's {arch} has no vision_jax counterpart: "
        f"{_UNSUPPORTED[arch]}. Supported: {supported}.")
  if arch not in TORCHVISION_MODELS:
    raise WeightLoadError(
        f"from_torchvision({name!r}): unknown torchvision model. Supported: {supported}.")
  model_name, leaf_key, classifier_key, kwargs = TORCHVISION_MODELS[arch]
  sd = to_numpy(state_dict)
  caller = f"from_torchvision({name!r})"
  inferred = infer_architecture(shapes_of(sd), caller, classifier=(classifier_key, 0))
  return load_state_dict(caller, model_name, sd, leaf_key, {**inferred, **kwargs, **overrides},
                         dtype=dtype, ignore=r".*num_batches_tracked$",
                         footer="Check that the checkpoint belongs to this torchvision model.")
