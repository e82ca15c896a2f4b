"""timm -> vision_jax mapping for the efficientnetv2 family (its `FAMILIES`, see timm_families.py).

Covers timm's `tf_efficientnetv2_{b0,b1,b2,b3,s,m,l,xl}` (TensorFlow ports: SAME
padding, BN eps 1e-3, our registered `efficientnetv2_*`), timm's untrained
PyTorch-padded `efficientnetv2_{s,m,l,xl}` (same layers; loaded with symmetric
padding and eps 1e-5) and timm's PyTorch-trained `efficientnetv2_rw_{t,s,m}`,
any pretrained tag (`.in21k` heads of 21843 classes included). Other V2 models
(`gc_efficientnetv2_rw_t`, with global-context attention) are refused by name.

The three block kinds keep timm's module names, so the leaf mapping is
EfficientNet's (`timm_efficientnet._leaf_key`):

  params/blocks_0_1/conv/kernel                 blocks.0.1.conv.weight      (conv + BN)
  params/blocks_1_0/conv_exp/kernel             blocks.1.0.conv_exp.weight  (Fused-MBConv)
  params/blocks_3_0/se/conv_reduce/bias         blocks.3.0.se.conv_reduce.bias  (MBConv)
  params/head/{kernel,bias}                     classifier.{weight,bias}
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from vision_jax.weights.core import TimmFamily, WeightLoadError
from vision_jax.weights.timm_efficientnet import _leaf_key

_PATTERN = r"tf_efficientnetv2_(b[0-3]|s|m|l|xl)|efficientnetv2_(s|m|l|xl|rw_[tsm])"
_PYTORCH_STYLE = {"padding": "symmetric", "bn_epsilon": 1e-5}


def _resolve(timm_name: str, state_dict: Mapping[str, np.ndarray]) -> tuple[str, dict[str, Any]]:
  del state_dict  # the architecture follows from the name; the shape checks catch the rest
  match = re.fullmatch(r"(tf_)?efficientnetv2_(\w+)", timm_name)
  if match is None or not re.fullmatch(_PATTERN, timm_name):
    raise WeightLoadError(
        f"from_timm: {timm_name!r} is not supported by the efficientnetv2 family; only "
        "tf_efficientnetv2_{b0..b3,s,m,l,xl}, efficientnetv2_{s,m,l,xl} and "
        "efficientnetv2_rw_{t,s,m} are.")
  tf_port, variant = match.groups()
  # Our efficientnetv2_rw_* are registered PyTorch-style already; timm's efficientnetv2_s..xl
  # are the TF-layout networks with PyTorch padding and epsilon.
  pytorch_padded = not tf_port and not variant.startswith("rw_")
  return f"efficientnetv2_{variant}", (dict(_PYTORCH_STYLE) if pytorch_padded else {})


FAMILIES = (TimmFamily(
    name="efficientnetv2",
    pattern=_PATTERN,
    resolve=_resolve,
    classifier_key="classifier.weight",
    leaf_key=_leaf_key,
),)
