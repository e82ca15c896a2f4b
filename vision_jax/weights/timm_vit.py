"""timm -> vision_jax mapping for the vit family (its `FAMILIES`, listed in timm_families.py).

Covers timm's plain ViTs `vit_{tiny,small,base,large}_patch{8,16,32}_{224,384}`
(their self-supervised tags too: `.dino`, `.mae`, which are the same architectures
without a classifier), the DINOv2 ViTs `vit_{small,base,large}_patch14[_reg4]_dinov2`
(layer scale; the reg4 ones with register tokens and a position embedding over the
grid only) and the ResNetV2 hybrids `vit_*_r*_s*_{224,384}`. The image size is read from
the checkpoint's pos_embed (grid x patch size x backbone stride), and the depth
from its blocks, so checkpoints made at another resolution (timm's `img_size=`)
or depth load too.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from vision_jax.models import vit
from vision_jax.models.registry import list_models
from vision_jax.weights.core import (NoCounterpart, Path, TimmFamily, Transform,
                                     conv_kernel, dense_kernel,
                                     identity, infer_architecture, shapes_of)
from vision_jax.weights.timm_resnet_v2 import resnet_v2_leaf_key

_PLAIN = r"vit_(tiny|small|base|large)_patch(8|16|32)_(224|384)"
_DINOV2 = r"vit_(small|base|large)_patch14(_reg4)?_dinov2"
_HYBRID = r"vit_(" + "|".join(vit.HYBRIDS) + r")_(224|384)"
# Hybrids whose backbone is the ResNetV2 stem alone, and those with stages.
_STEM_ONLY = r"vit_(" + "|".join(k for k, v in vit.HYBRIDS.items() if not v[1]) + r")_(224|384)"
_WITH_STAGES = r"vit_(" + "|".join(k for k, v in vit.HYBRIDS.items() if v[1]) + r")_(224|384)"
_BACKBONE_PREFIX = "patch_embed.backbone."


def resolve(arch: str, sd: Mapping[str, np.ndarray]) -> tuple[str, dict[str, Any]]:
  """The registered model for a timm name, with img_size / depth / patch overrides."""
  overrides: dict[str, Any] = {}
  plain = re.fullmatch(_PLAIN, arch)
  dinov2 = re.fullmatch(_DINOV2, arch)
  prefix_tokens = 1
  if dinov2:
    name, patch, stride = arch, 14, 1
    # reg4: the position embedding leaves out the class and register tokens.
    prefix_tokens = 0 if dinov2.group(2) else 1
  elif plain:
    word, patch, res = plain.group(1), int(plain.group(2)), int(plain.group(3))
    name = arch
    if name not in list_models():
      # e.g. vit_base_patch8_224: same architecture as patch16, other patch size.
      name = f"vit_{word}_patch16_{res}"
      overrides["patch_size"] = patch
    stride = 1
  else:
    stem, res = re.fullmatch(_HYBRID, arch).groups()
    name = arch if arch in list_models() else f"vit_{stem}_224"
    _, layers, patch = vit.HYBRIDS[stem]
    stride = vit.backbone_stride(layers)
  if "fc_norm.weight" in sd:
    # timm keeps the final norm after the pool only for its avg-style pools (MAE's
    # fine-tuned layout); 'avg' is the one we implement.
    overrides.update(global_pool="avg", fc_norm=True)
  overrides.update(infer_architecture(
      shapes_of(sd), f"from_timm({arch!r})", block_pattern=r"blocks\.(\d+)\.",
      pos_embed="pos_embed", pixels_per_token=patch * stride, prefix_tokens=prefix_tokens))
  return name, overrides


def leaf_key(collection: str, path: Path, stem_only: bool = False) -> tuple[str, Transform]:
  """timm key and layout transform of one leaf of our variables.

  Args:
    collection: variable collection ('params'; ViTs have no other).
    path: path of the leaf inside the collection.
    stem_only: the model is a hybrid whose backbone is the ResNetV2 stem alone;
      timm then uses the stem itself as the backbone, so its keys have no 'stem.'.

  Returns:
    (timm key, transform from timm's layout to ours).
  """
  if collection != "params":
    raise NoCounterpart(path)  # a ViT has only 'params'
  if path[:2] == ("patch_embed", "backbone"):
    return resnet_v2_leaf_key(collection, path[2:], prefix=_BACKBONE_PREFIX,
                              stem_only=stem_only)
  if path in (("cls_token",), ("reg_token",), ("pos_embed",)):
    return path[0], identity
  *modules, leaf = path
  modules = [re.sub(r"^blocks_(\d+)$", r"blocks.\1", m) for m in modules]
  prefix = ".".join(modules)
  if leaf == "kernel":
    return f"{prefix}.weight", conv_kernel if modules == ["patch_embed", "proj"] else dense_kernel
  if leaf == "scale":
    return f"{prefix}.weight", identity
  if leaf == "bias":
    return f"{prefix}.bias", identity
  if leaf == "gamma":  # layer scale (blocks.N.ls1 / ls2)
    return f"{prefix}.gamma", identity
  raise NoCounterpart(path)


# Two families that differ only in the backbone keys: from_timm's leaf_key sees
# paths, not the model, and the stem-only hybrid's backbone keys lack 'stem.'.
FAMILIES = (
TimmFamily(
    name="vit_hybrid_stem",
    pattern=_STEM_ONLY,
    resolve=resolve,
    classifier_key="head.weight",
    leaf_key=lambda collection, path: leaf_key(collection, path, stem_only=True),
),
TimmFamily(
    name="vit",
    pattern=f"{_PLAIN}|{_DINOV2}|{_WITH_STAGES}",
    resolve=resolve,
    classifier_key="head.weight",
    leaf_key=leaf_key,
),
)
