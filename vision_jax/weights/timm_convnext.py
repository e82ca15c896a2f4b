"""timm -> vision_jax mapping for ConvNeXt and ConvNeXt V2 (`FAMILIES`, listed in timm_families.py).

Covers timm's `convnext_atto`, `convnext_tiny`, `convnext_small`, `convnext_base` and
`convnext_large` (any tag: fb_in1k, fb_in22k_ft_in1k, in12k_ft_in1k, ... at any
resolution, since ConvNeXt has no position embedding), and `convnextv2_atto`, `_femto`,
`_pico`, `_nano`, `_tiny`, `_base`, `_large` and `_huge` (fcmae_ft_in1k,
fcmae_ft_in22k_in1k, ... and the 384/512 px tags; the bare `fcmae` tags hold only the
self-supervised encoder, without head norm or classifier, and do not load). Our
names mirror timm's module tree:

  params/stem_conv/kernel                        stem.0.weight
  params/stem_norm/{scale,bias}                  stem.1.{weight,bias}
  params/stages_{i}_downsample_norm/scale        stages.{i}.downsample.0.weight
  params/stages_{i}_downsample_conv/kernel       stages.{i}.downsample.1.weight
  params/stages_{i}_blocks_{j}/conv_dw/kernel    stages.{i}.blocks.{j}.conv_dw.weight
  params/stages_{i}_blocks_{j}/mlp_fc1/kernel    stages.{i}.blocks.{j}.mlp.fc1.weight
  params/stages_{i}_blocks_{j}/gamma             stages.{i}.blocks.{j}.gamma       (V1)
  params/stages_{i}_blocks_{j}/mlp_grn/scale     stages.{i}.blocks.{j}.mlp.grn.weight (V2)
  params/head_norm/{scale,bias}                  head.norm.{weight,bias}
  params/head/{kernel,bias}                      head.fc.{weight,bias}

timm's atto (V1 and V2) and V2's femto, pico and nano store their MLP as 1x1
convolutions (out, in, 1, 1), the others as Linear (out, in); both load into the same
Dense kernels. GRN's weight and bias are (C,) vectors in both layouts.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from vision_jax.weights.core import (NoCounterpart, Path, TimmFamily, Transform,
                                     conv1x1_to_dense,
                                     conv_kernel, dense_kernel, identity)

_PATTERN = r"convnext_(atto|tiny|small|base|large)"
_V2_PATTERN = r"convnextv2_(atto|femto|pico|nano|tiny|base|large|huge)"
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_TOP = {"stem_conv": "stem.0", "stem_norm": "stem.1", "head_norm": "head.norm",
        "head": "head.fc"}


def _mlp_kernel(w: np.ndarray) -> np.ndarray:
  return conv1x1_to_dense(w) if w.ndim == 4 else dense_kernel(w)


def leaf_key(collection: str, path: Path) -> tuple[str, Transform]:
  """(timm key, layout transform) of one leaf of a ConvNeXt's variables."""
  if collection != "params" or len(path) < 1:
    raise NoCounterpart(path)  # ConvNeXt has only 'params'
  *modules, leaf = path
  if len(modules) == 1 and (m := re.fullmatch(r"stages_(\d+)_blocks_(\d+)", modules[0])) \
      and leaf == "gamma":
    return f"stages.{m[1]}.blocks.{m[2]}.gamma", identity
  if leaf not in _LEAF:
    raise NoCounterpart(path)
  if len(modules) == 1 and modules[0] in _TOP:
    module = _TOP[modules[0]]
    transform = dense_kernel if module == "head.fc" else conv_kernel
  elif len(modules) == 1 and (m := re.fullmatch(r"stages_(\d+)_downsample_(norm|conv)",
                                                 modules[0])):
    module = f"stages.{m[1]}.downsample.{0 if m[2] == 'norm' else 1}"
    transform = conv_kernel
  elif len(modules) == 2 and (m := re.fullmatch(r"stages_(\d+)_blocks_(\d+)", modules[0])):
    inner = {"conv_dw": "conv_dw", "norm": "norm", "mlp_fc1": "mlp.fc1",
             "mlp_fc2": "mlp.fc2", "mlp_grn": "mlp.grn"}.get(modules[1])
    if inner is None:
      raise NoCounterpart(path)
    module = f"stages.{m[1]}.blocks.{m[2]}.{inner}"
    transform = _mlp_kernel if inner.startswith("mlp") else conv_kernel
  else:
    raise NoCounterpart(path)
  return f"{module}.{_LEAF[leaf]}", transform if leaf == "kernel" else identity


def _resolve(timm_name: str, state_dict: Mapping[str, np.ndarray]) -> tuple[str, dict[str, Any]]:
  del state_dict  # the name fixes depths and widths; the shape checks catch the rest
  return timm_name, {}


# V2 differs only in its leaves (GRN, no gamma), which leaf_key maps for both.
FAMILIES = (
    TimmFamily(name="convnext", pattern=_PATTERN, resolve=_resolve,
               classifier_key="head.fc.weight", leaf_key=leaf_key),
    TimmFamily(name="convnextv2", pattern=_V2_PATTERN, resolve=_resolve,
               classifier_key="head.fc.weight", leaf_key=leaf_key),
)
