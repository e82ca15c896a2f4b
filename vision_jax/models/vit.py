"""Vision Transformer (ViT) and the ResNet + ViT hybrids.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale", arXiv:2010.11929. The layout follows timm's
`VisionTransformer` with its default ('token' pooling) settings so that timm
checkpoints load with matching logits: a class token, learned position
embeddings that cover the class token too, pre-norm blocks with LayerNorm
(eps 1e-6), a fused qkv projection with bias, exact (erf) GELU and a final
LayerNorm before the class-token readout.

Beyond that layout, the options the self-supervised checkpoints need (DINO, MAE,
DINOv2; see docs/self_supervised.md): layer scale (`layer_scale_init`, CaiT /
DINOv2), register tokens (`reg_tokens`, "Vision Transformers Need Registers",
arXiv:2309.16588), position embeddings that skip the prefix tokens
(`no_embed_class`, DeiT III / big_vision), average pooling with a norm after
the pool (`global_pool='avg'`, `fc_norm`, MAE fine-tuning), and inputs of any
size with the position embedding resampled on the fly (`dynamic_img_size`).
Each is off by default, so the original ViTs keep their parameter tree.

Variants are data: `VIT_SIZES` holds the width / depth / MLP size / heads of
Ti, S, B and L, a spec such as "B/16" adds the patch size, and `HYBRIDS`
describes the ResNetV2 backbones (GroupNorm, weight-standardised SAME convs)
that replace the patchify stem in the hybrids.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models.layers import DropPath, check_remat, classifier_head, remat_block
from vision_jax.models.resnet_v2 import ResNetV2
from vision_jax.models.registry import (IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD,
                                        ModelInfo, register_model)

# Sizes of the paper's Table 1 (Ti from DeiT / AugReg):
# name -> (width, depth, mlp_dim, num_heads).
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
}


# Hybrid name stem -> (size, ResNetV2 stage depths, patch size on the feature map).
# An empty stage tuple is the ResNetV2 stem alone (conv 7x7/2 + GroupNorm + max-pool/2).
HYBRIDS: dict[str, tuple[str, tuple[int, ...], int]] = {
    "tiny_r_s16_p8": ("Ti", (), 8),
    "small_r26_s32": ("S", (2, 2, 2, 2), 1),
    "base_r26_s32": ("B", (2, 2, 2, 2), 1),
    "base_r50_s16": ("B", (3, 4, 9), 1),
    "large_r50_s32": ("L", (3, 4, 6, 3), 1),
}

LN_EPS = 1e-6


def vit_config(spec: str) -> dict[str, int]:
  """Module fields for a size/patch spec such as "B/16" or "Ti/16".

  Args:
    spec: "<size>/<patch>" with size one of `VIT_SIZES`.

  Returns:
    The `VisionTransformer` fields width, depth, mlp_dim, num_heads, patch_size.
  """
  size, _, patch = spec.partition("/")
  if size not in VIT_SIZES or not patch.isdigit():
    raise ValueError(f"Bad ViT spec {spec!r}: expected '<size>/<patch>' with size in "
                     f"{sorted(VIT_SIZES)}, e.g. 'B/16'.")
  width, depth, mlp_dim, num_heads = VIT_SIZES[size]
  return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads,
              patch_size=int(patch))


def backbone_stride(layers: Sequence[int]) -> int:
  """Total stride of a hybrid's ResNetV2 backbone: stem 4, then x2 per stage after the first."""
  return 4 * 2 ** max(len(layers) - 1, 0)


