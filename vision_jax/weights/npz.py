"""Import and export of the .npz checkpoints of google-research/vision_transformer and BiT.

Layouts (flax / TF parameter names joined by '/', HWIO conv kernels, (in, out)
dense kernels), as read by timm's `.npz` loaders:

ViT (google-research/vision_transformer, AugReg):
  embedding/{kernel,bias}                                  patch_embed/proj
  cls                                                       cls_token (1, 1, D)
  Transformer/posembed_input/pos_embedding                  pos_embed (1, 1 + N, D)
  Transformer/encoderblock_{i}/LayerNorm_0/{scale,bias}     blocks_{i}/norm1
  .../MultiHeadDotProductAttention_1/{query,key,value}/kernel (D, heads, head_dim)
  .../MultiHeadDotProductAttention_1/{query,key,value}/bias   (heads, head_dim)
                                                            blocks_{i}/attn/qkv (fused)
  .../MultiHeadDotProductAttention_1/out/kernel (heads, head_dim, D), out/bias
                                                            blocks_{i}/attn/proj
  .../LayerNorm_2/{scale,bias}                              blocks_{i}/norm2
  .../MlpBlock_3/Dense_{0,1}/{kernel,bias}                  blocks_{i}/mlp/fc{1,2}
  Transformer/encoder_norm/{scale,bias}                     norm
  head/{kernel,bias}                                        head
ViT-hybrids add their ResNet (non-preact, GroupNorm, weight-standardised):
  conv_root/kernel, gn_root/{scale,bias}                    patch_embed/backbone/stem
  block{s}/unit{u}/{conv,gn}{1,2,3}/...                     .../stages_{s-1}_blocks_{u-1}
  block{s}/unit{u}/{conv,gn}_proj/...                       .../downsample/{conv,norm}
BiT (google-research/big_transfer), under 'resnet/':
  root_block/standardized_conv2d/kernel                     stem/conv
  block{s}/unit{uu}/{a,b,c}/standardized_conv2d/kernel      stages_{s-1}_blocks_{uu-1}/conv{1,2,3}
  block{s}/unit{uu}/{a,b,c}/group_norm/{gamma,beta}         .../norm{1,2,3}
  block{s}/unit{uu}/a/proj/standardized_conv2d/kernel       .../downsample/conv
  group_norm/{gamma,beta}                                   norm
  head/conv2d/{kernel (1, 1, C, classes), bias}             head

Each leaf of our variables is tied to one or more .npz arrays by an `NpzSlot`
(the fused qkv to three), and `weights.core.match` checks every array the same
way as for `from_timm`: missing keys, unexpected keys, shapes and leaves without
an .npz counterpart, all listed in one `WeightLoadError`. Arrays whose shape
differs from the expected one only by size-1 dimensions (a (1, 1, 1, C)
GroupNorm gamma, say) are accepted. Classes, depth and image size are read by
`weights.core.infer_architecture`, from the file on import and from our
variables on export.

Not covered: big_vision's own ViT layout ('pos_embedding' at the top level,
'MultiHeadDotProductAttention_0', scanned 'encoderblock'), 'params/' or
'opt/target/' prefixes, and the tanh 'pre_logits' layer of the original
ImageNet-21k ViT checkpoints (vision_jax's ViT has no such layer).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from flax import traverse_util

from vision_jax import models
from vision_jax.models import vit
from vision_jax.weights.core import (NoCounterpart, Path, Slot, WeightLoadError,
                                     abstract_variables, build_model, check_variables,
                                     infer_architecture, match, shapes_of)

_FAMILIES = ("vit", "resnet_v2")
_BIT_PREFIX = "resnet/"
_BLOCK = re.compile(r"stages_(\d+)_blocks_(\d+)")
_LAYER = re.compile(r"(conv|norm)([123])")


@dataclasses.dataclass(frozen=True)
class NpzSlot:
  """How one leaf of our variables is stored in the .npz file.

  Attributes:
    keys: the .npz keys that hold the leaf (three for a fused qkv).
    to_ours: (arrays in `keys` order, our leaf shape) -> our leaf.
    to_npz: our leaf -> arrays in `keys` order.
  """

  keys: tuple[str, ...]
  to_ours: Callable[[Sequence[np.ndarray], tuple[int, ...]], np.ndarray]
  to_npz: Callable[[np.ndarray], list[np.ndarray]]


def _same(key: str) -> NpzSlot:
  """Stored as it is (flax and the .npz files share conv and dense layouts)."""
  return NpzSlot((key,), lambda arrays, shape: arrays[0], lambda w: [w])


def _reshaped(key: str, npz_shape: Callable[[tuple[int, ...]], tuple[int, ...]]) -> NpzSlot:
  """Same data, another shape: `npz_shape` maps our shape to the stored one."""
  return NpzSlot((key,), lambda arrays, shape: arrays[0].reshape(shape),
              lambda w: [w.reshape(npz_shape(w.shape))])


def _fused_qkv(prefix: str, leaf: str, num_heads: int) -> NpzSlot:
  """Our fused qkv Dense (outputs ordered q|k|v, head, head_dim) <-> query, key, value."""
  keys = tuple(f"{prefix}{n}/{leaf}" for n in ("query", "key", "value"))
  if leaf == "kernel":  # ours (D, 3D); stored (D, heads, head_dim) each
    def to_ours(arrays, shape):
      return np.concatenate([a.reshape(a.shape[0], -1) for a in arrays], axis=1)

    def to_npz(w):
      width = w.shape[0]
      return list(np.moveaxis(w.reshape(width, 3, num_heads, -1), 1, 0))
  else:  # ours (3D,); stored (heads, head_dim) each
    def to_ours(arrays, shape):
      return np.concatenate([a.reshape(-1) for a in arrays])

    def to_npz(w):
      return list(w.reshape(3, num_heads, -1))
  return NpzSlot(keys, to_ours, to_npz)


def _split(path: Path) -> tuple[Path, str]:
  return tuple(path[:-1]), path[-1]


def _vit_slot(collection: str, path: Path, num_heads: int) -> NpzSlot:
  """The Slot of one leaf of a VisionTransformer (plain or hybrid)."""
  if collection != "params":
    raise NoCounterpart(path)
  if path[:2] == ("patch_embed", "backbone"):
    return _hybrid_backbone_slot(path[2:])
  if path == ("cls_token",):
    return _same("cls")
  if path == ("pos_embed",):
    return _same("Transformer/posembed_input/pos_embedding")
  modules, leaf = _split(path)
  if leaf not in ("kernel", "bias", "scale"):
    raise NoCounterpart(path)
  top = {("patch_embed", "proj"): "embedding", ("norm",): "Transformer/encoder_norm",
         ("head",): "head"}
  if modules in top:
    return _same(f"{top[modules]}/{leaf}")
  block = re.fullmatch(r"blocks_(\d+)", modules[0]) if modules else None
  if block is None:
    raise NoCounterpart(path)
  prefix = f"Transformer/encoderblock_{block[1]}/"
  attn = f"{prefix}MultiHeadDotProductAttention_1/"
  inner = modules[1:]
  if inner == ("attn", "qkv"):
    return _fused_qkv(attn, leaf, num_heads)
  if inner == ("attn", "proj"):
    if leaf == "kernel":  # ours (D, D); stored (heads, head_dim, D)
      return _reshaped(f"{attn}out/kernel", lambda s: (num_heads, s[0] // num_heads, s[1]))
    return _same(f"{attn}out/bias")
  names = {("norm1",): "LayerNorm_0", ("norm2",): "LayerNorm_2",
           ("mlp", "fc1"): "MlpBlock_3/Dense_0", ("mlp", "fc2"): "MlpBlock_3/Dense_1"}
  if inner in names:
    return _same(f"{prefix}{names[inner]}/{leaf}")
  raise NoCounterpart(path)


def _resnet_unit(path: Path, modules: Path) -> tuple[int, int, Path, re.Match | None]:
  """Where a leaf sits in a ResNetV2 block, in the 1-based numbering of the .npz keys.

  Args:
    path: the leaf's path, for the error.
    modules: the path without the leaf, starting at the `stages_{s}_blocks_{u}` block.

  Returns:
    (stage s + 1, unit u + 1, the modules inside the block, the match of a lone
    'conv{i}' / 'norm{i}' module (kind, i) or None).

  Raises:
    NoCounterpart: `modules` does not start at a block.
  """
  block = _BLOCK.fullmatch(modules[0]) if modules else None
  if block is None:
    raise NoCounterpart(path)
  inner = modules[1:]
  layer = _LAYER.fullmatch(inner[0]) if len(inner) == 1 else None
  return int(block[1]) + 1, int(block[2]) + 1, inner, layer


def _hybrid_backbone_slot(path: Path) -> NpzSlot:
  """The Slot of one leaf of a hybrid's ResNetV2 backbone (path inside the backbone)."""
  modules, leaf = _split(path)
  if modules == ("stem", "conv") and leaf == "kernel":
    return _same("conv_root/kernel")
  if modules == ("stem", "norm") and leaf in ("scale", "bias"):
    return _same(f"gn_root/{leaf}")
  stage, index, inner, layer = _resnet_unit(path, modules)
  unit = f"block{stage}/unit{index}/"
  if inner == ("downsample", "conv") and leaf == "kernel":
    return _same(f"{unit}conv_proj/kernel")
  if inner == ("downsample", "norm") and leaf in ("scale", "bias"):
    return _same(f"{unit}gn_proj/{leaf}")
  if layer and layer[1] == "conv" and leaf == "kernel":
    return _same(f"{unit}conv{layer[2]}/kernel")
  if layer and layer[1] == "norm" and leaf in ("scale", "bias"):
    return _same(f"{unit}gn{layer[2]}/{leaf}")
  raise NoCounterpart(path)


