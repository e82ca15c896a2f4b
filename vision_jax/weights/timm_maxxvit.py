"""timm -> vision_jax mapping for MaxViT and CoAtNet (its `FAMILIES`, listed in timm_families.py).

Covers timm's `maxvit_{tiny,small,base,large,xlarge}_tf_{224,384,512}`, the paper
CoAtNets `coatnet_{0,1,2,3}_224` and timm's `coatnet_{nano,0,1,2,bn_0}_rw_224`. Our
module tree is timm's with '_' for the dotted block index and for a few nested
modules:

  params/stem_conv1/{kernel,bias}                       stem.conv1.{weight,bias}
  batch_stats/stem_norm1/{mean,var}                     stem.norm1.running_{mean,var}
  params/stages_{i}_blocks_{j}/conv/conv2_kxk/kernel    stages.i.blocks.j.conv.conv2_kxk.weight
  params/stages_{i}_blocks_{j}/conv/shortcut_expand     stages.i.blocks.j.conv.shortcut.expand
  params/.../attn_grid/attn/rel_pos/relative_position_bias_table   (same path, dots)
  params/stages_{i}_blocks_{j}/norm1_norm               stages.i.blocks.j.norm1.norm ('T', strided)
  params/norm | head_norm | head_pre_logits             norm | head.norm | head.pre_logits.fc
  params/head/{kernel,bias}                             head.fc.{weight,bias}

timm stores CoAtNet's attention and MLP projections and every squeeze-excite as
1x1 convolutions; ours are Dense layers, loaded with the 1x1 reshaped away.

The image size is read from the relative position tables (MaxViT's window is
the image side / 32; CoAtNet's last stages attend over the whole map), so a
checkpoint fine-tuned at 384 loads as a 384 model whatever its name. Passing
`img_size=` to from_timm builds the model at another size; its tables stay at
the checkpoint's and are resampled in the forward pass as timm resamples them on load.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from vision_jax.weights.core import (NoCounterpart, Path, TimmFamily, Transform, WeightLoadError,
                                     conv1x1_to_dense, conv_kernel, dense_kernel, identity)

_PATTERN = (r"maxvit_(tiny|small|base|large|xlarge)_tf_(224|384|512)"
            r"|coatnet_(0|1|2|3)_224|coatnet_(nano|0|1|2|bn_0)_rw_224")
# Our module names that are timm submodules one level deeper.
_NESTED = {"stem_conv1": "stem.conv1", "stem_norm1": "stem.norm1", "stem_conv2": "stem.conv2",
           "shortcut_expand": "shortcut.expand", "norm1_norm": "norm1.norm",
           "head_norm": "head.norm", "head_pre_logits": "head.pre_logits.fc"}
# Modules that are Dense here (timm: Linear, or a 1x1 conv in CoAtNet's 2-D blocks).
_DENSE = {"qkv", "proj", "fc1", "fc2", "head_pre_logits", "head"}
_BN_LEAVES = {"mean": "running_mean", "var": "running_var"}


def _dense(w: np.ndarray) -> np.ndarray:
  return conv1x1_to_dense(w) if w.ndim == 4 else dense_kernel(w)


def leaf_key(collection: str, path: Path) -> tuple[str, Transform]:
  """(timm key, layout transform) of one leaf of a MaxViT / CoAtNet's variables."""
  *modules, leaf = path
  if not modules:
    raise NoCounterpart(path)
  parts = []
  for m in modules:
    if (found := re.fullmatch(r"stages_(\d+)_blocks_(\d+)", m)):
      parts.append(f"stages.{found[1]}.blocks.{found[2]}")
    elif m == "head" and len(modules) == 1:
      parts.append("head.fc")
    else:
      parts.append(_NESTED.get(m, m))
  module = ".".join(parts)
  if collection == "batch_stats":
    if leaf not in _BN_LEAVES:
      raise NoCounterpart(path)
    return f"{module}.{_BN_LEAVES[leaf]}", identity
  if collection != "params":
    raise NoCounterpart(path)
  if leaf == "relative_position_bias_table":
    return f"{module}.{leaf}", identity
  if leaf == "kernel":
    return f"{module}.weight", _dense if modules[-1] in _DENSE else conv_kernel
  if leaf in ("scale", "bias"):
    return f"{module}.{'weight' if leaf == 'scale' else 'bias'}", identity
  raise NoCounterpart(path)


def resolve(arch: str, sd: Mapping[str, np.ndarray]) -> tuple[str, dict[str, Any]]:
  """The registered model, built at the resolution the checkpoint's bias tables are for."""
  tables = sorted(k for k in sd if k.endswith("relative_position_bias_table"))
  if not tables:
    raise WeightLoadError(f"from_timm({arch!r}): the state dict has no relative position "
                          "tables ('...rel_pos.relative_position_bias_table'); it is not a "
                          "MaxViT / CoAtNet checkpoint.")
  shape = np.shape(sd[tables[-1]])  # the last stage's
  if arch.startswith("maxvit"):
    window = (shape[-1] + 1) // 2  # (heads, 2P - 1, 2P - 1)
    img_size = 32 * window
  else:
    side = (int(round(np.sqrt(shape[0]))) + 1) // 2  # ((2S - 1)^2, heads), S = img / 32
    img_size = 32 * side
  return arch, {"img_size": img_size, "rel_pos_img_size": img_size}


FAMILIES = (TimmFamily(
    name="maxxvit",
    pattern=_PATTERN,
    resolve=resolve,
    classifier_key="head.fc.weight",
    leaf_key=leaf_key,
),)
