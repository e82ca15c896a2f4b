"""timm -> vision_jax mapping for the resnet family (its `FAMILIES`, listed in timm_families.py).

Covers timm's plain ResNet v1.5 names `resnet18/34/50/101/152/200` (any
pretrained tag). Our variables mirror timm's module tree, so each leaf maps to
one key:

  params/conv1/kernel                      conv1.weight
  params/bn1/{scale,bias}                  bn1.{weight,bias}
  batch_stats/bn1/{mean,var}               bn1.{running_mean,running_var}
  params/layer2_0/conv2/kernel             layer2.0.conv2.weight
  params/layer2_0/downsample_conv/kernel   layer2.0.downsample.0.weight
  params/layer2_0/downsample_bn/scale      layer2.0.downsample.1.weight
  params/head/{kernel,bias}                fc.{weight,bias}
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from vision_jax.weights.core import (NoCounterpart, Path, TimmFamily, Transform,
                                     conv_kernel, dense_kernel,
                                     identity)

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}
_MODULE = {"head": "fc", "downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}


def _resolve(timm_name: str, state_dict: Mapping[str, np.ndarray]) -> tuple[str, dict[str, Any]]:
  del state_dict  # Every covered timm name is one registered architecture, as is.
  return timm_name, {}


def leaf_key(collection: str, path: Path) -> tuple[str, Transform]:
  """(timm key, layout transform) of one leaf of our variables."""
  *modules, leaf = path
  if collection not in ("params", "batch_stats") or leaf not in _LEAF or not modules:
    raise NoCounterpart(path)
  parts = []
  for module in modules:
    block = re.fullmatch(r"(layer\d+)_(\d+)", module)
    parts.append(f"{block[1]}.{block[2]}" if block else _MODULE.get(module, module))
  key = ".".join(parts + [_LEAF[leaf]])
  if leaf == "kernel":
    return key, dense_kernel if modules == ["head"] else conv_kernel
  return key, identity


FAMILIES = (TimmFamily(
    name="resnet",
    pattern=r"resnet(18|34|50|101|152|200)",
    resolve=_resolve,
    classifier_key="fc.weight",
    leaf_key=leaf_key,
),)