def _bit_slot(collection: str, path: Path) -> NpzSlot:
  """The Slot of one leaf of a BiT ResNetV2 (keys under 'resnet/')."""
  if collection != "params":
    raise NoCounterpart(path)
  p = _BIT_PREFIX
  gn = {"scale": "gamma", "bias": "beta"}
  modules, leaf = _split(path)
  if modules == ("stem", "conv") and leaf == "kernel":
    return _same(f"{p}root_block/standardized_conv2d/kernel")
  if modules == ("norm",) and leaf in gn:
    return _same(f"{p}group_norm/{gn[leaf]}")
  if modules == ("head",):
    if leaf == "kernel":  # ours (C, classes); stored as a 1x1 conv (1, 1, C, classes)
      return _reshaped(f"{p}head/conv2d/kernel", lambda s: (1, 1) + tuple(s))
    if leaf == "bias":
      return _same(f"{p}head/conv2d/bias")
  stage, index, inner, layer = _resnet_unit(path, modules)
  unit = f"{p}block{stage}/unit{index:02d}/"
  if inner == ("downsample", "conv") and leaf == "kernel":
    return _same(f"{unit}a/proj/standardized_conv2d/kernel")
  if layer:
    sub = "abc"[int(layer[2]) - 1]
    if layer[1] == "conv" and leaf == "kernel":
      return _same(f"{unit}{sub}/standardized_conv2d/kernel")
    if layer[1] == "norm" and leaf in gn:
      return _same(f"{unit}{sub}/group_norm/{gn[leaf]}")
  raise NoCounterpart(path)