def _same_out(size: int, stride: int) -> int:
  # Output length of a SAME-padded strided conv / pool.
  return -(-size // stride)


def grid_size(img_size: int, patch_size: int,
              backbone_layers: Optional[Sequence[int]] = None) -> int:
  """Side of the token grid for a square image.

  Args:
    img_size: input side in pixels.
    patch_size: side of the patches cut from the image (plain ViT) or from the
      backbone's feature map (hybrid).
    backbone_layers: the hybrid's ResNetV2 stage depths, None for a plain ViT.

  Returns:
    The number of tokens per side (before the class token is added).
  """
  size = img_size
  if backbone_layers is not None:
    # SAME padding rounds up at every stride-2 step: stem conv, stem pool, stages 2..n.
    for _ in range(2 + max(len(backbone_layers) - 1, 0)):
      size = _same_out(size, 2)
  return size // patch_size


def resample_pos_embed(pos_embed: jax.Array, new_grid: int | tuple[int, int],
                       num_prefix_tokens: int = 1, method: str = "bilinear",
                       antialias: bool = True) -> jax.Array:
  """Resizes the grid part of a position embedding; prefix (class) tokens are kept.

  Used to load weights trained at one resolution into a model built for another
  (fine-tuning a 224 checkpoint at 384, say).

  Agreement with timm's `resample_abs_pos_embed` (whose defaults are
  interpolation='bicubic', antialias=True; `checkpoint_filter_fn` uses the same):
  - method='bicubic', antialias=True matches it to float32 rounding, upsampling
    and downsampling (both use the Keys cubic kernel with a=-0.5, half-pixel
    centres, weights renormalised at the borders).
  - method='bilinear' (the default here) matches torch's mode='bilinear' for
    upsampling with either antialias setting, and for downsampling with the
    same `antialias` setting on both sides.
  - torch's bicubic with antialias=False (a=-0.75, clamped borders) has no exact
    counterpart here.

  Args:
    pos_embed: (1, num_prefix_tokens + H * W, D) position embedding.
    new_grid: the new grid side, or (height, width).
    num_prefix_tokens: leading tokens that are not part of the grid (1: class token).
    method: 'bilinear' or 'bicubic'.
    antialias: widen the kernel when downsampling (no effect when upsampling).

  Returns:
    The (1, num_prefix_tokens + new_h * new_w, D) embedding, in the input dtype.
  """
  if method not in ("bilinear", "bicubic"):
    raise ValueError(f"method must be 'bilinear' or 'bicubic', got {method!r}.")
  new_h, new_w = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  old = math.isqrt(grid.shape[1])
  if old * old != grid.shape[1]:
    raise ValueError(f"pos_embed has {grid.shape[1]} grid tokens after {num_prefix_tokens} "
                     "prefix token(s), which is not a square grid.")
  if (old, old) == (new_h, new_w):
    return pos_embed
  dim = grid.shape[-1]
  grid = grid.reshape(old, old, dim).astype(jnp.float32)
  grid = jax.image.resize(grid, (new_h, new_w, dim),
                          method="cubic" if method == "bicubic" else "linear",
                          antialias=antialias)
  grid = grid.reshape(1, new_h * new_w, dim).astype(pos_embed.dtype)
  return jnp.concatenate([prefix, grid], axis=1)


class MlpBlock(nn.Module):
  """Dense -> GELU (exact) -> Dense, with dropout after each Dense's activation.

  Attributes:
    hidden_dim: width of the hidden layer.
    dropout_rate: dropout after the activation and after the output Dense.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  hidden_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=nn.initializers.truncated_normal(0.02))
    width = x.shape[-1]
    x = dense(self.hidden_dim, name="fc1")(x)
    # torch's nn.GELU default is the erf form, not the tanh approximation.
    x = nn.gelu(x, approximate=False)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = dense(width, name="fc2")(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


ATTENTION_IMPLS = ("auto", "xla", "cudnn", "explicit")


def fused_attention_backend(dtype: Any, head_dim: int) -> str:
  """The `jax.nn.dot_product_attention` implementation 'auto' asks for: 'cudnn' or 'xla'.

  cuDNN's fused (flash) kernel needs an NVIDIA GPU, fp16 or bf16 inputs in
  (batch, tokens, heads, head_dim) layout, and a head dim that is a multiple of
  8 and at most 128 (256 from Hopper on; every ViT here has 64). Anything else,
  float32 included, runs XLA's attention.
  """
  if jax.default_backend() != "gpu":
    return "xla"
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return "xla"
  if head_dim % 8 or head_dim > 128:
    return "xla"
  return "cudnn"


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str = "auto"
                    ) -> jax.Array:
  """softmax(q k^T / sqrt(head_dim)) v through `jax.nn.dot_product_attention`.

  Args:
    q, k, v: (batch, tokens, heads, head_dim), one dtype.
    implementation: 'auto' (cuDNN where `fused_attention_backend` allows it,
      else XLA; a GPU whose cuDNN refuses falls back to XLA with a warning),
      'xla', or 'cudnn' (an error where cuDNN cannot run).

  Returns:
    (batch, tokens, heads, head_dim) in the input dtype. The logits are
    accumulated and the softmax taken in float32.
  """
  if implementation == "xla":
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")
  if implementation == "cudnn":
    try:
      return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    except (RuntimeError, NotImplementedError, ValueError) as e:
      raise ValueError(
          f"attention_impl='cudnn' cannot run here ({type(e).__name__}: {e}); it needs an "
          "NVIDIA GPU with cuDNN, a bfloat16/float16 model dtype and a head dim that is a "
          "multiple of 8. Use attention_impl='auto' to fall back to XLA.") from None
  backend = fused_attention_backend(q.dtype, q.shape[-1])
  if backend == "cudnn":
    try:
      return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    except (RuntimeError, NotImplementedError) as e:
      # Once per process: the check runs each time a model is traced.
      logging.log_first_n(logging.WARNING, "cuDNN fused attention is unavailable (%s); using "
                          "XLA's attention.", 1, e)
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def explicit_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                       dropout: Optional[Callable[[jax.Array], jax.Array]] = None) -> jax.Array:
  """The same attention written out, so that dropout can act on the attention weights.

  Logits are accumulated in float32 and the softmax is float32 (bf16 loses too
  much precision in the normaliser), as in `fused_attention`; the weights are
  cast back to the input dtype before they multiply v.

  Args:
    q, k, v: (batch, tokens, heads, head_dim), one dtype.
    dropout: applied to the (batch, heads, tokens, tokens) weights; None: none.

  Returns:
    (batch, tokens, heads, head_dim) in the input dtype.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  weights = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection.

  The product runs through `jax.nn.dot_product_attention` (cuDNN's fused
  kernel on NVIDIA GPUs in bf16/fp16, XLA's elsewhere), except while training
  with attention dropout, which that function does not offer: then the
  weights are formed explicitly (`explicit_attention`). Both give the same
  result; `vision_jax.explain.rollout` recomputes the weights from the
  captured qkv projection, so it needs neither.

  Attributes:
    num_heads: number of heads; the width must be divisible by it.
    attn_drop_rate: dropout on the attention weights.
    proj_drop_rate: dropout after the output projection.
    implementation: one of `ATTENTION_IMPLS`: 'auto', 'xla' or 'cudnn' (see
      `fused_attention`), or 'explicit' to always form the weights.
    dtype: compute dtype; the softmax always runs in float32.
    param_dtype: parameter dtype.
  """

  num_heads: int
  attn_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  implementation: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    batch, length, width = x.shape
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}.")
    check_attention_impl(self.implementation)
    head_dim = width // self.num_heads
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=nn.initializers.truncated_normal(0.02))
    # Output features are ordered (q|k|v, head, head_dim), as in timm's qkv Linear; the
    # slices below are already in the (batch, tokens, heads, head_dim) layout cuDNN wants.
    qkv = dense(3 * width, name="qkv")(x).reshape(batch, length, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    attn_drop = functools.partial(nn.Dropout(self.attn_drop_rate), deterministic=not train)
    if self.implementation == "explicit" or (train and self.attn_drop_rate > 0.0):
      out = explicit_attention(q, k, v, attn_drop)
    else:
      out = fused_attention(q, k, v, self.implementation)
    out = dense(width, name="proj")(out.reshape(batch, length, width))
    return nn.Dropout(self.proj_drop_rate)(out, deterministic=not train)


def check_attention_impl(implementation: str) -> None:
  """Raises ValueError unless `implementation` is one of `ATTENTION_IMPLS`."""
  if implementation not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {implementation!r}.")


class LayerScale(nn.Module):
  """Per-channel learned scale of a residual branch (CaiT, arXiv:2103.17239).

  Attributes:
    init_value: the scale every channel starts at (DINOv2: 1e-5).
    param_dtype: parameter dtype.
  """

  init_value: float = 1e-5
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],),
                       self.param_dtype)
    return x * gamma.astype(x.dtype)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

  With `layer_scale_init`, each branch is scaled per channel before the residual
  sum (x + ls1(attn(...)), x + ls2(mlp(...))), as timm's `init_values` blocks.

  Attributes:
    num_heads: attention heads.
    mlp_dim: hidden width of the MLP.
    proj_drop_rate: dropout in the MLP and after the attention projection.
    attn_drop_rate: dropout on the attention weights.
    drop_path_rate: stochastic-depth rate of both residual branches.
    attention_impl: how attention is computed (`Attention.implementation`).
    dtype: compute dtype.
    param_dtype: parameter dtype.
    layer_scale_init: initial value of the branches' layer scales; None: no layer scale.
  """

  num_heads: int
  mlp_dim: int
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  attention_impl: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  layer_scale_init: Optional[float] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = functools.partial(nn.LayerNorm, epsilon=LN_EPS, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    y = norm(name="norm1")(x)
    y = Attention(self.num_heads, self.attn_drop_rate, self.proj_drop_rate,
                  implementation=self.attention_impl, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="attn")(y, train)
    if self.layer_scale_init is not None:
      y = LayerScale(self.layer_scale_init, self.param_dtype, name="ls1")(y)
    x = x + DropPath(self.drop_path_rate)(y, deterministic=not train)
    y = norm(name="norm2")(x)
    y = MlpBlock(self.mlp_dim, self.proj_drop_rate, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="mlp")(y, train)
    if self.layer_scale_init is not None:
      y = LayerScale(self.layer_scale_init, self.param_dtype, name="ls2")(y)
    return x + DropPath(self.drop_path_rate)(y, deterministic=not train)


class PatchEmbed(nn.Module):
  """Image (or a ResNetV2 feature map, for hybrids) -> NHWC grid of token embeddings.

  Attributes:
    width: embedding width.
    patch_size: side of the non-overlapping patches.
    backbone_layers: ResNetV2 stage depths of a hybrid (() = its stem only);
      None for a plain ViT that cuts patches from the image.
    remat: rematerialisation of the backbone's blocks (`layers.REMAT_CHOICES`).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  width: int
  patch_size: int
  backbone_layers: Optional[Sequence[int]] = None
  remat: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.backbone_layers is not None:
      # The hybrids' backbone: non-preact ResNetV2 with GroupNorm and weight-standardised
      # SAME convs, without pooling or classifier (NHWC feature map out).
      x = ResNetV2(layers=tuple(self.backbone_layers), num_classes=0, preact=False,
                   stem_type="same", global_pool=False, remat=self.remat, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="backbone")(x, train=train)
    p = self.patch_size
    return nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                   param_dtype=self.param_dtype, name="proj")(x)


class ViTEncoderBase(nn.Module):
  """The encoder fields and layers a ViT shares with MAE's encoder (`train.mae.MAEEncoder`).

  Subclasses call the helpers from their compact `__call__`; the helpers create the
  submodules and parameters under the names timm's checkpoints use (`patch_embed`,
  `cls_token`, `pos_embed`, `blocks_{i}`), so every subclass has the same tree for them.

  Attributes:
    width: token width (hidden size D).
    depth: number of transformer blocks.
    mlp_dim: hidden width of each block's MLP.
    num_heads: attention heads.
    patch_size: patch side (on the image, or on the backbone's feature map for hybrids).
    img_size: input side the position embeddings are built for.
    pos_drop_rate: dropout after adding the position embeddings.
    proj_drop_rate: dropout inside the MLPs and after the attention projections.
    attn_drop_rate: dropout on the attention weights.
    drop_path_rate: stochastic depth, rising linearly from 0 to this over the blocks.
    attention_impl: 'auto' (cuDNN's fused kernel on NVIDIA GPUs in bf16/fp16, XLA's
      attention elsewhere), 'xla', 'cudnn' or 'explicit' (see `Attention`).
    remat: 'none', 'block' or 'full': rematerialise every transformer block (and the
      hybrid backbone's blocks) in the backward pass; see `layers.REMAT_CHOICES`.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  width: int = 768
  depth: int = 12
  mlp_dim: int = 3072
  num_heads: int = 12
  patch_size: int = 16
  img_size: int = 224
  pos_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  attention_impl: str = "auto"
  remat: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _patch_tokens(self, x: jax.Array, train: bool,
                    backbone_layers: Optional[Sequence[int]] = None
                    ) -> tuple[jax.Array, int, int]:
    """Images -> ((N, grid_h * grid_w, width) patch tokens, grid_h, grid_w)."""
    x = PatchEmbed(self.width, self.patch_size, backbone_layers, remat=self.remat,
                   dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embed")(
                       jnp.asarray(x, self.dtype), train)
    batch, grid_h, grid_w, _ = x.shape
    return x.reshape(batch, grid_h * grid_w, self.width), grid_h, grid_w

  def _cls_token(self) -> jax.Array:
    return self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.width),
                      self.param_dtype)

  def _pos_embed(self, length: int) -> jax.Array:
    """The learned (1, length, width) position embedding, in `param_dtype`."""
    return self.param("pos_embed", nn.initializers.truncated_normal(0.02),
                      (1, length, self.width), self.param_dtype)

  def _encode(self, x: jax.Array, train: bool,
              layer_scale_init: Optional[float] = None) -> jax.Array:
    """Position dropout, then the `depth` blocks (stochastic depth rising linearly)."""
    block_cls = remat_block(Block, self.remat)
    x = nn.Dropout(self.pos_drop_rate)(x, deterministic=not train)
    for i in range(self.depth):
      rate = self.drop_path_rate * i / (self.depth - 1) if self.depth > 1 else 0.0
      x = block_cls(self.num_heads, self.mlp_dim, self.proj_drop_rate, self.attn_drop_rate, rate,
                    attention_impl=self.attention_impl, dtype=self.dtype,
                    param_dtype=self.param_dtype, layer_scale_init=layer_scale_init,
                    name=f"blocks_{i}")(x, train)
    return x

  def _layer_norm(self, name: str) -> nn.Module:
    return nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, param_dtype=self.param_dtype,
                        name=name)


POOLS = ("token", "avg")


class VisionTransformer(ViTEncoderBase):
  """ViT with a class token, learned position embeddings and class-token readout.

  The encoder's fields (`width` ... `param_dtype`) are `ViTEncoderBase`'s; inputs must
  be `img_size` square unless `dynamic_img_size`.

  Attributes:
    backbone_layers: ResNetV2 stage depths for a hybrid (() = stem only), None for a
      plain ViT.
    num_classes: classifier size; 0 returns the pooled features.
    drop_rate: dropout before the classifier.
    layer_scale_init: initial value of every block's layer scales (timm's
      `init_values`; DINOv2 uses 1e-5); None: no layer scale.
    reg_tokens: register tokens placed after the class token (DINOv2 "reg4": 4);
      they take part in attention and are dropped by the pooling.
    no_embed_class: the position embedding covers the patch grid only and is added
      before the class and register tokens are prepended (DeiT III, DINOv2 reg);
      False: it covers the class (and register) tokens too (original ViT).
    global_pool: 'token' (the class token) or 'avg' (mean of the grid tokens).
    fc_norm: put the final LayerNorm after the pooling (named 'fc_norm', as timm)
      instead of before it; None: only for 'avg' pooling (timm's rule).
    dynamic_img_size: accept any input size whose sides are multiples of the token
      stride: the position embedding is resampled (bicubic, antialiased, as timm's
      `dynamic_img_size`) from the `img_size` grid to the input's grid.
  """

  backbone_layers: Optional[Sequence[int]] = None
  num_classes: int = 1000
  drop_rate: float = 0.0
  layer_scale_init: Optional[float] = None
  reg_tokens: int = 0
  no_embed_class: bool = False
  global_pool: str = "token"
  fc_norm: Optional[bool] = None
  dynamic_img_size: bool = False

  @property
  def grid_size(self) -> int:
    """Tokens per side for `img_size`."""
    return grid_size(self.img_size, self.patch_size, self.backbone_layers)

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens before the patch grid: the class token and the register tokens."""
    return 1 + self.reg_tokens

  def _check_options(self) -> None:
    if self.global_pool not in POOLS:
      raise ValueError(f"global_pool must be one of {POOLS}, got {self.global_pool!r}.")
    if self.reg_tokens < 0:
      raise ValueError(f"reg_tokens must be >= 0, got {self.reg_tokens}.")
    check_attention_impl(self.attention_impl)
    check_remat(self.remat, "VisionTransformer")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, tokens: bool = False) -> jax.Array:
    """Classifies NHWC images.

    Args:
      x: (N, img_size, img_size, C) images (any multiple of the token stride with
        `dynamic_img_size`).
      train: enables dropout and stochastic depth (needs the 'dropout' rng).
      tokens: return every token after the last block and the final norm instead
        of the pooled output: (N, prefix + grid tokens, width), timm's
        `forward_features` (with `fc_norm` the norm comes after the pool, so
        these tokens are not normalised, as in timm).

    Returns:
      float32 logits (N, num_classes), or the (N, width) pooled features when
      num_classes == 0, or the tokens (see `tokens`).
    """
    self._check_options()
    if not self.dynamic_img_size and (x.shape[1] != self.img_size or
                                      x.shape[2] != self.img_size):
      raise ValueError(
          f"VisionTransformer was built for {self.img_size}x{self.img_size} inputs, got "
          f"{x.shape[1]}x{x.shape[2]}; build it with img_size={x.shape[1]} (and resize the "
          "position embeddings with vit.resample_pos_embed to reuse weights) or with "
          "dynamic_img_size=True.")
    x, grid_h, grid_w = self._patch_tokens(x, train, self.backbone_layers)
    batch = x.shape[0]

    prefix = [self._cls_token()]
    if self.reg_tokens:
      prefix.append(self.param("reg_token", nn.initializers.normal(1e-6),
                               (1, self.reg_tokens, self.width), self.param_dtype))
    prefix = jnp.concatenate([jnp.broadcast_to(p.astype(self.dtype), (batch,) + p.shape[1:])
                              for p in prefix], axis=1)
    # Original ViT / timm: the embedding covers the prefix tokens too; DeiT III / DINOv2
    # reg: the grid only.
    embedded_prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    pos_embed = self._pos_embed(self.grid_size ** 2 + embedded_prefix)
    if self.dynamic_img_size and (grid_h, grid_w) != (self.grid_size, self.grid_size):
      # timm's dynamic_img_size resamples the same way: bicubic with antialiasing.
      pos_embed = resample_pos_embed(pos_embed, (grid_h, grid_w), embedded_prefix,
                                     method="bicubic")
    if pos_embed.shape[1] != grid_h * grid_w + embedded_prefix:
      raise ValueError(f"{grid_h * grid_w + embedded_prefix} tokens do not match the "
                       f"{pos_embed.shape[1]} position embeddings.")
    if self.no_embed_class:
      x = jnp.concatenate([prefix, x + pos_embed.astype(self.dtype)], axis=1)
    else:
      x = jnp.concatenate([prefix, x], axis=1) + pos_embed.astype(self.dtype)
    x = self._encode(x, train, self.layer_scale_init)
    use_fc_norm = self.global_pool == "avg" if self.fc_norm is None else self.fc_norm
    if not use_fc_norm:
      x = self._layer_norm("norm")(x)
    if tokens:
      return x
    if self.global_pool == "token":
      x = x[:, 0]  # the class token is the image representation
    else:
      x = jnp.mean(x[:, self.num_prefix_tokens:], axis=1)  # registers and class token left out
    if use_fc_norm:
      x = self._layer_norm("fc_norm")(x)
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    return classifier_head(x, self.num_classes, self.dtype)


# Plain ViTs: registry name without the resolution -> (size/patch spec, timm's default
# pretrained tag at 224, at 384). Each is registered at both resolutions; input size,
# crop and mean/std follow that tag's pretrained config (mean = std = 0.5 for all).
_PLAIN_VARIANTS: dict[str, tuple[str, str, str]] = {
    "vit_tiny_patch16": ("Ti/16", "augreg_in21k_ft_in1k", "augreg_in21k_ft_in1k"),
    "vit_small_patch16": ("S/16", "augreg_in21k_ft_in1k", "augreg_in21k_ft_in1k"),
    "vit_small_patch32": ("S/32", "augreg_in21k_ft_in1k", "augreg_in21k_ft_in1k"),
    "vit_base_patch16": ("B/16", "augreg2_in21k_ft_in1k", "augreg_in21k_ft_in1k"),
    "vit_base_patch32": ("B/32", "augreg_in21k_ft_in1k", "augreg_in21k_ft_in1k"),
    "vit_large_patch16": ("L/16", "augreg_in21k_ft_in1k", "augreg_in21k_ft_in1k"),
    "vit_large_patch32": ("L/32", "orig_in21k", "orig_in21k_ft_in1k"),
}

# Hybrid stem -> {resolution: timm tag} for the resolutions timm registers.
_HYBRID_VARIANTS: dict[str, dict[int, str]] = {
    "tiny_r_s16_p8": {224: "augreg_in21k_ft_in1k", 384: "augreg_in21k_ft_in1k"},
    "small_r26_s32": {224: "augreg_in21k_ft_in1k", 384: "augreg_in21k_ft_in1k"},
    "base_r26_s32": {224: "untrained"},
    "base_r50_s16": {224: "orig_in21k", 384: "orig_in21k_ft_in1k"},
    "large_r50_s32": {224: "augreg_in21k_ft_in1k", 384: "augreg_in21k_ft_in1k"},
}

# DINOv2 (Oquab et al., arXiv:2304.07193): patch 14 at 518 px, layer scale 1e-5; the
# "reg4" models (Darcet et al., arXiv:2309.16588) add 4 register tokens and a position
# embedding over the grid only. Registry name -> size; each is timm's name too.
_DINOV2_VARIANTS: dict[str, str] = {
    "vit_small_patch14_dinov2": "S",
    "vit_base_patch14_dinov2": "B",
    "vit_large_patch14_dinov2": "L",
    "vit_small_patch14_reg4_dinov2": "S",
    "vit_base_patch14_reg4_dinov2": "B",
    "vit_large_patch14_reg4_dinov2": "L",
}
DINOV2_IMG_SIZE = 518
DINOV2_LAYER_SCALE = 1e-5
_DINOV2_PAPER = "DINOv2: Learning Robust Visual Features without Supervision (arXiv:2304.07193)"
_REG_PAPER = "Vision Transformers Need Registers (arXiv:2309.16588)"

_PAPER = ("An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale "
          "(arXiv:2010.11929)")


def _source(timm_name: str, tag: str) -> str:
  if tag == "untrained":
    return "none: timm has no pretrained weights for this architecture"
  origin = ("AugReg, 'How to train your ViT?' (arXiv:2106.10270)" if tag.startswith("augreg")
            else "original ViT release (google-research/vision_transformer)")
  return f"timm/{timm_name}.{tag} on the Hugging Face Hub; {origin}"


def _register_all() -> None:
  for res in (224, 384):
    # timm's pretrained configs: crop 0.9 at 224, full image at 384.
    crop_pct = 0.9 if res == 224 else 1.0
    for stem, (spec, tag224, tag384) in _PLAIN_VARIANTS.items():
      name = f"{stem}_{res}"
      tag = tag224 if res == 224 else tag384
      register_model(
          functools.partial(VisionTransformer, img_size=res, **vit_config(spec)),
          ModelInfo(name=name, family="vit", input_size=res, crop_pct=crop_pct,
                    mean=INCEPTION_MEAN, std=INCEPTION_STD, classifier="head", paper=_PAPER,
                    timm_name=name, license="apache-2.0", source=_source(name, tag)))
    for stem, tags in _HYBRID_VARIANTS.items():
      if res not in tags:
        continue
      name = f"vit_{stem}_{res}"
      size, layers, patch = HYBRIDS[stem]
      register_model(
          functools.partial(VisionTransformer, img_size=res, backbone_layers=layers,
                            **vit_config(f"{size}/{patch}")),
          ModelInfo(name=name, family="vit", input_size=res, crop_pct=crop_pct,
                    mean=INCEPTION_MEAN, std=INCEPTION_STD, classifier="head", paper=_PAPER,
                    timm_name=name, license="apache-2.0", source=_source(name, tags[res])))


def _register_dinov2() -> None:
  for name, size in _DINOV2_VARIANTS.items():
    registers = 4 if "_reg4_" in name else 0
    register_model(
        functools.partial(VisionTransformer, img_size=DINOV2_IMG_SIZE,
                          layer_scale_init=DINOV2_LAYER_SCALE, reg_tokens=registers,
                          no_embed_class=bool(registers), **vit_config(f"{size}/14")),
        # timm's pretrained config: the whole 518 px image, ImageNet mean/std; the
        # checkpoints have no classifier (feature extractors).
        ModelInfo(name=name, family="vit", input_size=DINOV2_IMG_SIZE, crop_pct=1.0,
                  mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="head",
                  paper=_REG_PAPER if registers else _DINOV2_PAPER, timm_name=name,
                  license="apache-2.0",
                  source=f"timm/{name}.lvd142m on the Hugging Face Hub (features only, "
                         "num_classes=0); facebookresearch/dinov2"))


_register_all()
_register_dinov2()
