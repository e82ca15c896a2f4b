"""timm -> vision_jax mapping for the efficientnet family (its `FAMILIES`, see timm_families.py).

Covers timm's `tf_efficientnet_b0..b7` (TensorFlow ports: SAME padding, BN eps
1e-3, our registered defaults) and `efficientnet_b0..b7` (PyTorch-trained:
symmetric padding, BN eps 1e-5, same architecture otherwise), any pretrained
tag. Other timm EfficientNets (pruned, GroupNorm, B8/L2, lite, V2, ...) have
other layers or widths and are refused by name.

Our variables mirror timm's module tree, so each leaf maps to one key:

  params/conv_stem/kernel                       conv_stem.weight
  params/bn1/{scale,bias}                       bn1.{weight,bias}
  batch_stats/bn1/{mean,var}                    bn1.{running_mean,running_var}
  params/blocks_1_0/conv_dw/kernel              blocks.1.0.conv_dw.weight
  params/blocks_1_0/se/conv_reduce/{kernel,bias}  blocks.1.0.se.conv_reduce.{weight,bias}
  params/head/{kernel,bias}                     classifier.{weight,bias}
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from vision_jax.weights.core import (NoCounterpart, Path, TimmFamily, Transform,
                                     WeightLoadError, conv_kernel,
                                     dense_kernel, identity)

_PATTERN = r"(tf_)?efficientnet_b[0-7]"
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}
_BLOCK = re.compile(r"blocks_(\d+)_(\d+)")

# timm's PyTorch-trained efficientnet_bN differ from tf_efficientnet_bN only in these
# (read in timm 1.0.31's efficientnet.py, and checked by parity for B0-B7). Their
# pretrained configs differ too (train/test sizes such as 288/320 for B3, and mean/std
# 0.5 for the ra4 tags): take the preprocessing from timm's config of the tag, not
# from `model_info`, which describes the tf_ weights.
_PYTORCH_STYLE = {"padding": "symmetric", "bn_epsilon": 1e-5}


def _resolve(timm_name: str, state_dict: Mapping[str, np.ndarray]) -> tuple[str, dict[str, Any]]:
  del state_dict  # width and depth follow from the name; the shape checks catch the rest
  match = re.fullmatch(r"(tf_)?efficientnet_(b[0-7])", timm_name)
  if match is None:
    raise WeightLoadError(
        f"from_timm: {timm_name!r} is not supported by the efficientnet family; only "
        "tf_efficientnet_b0..b7 and efficientnet_b0..b7 are.")
  tf_port, variant = match.groups()
  return f"efficientnet_{variant}", ({} if tf_port else dict(_PYTORCH_STYLE))


def _leaf_key(collection: str, path: Path) -> tuple[str, Transform]:
  """(timm key, layout transform) of one leaf of our variables."""
  *modules, leaf = path
  if collection not in ("params", "batch_stats") or leaf not in _LEAF or not modules:
    raise NoCounterpart(path)
  if modules == ["head"]:
    return f"classifier.{_LEAF[leaf]}", dense_kernel if leaf == "kernel" else identity
  parts = [_BLOCK.sub(r"blocks.\1.\2", m) for m in modules]
  return ".".join(parts + [_LEAF[leaf]]), conv_kernel if leaf == "kernel" else identity


FAMILIES = (TimmFamily(
    name="efficientnet",
    pattern=_PATTERN,
    resolve=_resolve,
    classifier_key="classifier.weight",
    leaf_key=_leaf_key,
),)