# ---------------------------------------------------------------------------------------------
# Model resolution.


def _arch(caller: str, model_name: str) -> str:
  """Registered name (a '.tag' suffix is dropped) of a ViT, ViT-hybrid or BiT model."""
  arch = model_name.split(".")[0]
  supported = [n for f in _FAMILIES for n in models.list_models(family=f)]
  if arch not in supported:
    raise WeightLoadError(
        f"{caller}({model_name!r}): not a vision_jax model with an .npz layout. Supported: "
        f"the registered ViTs, ViT-hybrids and BiT ResNetV2s: {', '.join(supported)}.")
  return arch


def _pixels_per_token(caller: str, arch: str, overrides: Mapping[str, Any]) -> Callable[[], int]:
  """Side of input per position-embedding token of `arch` (patch size x backbone stride)."""
  def pixels() -> int:
    base = build_model(caller, arch, **overrides)
    stride = 1 if base.backbone_layers is None else vit.backbone_stride(base.backbone_layers)
    return base.patch_size * stride
  return pixels


def _infer(caller: str, arch: str, family: str, shapes: Mapping[str, Sequence[int]],
           overrides: Mapping[str, Any], ours: bool) -> dict[str, Any]:
  """Classes, and for ViTs depth and image size, of .npz arrays (or of our own variables)."""
  if family == "vit":
    keys = (("params/head/kernel", r"params/blocks_(\d+)/", "params/pos_embed") if ours else
            ("head/kernel", r"Transformer/encoderblock_(\d+)/",
             "Transformer/posembed_input/pos_embedding"))
    return infer_architecture(
        shapes, caller, classifier=(keys[0], -1), block_pattern=keys[1],
        pos_embed=None if "img_size" in overrides else keys[2],
        pixels_per_token=_pixels_per_token(caller, arch, overrides))
  head = "params/head/kernel" if ours else f"{_BIT_PREFIX}head/conv2d/kernel"
  return infer_architecture(shapes, caller, classifier=(head, -1))


def _slot_fn(family: str, module) -> Callable[[str, Path], NpzSlot]:
  if family == "vit":
    return lambda collection, path: _vit_slot(collection, path, module.num_heads)
  return _bit_slot


# ---------------------------------------------------------------------------------------------
# Import.


