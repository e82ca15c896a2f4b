"""timm -> vision_jax mapping for the resnet_v2 family (its `FAMILIES`, listed in timm_families.py).

Covers timm's BiT models `resnetv2_{50,101,152}x{1,2,3,4}_bit`, and offers
`resnet_v2_leaf_key` with a key prefix so that the ViT-hybrid mapping can reuse
it for `patch_embed.backbone.*`.

Our modules mirror timm's names: `stem/conv`, `stem/norm`,
`stages_{i}_blocks_{j}/{conv1,norm1,...,downsample/conv}`, `norm`, `head`.
Weight standardisation happens in the forward pass on both sides, so the raw
conv weights are copied as they are.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from vision_jax import models
from vision_jax.weights.core import (NoCounterpart, Path, TimmFamily, Transform,
                                     WeightLoadError,
                                     conv1x1_to_dense, conv_kernel, identity)

_BIT_PATTERN = r"resnetv2_(50|101|152)x(1|2|3|4)_bit"
_BLOCK = re.compile(r"stages_(\d+)_blocks_(\d+)")


def resnet_v2_leaf_key(collection: str, path: Path, prefix: str = "",
                       stem_only: bool = False) -> tuple[str, Transform]:
  """The timm key of one leaf of a `ResNetV2`'s variables, and its layout transform.

  Args:
    collection: variable collection; ResNetV2 (GroupNorm only) has just 'params'.
    path: path of the leaf inside the ResNetV2 module's collection.
    prefix: prepended to every timm key, e.g. 'patch_embed.backbone.' for the
      backbone of a timm ViT-hybrid.
    stem_only: the module has `layers=()`; timm then uses the bare stem
      Sequential as the backbone, whose keys lack the 'stem.' level
      (e.g. 'patch_embed.backbone.conv.weight').

  Returns:
    (timm key, transform from timm's layout to ours).
  """
  if collection != "params":
    raise NoCounterpart(path)  # ResNetV2 (GroupNorm only) has no other collection
  if path[0] == "head":
    if path[-1] == "kernel":  # timm's classifier is a 1x1 conv
      return f"{prefix}head.fc.weight", conv1x1_to_dense
    return f"{prefix}head.fc.bias", identity
  parts = list(path[:-1])
  if stem_only and parts and parts[0] == "stem":
    parts = parts[1:]
  parts = [_BLOCK.sub(r"stages.\1.blocks.\2", p) for p in parts]
  leaf = path[-1]
  if leaf == "kernel":
    return f"{prefix}{'.'.join(parts)}.weight", conv_kernel
  if leaf == "scale":  # GroupNorm gamma
    return f"{prefix}{'.'.join(parts)}.weight", identity
  return f"{prefix}{'.'.join(parts)}.{leaf}", identity


def _resolve(timm_name: str, state_dict: Mapping[str, np.ndarray]) -> tuple[str, dict]:
  """BiT names map to the registered name; unregistered widths reuse the same depth."""
  del state_dict  # every BiT checkpoint shares the stem, padding and eps
  if timm_name in models.list_models(family="resnet_v2"):
    return timm_name, {}
  match = re.fullmatch(_BIT_PATTERN, timm_name)
  if match is None:
    raise WeightLoadError(f"from_timm: {timm_name!r} is not a BiT ResNetV2 name.")
  depth, width = match.groups()
  same_depth = models.list_models(f"resnetv2_{depth}x*_bit")
  if not same_depth:
    raise WeightLoadError(f"from_timm({timm_name!r}): no registered BiT ResNetV2 of depth {depth}.")
  return same_depth[0], {"width_factor": int(width)}


FAMILIES = (TimmFamily(
    name="resnet_v2",
    pattern=_BIT_PATTERN,
    resolve=_resolve,
    classifier_key="head.fc.weight",
    leaf_key=resnet_v2_leaf_key,
),)
