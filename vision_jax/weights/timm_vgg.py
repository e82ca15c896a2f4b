"""timm and torchvision -> vision_jax mappings for the vgg family (timm's registers itself).

Covers timm's `vgg11`, `vgg11_bn`, `vgg13`, `vgg13_bn`, `vgg16`, `vgg16_bn`, `vgg19` and
`vgg19_bn` (any tag; the `tv_in1k` weights are torchvision's), and torchvision's models
of the same names. The convolutional part has the same keys in both libraries; the
classifier differs in names and layout:

  ours                           timm                     torchvision
  params/features_{i}/kernel     features.{i}.weight      features.{i}.weight
  params/features_{i}/scale      features.{i}.weight (BN) features.{i}.weight
  batch_stats/features_{i}/mean  features.{i}.running_mean
  params/pre_logits/fc1/kernel   pre_logits.fc1.weight    classifier.0.weight
                                 (4096, 512, 7, 7)        (4096, 25088), reshaped to a 7x7 conv
  params/pre_logits/fc2/kernel   pre_logits.fc2.weight    classifier.3.weight
                                 (4096, 4096, 1, 1)       (4096, 4096)
  params/head/kernel             head.fc.weight           classifier.6.weight

`from_timm` builds the model with `head_style='timm'` (timm's ConvMlp: small maps are
pooled up to 7x7, larger ones slide the 7x7 layer and are averaged after it);
`from_torchvision` with `head_style='torchvision'` (adaptive average pool to 7x7).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from vision_jax.weights.core import (NoCounterpart, Path, TimmFamily, Transform,
                                     conv1x1_to_dense,
                                     conv_kernel, dense_kernel, identity)

_PATTERN = r"vgg(11|13|16|19)(_bn)?"
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}


def _flat_to_conv7x7(w: np.ndarray) -> np.ndarray:
  """torchvision's Linear(C*7*7, out) over an NCHW-flattened map -> our 7x7 conv kernel."""
  return conv_kernel(w.reshape(w.shape[0], -1, 7, 7))


# Classifier modules: ours -> (timm module, kernel transform), (torchvision module, transform).
_CLASSIFIER = {
    ("pre_logits", "fc1"): (("pre_logits.fc1", conv_kernel), ("classifier.0", _flat_to_conv7x7)),
    ("pre_logits", "fc2"): (("pre_logits.fc2", conv1x1_to_dense),
                            ("classifier.3", dense_kernel)),
    ("head",): (("head.fc", dense_kernel), ("classifier.6", dense_kernel)),
}


def _leaf_key(collection: str, path: Path, torchvision: bool) -> tuple[str, Transform]:
  *modules, leaf = path
  if collection not in ("params", "batch_stats") or leaf not in _LEAF or not modules:
    raise NoCounterpart(path)
  feature = re.fullmatch(r"features_(\d+)", modules[0]) if len(modules) == 1 else None
  if feature:
    return f"features.{feature[1]}.{_LEAF[leaf]}", conv_kernel if leaf == "kernel" else identity
  if tuple(modules) in _CLASSIFIER and collection == "params" and leaf in ("kernel", "bias"):
    module, transform = _CLASSIFIER[tuple(modules)][1 if torchvision else 0]
    return f"{module}.{_LEAF[leaf]}", transform if leaf == "kernel" else identity
  raise NoCounterpart(path)


def timm_leaf_key(collection: str, path: Path) -> tuple[str, Transform]:
  """(timm key, layout transform) of one leaf of a VGG's variables."""
  return _leaf_key(collection, path, torchvision=False)


def torchvision_leaf_key(collection: str, path: Path) -> tuple[str, Transform]:
  """(torchvision key, layout transform) of one leaf of a VGG's variables."""
  return _leaf_key(collection, path, torchvision=True)


def _resolve(timm_name: str, state_dict: Mapping[str, np.ndarray]) -> tuple[str, dict[str, Any]]:
  del state_dict  # every covered timm name is the registered architecture of that name
  return timm_name, {"head_style": "timm"}


FAMILIES = (TimmFamily(
    name="vgg",
    pattern=_PATTERN,
    resolve=_resolve,
    classifier_key="head.fc.weight",
    leaf_key=timm_leaf_key,
),)