def from_npz(model_name: str, npz_mapping: Mapping[str, Any] | str | os.PathLike,
             **overrides: Any):
  """Builds a vision_jax ViT, ViT-hybrid or BiT model from an .npz checkpoint.

  The number of classes is read from the head ('head/kernel', or
  'resnet/head/conv2d/kernel' for BiT; no head: 0 classes, pooled features), and
  for ViTs the depth from the encoder blocks and the image size from the position
  embedding, so checkpoints at other resolutions or depths load too.

  Args:
    model_name: a registered ViT / ViT-hybrid / BiT name, e.g. "vit_base_patch16_224",
      "vit_small_r26_s32_384" or "resnetv2_50x1_bit" ('.tag' suffix allowed).
    npz_mapping: .npz key -> array (e.g. what `np.load(path)` returns), or the path of
      an .npz file.
    **overrides: `create_model` arguments (dtype, drop_path_rate, width_factor for a
      BiT width that is not registered, ...); they win over what is read from the file.

  Returns:
    (module, variables): `module.apply(variables, images_nhwc, train=False)` gives the
    logits of the checkpoint's network.

  Raises:
    WeightLoadError: unknown model, or arrays missing, unexpected or of the wrong shape;
      the message names the model and lists every mismatch.
  """
  caller = f"from_npz({model_name!r})"
  if isinstance(npz_mapping, (str, os.PathLike)):
    with np.load(npz_mapping, allow_pickle=False) as f:
      arrays = {k: np.asarray(f[k]) for k in f.files}
  else:
    arrays = {k: np.asarray(npz_mapping[k]) for k in npz_mapping.keys()}
  arch = _arch("from_npz", model_name)
  family = models.model_info(arch).family
  kwargs = {**_infer(caller, arch, family, shapes_of(arrays), overrides, ours=False),
            **overrides}
  module = build_model(caller, arch, **kwargs)
  slot_of = _slot_fn(family, module)

  def lookup(collection: str, path: Path, shape) -> Slot:
    slot = slot_of(collection, path)
    stored = tuple(a.shape for a in slot.to_npz(np.empty(shape, np.float32)))
    return Slot(slot.keys, slot.to_ours, stored)

  def hint(report) -> str:
    if any(k.startswith("pre_logits/") for k in report.unexpected):
      return ("The 'pre_logits' layer of the original ImageNet-21k ViT checkpoints has no "
              "counterpart in vision_jax's ViT.\n")
    return ""

  variables, _ = match(
      abstract_variables(module, arch, kwargs), lookup, arrays, accept_size1_dims=True,
      hint=hint, header=(f"{caller}: the .npz arrays do not fit vision_jax model {arch!r} "
                         f"(overrides={kwargs})."),
      footer="Check that the checkpoint belongs to this model name.")
  return module, variables


# ---------------------------------------------------------------------------------------------
# Export.


def to_npz(model_name: str, variables: Mapping[str, Any],
           **overrides: Any) -> dict[str, np.ndarray]:
  """Our variables in the .npz layout of google-research vision_transformer / big_transfer.

  `np.savez(path, **to_npz(name, variables))` writes a file that timm's `.npz`
  loaders (`model.load_pretrained(path)`) and `from_npz` read.

  Args:
    model_name: the registered name the variables were made for ('.tag' allowed).
    variables: {'params': ...} of that model; the number of classes, and for ViTs the
      depth and image size, are read from them.
    **overrides: `create_model` overrides the variables were built with beyond those
      (num_heads, patch_size, width_factor, ...).

  Returns:
    .npz key -> numpy array.

  Raises:
    WeightLoadError: unknown model, or variables that do not fit it (every missing,
      unexpected or mis-shaped leaf is listed).
  """
  caller = f"to_npz({model_name!r})"
  arch = _arch("to_npz", model_name)
  family = models.model_info(arch).family
  ours = {c: traverse_util.flatten_dict(dict(tree)) for c, tree in variables.items()}
  shapes = {f"{c}/{'/'.join(p)}": np.shape(v) for c, leaves in ours.items()
            for p, v in leaves.items()}
  kwargs = {**_infer(caller, arch, family, shapes, overrides, ours=True), **overrides}
  module = build_model(caller, arch, **kwargs)
  check_variables(abstract_variables(module, arch, kwargs), variables,
                  header=(f"{caller}: the variables do not fit vision_jax model {arch!r} "
                          f"(overrides={kwargs})."))

  slot_of = _slot_fn(family, module)
  out: dict[str, np.ndarray] = {}
  for collection, leaves in ours.items():
    for path, value in leaves.items():
      try:
        slot = slot_of(collection, path)
      except NoCounterpart as e:
        raise WeightLoadError(f"{caller}: {collection}/{'/'.join(path)} has no place in the "
                              ".npz layout.") from e
      for key, array in zip(slot.keys, slot.to_npz(np.asarray(value))):
        out[key] = np.ascontiguousarray(array)
  return out
