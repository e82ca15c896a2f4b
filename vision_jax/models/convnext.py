"""ConvNeXt (Liu et al., "A ConvNet for the 2020s", arXiv:2201.03545) and ConvNeXt V2
(Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders",
arXiv:2301.00808).

A 4x4 stride-4 patchify stem with LayerNorm, four stages separated by a
LayerNorm + 2x2 stride-2 convolution, and blocks of

  depthwise 7x7 conv -> LayerNorm -> Dense 4C -> GELU -> Dense C -> layer scale -> drop-path

added to their input; then global average pooling, LayerNorm and the classifier.
LayerNorm epsilon is 1e-6 and GELU is the exact (erf) one, as in the reference
code and timm. Variants are data: `VARIANTS` holds each one's blocks per stage
and widths (atto is timm's, the others the paper's Table/section 2.6).

ConvNeXt V2 is the same network with one change in the block: a Global Response
Normalisation (GRN) after the GELU, inside the MLP, and no layer scale (the paper
finds GRN makes it redundant, section 3). `V2_VARIANTS` holds its sizes, atto to
huge, as timm registers them (atto/femto/pico/nano from the paper's Table 6).

Parameter names mirror timm's `convnext_*` module tree, with '_' for '.':
`stem_conv`/`stem_norm` (stem.0/1), `stages_{i}_downsample_norm`/`_conv`
(stages.i.downsample.0/1), `stages_{i}_blocks_{j}/{conv_dw,norm,mlp_fc1,mlp_fc2,gamma}`,
`head_norm` (head.norm) and the classifier `head` (head.fc); V2's GRN is
`stages_{i}_blocks_{j}/mlp_grn` (mlp.grn). timm's atto (V1 and V2) and V2's femto,
pico and nano use 1x1 convolutions for the MLP (`conv_mlp`); they are the same Dense
layers here.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models.depthwise import DepthwiseConv
from vision_jax.models.layers import (DropPath, check_remat, classifier_head, global_avg_pool,
                                      remat_block)
from vision_jax.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, register_model
from vision_jax.models.resnet import drop_path_rates

# name: (blocks per stage, width of each stage).
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnext_atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}
# ConvNeXt V2 (GRN, no layer scale): name: (blocks per stage, width of each stage).
V2_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnextv2_atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "convnextv2_femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "convnextv2_pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "convnextv2_nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "convnextv2_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnextv2_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnextv2_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnextv2_huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}

# Truncated normal (std 0.02) for convs and Dense layers, as the reference code.
_init = nn.initializers.truncated_normal(0.02)


def _layer_norm(name: str, dtype: Any, param_dtype: Any) -> nn.LayerNorm:
  # Two-pass variance (not E[x^2] - E[x]^2), as PyTorch computes it.
  return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=dtype,
                      param_dtype=param_dtype, name=name)


class GlobalResponseNorm(nn.Module):
  """ConvNeXt V2's GRN: x + bias + scale * x * N(x), N = spatial L2 norm over its channel mean.

  Each channel's L2 norm over the whole feature map (height and width), divided by the
  mean of those norms over channels, says how strongly that channel responds relative
  to the others; scaling by it makes channels compete, which the V2 paper shows
  prevents the feature collapse it sees in MAE-pretrained ConvNeXts. `scale` and `bias`
  start at zero, so a fresh GRN is the identity. The statistics are taken in float32:
  a sum of squares over a whole bf16 map loses the small channels.

  Attributes:
    epsilon: added to the channel mean of the norms (1e-6, as the reference code).
    dtype: compute dtype of the output.
    param_dtype: parameter dtype.
  """

  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    scale = self.param("scale", nn.initializers.zeros, (width,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (width,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    norms = jnp.sqrt(jnp.sum(jnp.square(x32), axis=(1, 2), keepdims=True))
    response = norms / (jnp.mean(norms, axis=-1, keepdims=True) + self.epsilon)
    y = x32 + bias.astype(jnp.float32) + scale.astype(jnp.float32) * (x32 * response)
    return y.astype(self.dtype)


class ConvNeXtBlock(nn.Module):
  """Depthwise 7x7 -> LayerNorm -> inverted-bottleneck MLP -> layer scale, residual.

  Attributes:
    drop_path_rate: stochastic-depth rate of the residual branch.
    layer_scale_init: initial value of the per-channel scale `gamma` (None: no scale).
    grn: ConvNeXt V2's Global Response Normalisation between the GELU and the second
      Dense layer.
    mlp_ratio: hidden width of the MLP over the block width.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  drop_path_rate: float = 0.0
  layer_scale_init: float | None = 1e-6
  grn: bool = False
  mlp_ratio: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    width = x.shape[-1]
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=_init)
    y = DepthwiseConv(width, (7, 7), padding=((3, 3), (3, 3)), dtype=self.dtype,
                      param_dtype=self.param_dtype, kernel_init=_init, name="conv_dw")(x)
    y = _layer_norm("norm", self.dtype, self.param_dtype)(y)
    y = dense(self.mlp_ratio * width, name="mlp_fc1")(y)
    y = nn.gelu(y, approximate=False)
    if self.grn:
      y = GlobalResponseNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="mlp_grn")(y)
    y = dense(width, name="mlp_fc2")(y)
    if self.layer_scale_init is not None:
      gamma = self.param("gamma", nn.initializers.constant(self.layer_scale_init), (width,),
                         self.param_dtype)
      y = y * gamma.astype(self.dtype)
    y = DropPath(self.drop_path_rate)(y, deterministic=not train)
    return x + y


class ConvNeXt(nn.Module):
  """ConvNeXt (V1 or V2): patchify stem, four stages of blocks, pooled LayerNorm head.

  Attributes:
    depths: number of blocks in each stage.
    widths: channels of each stage.
    num_classes: classifier size; 0 returns the pooled (and normalised) features.
    dtype: compute dtype.
    param_dtype: parameter dtype (the classifier's is always float32).
    drop_rate: dropout on the pooled features, before the classifier.
    drop_path_rate: stochastic depth of the last block; block i of n gets
      drop_path_rate * i / (n - 1), as in the reference code and timm.
    layer_scale_init: initial layer-scale value (1e-6 in the paper; None: none, as V2).
    grn: Global Response Normalisation in every block's MLP (ConvNeXt V2).
    remat: 'none', 'block' or 'full': rematerialise every ConvNeXt block in the
      backward pass (see `layers.REMAT_CHOICES`); parameters are unchanged.
  """

  depths: Sequence[int]
  widths: Sequence[int]
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  layer_scale_init: float | None = 1e-6
  grn: bool = False
  remat: str = "none"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits (float32) of NHWC images, or pooled features when num_classes == 0.

    Args:
      x: images, (batch, height, width, 3); sides divisible by 32.
      train: enable dropout and stochastic depth (needs the 'dropout' rng when their
        rates are > 0). ConvNeXt has no batch statistics.

    Returns:
      (batch, num_classes) float32 logits, or (batch, widths[-1]) features.
    """
    if len(self.depths) != len(self.widths):
      raise ValueError(f"ConvNeXt: {len(self.depths)} stages but {len(self.widths)} widths.")
    check_remat(self.remat, "ConvNeXt")
    block_cls = remat_block(ConvNeXtBlock, self.remat)
    conv = functools.partial(nn.Conv, dtype=self.dtype, param_dtype=self.param_dtype,
                             kernel_init=_init, padding="VALID")
    x = jnp.asarray(x, self.dtype)
    x = conv(self.widths[0], (4, 4), strides=(4, 4), name="stem_conv")(x)
    x = _layer_norm("stem_norm", self.dtype, self.param_dtype)(x)
    rates = iter(drop_path_rates(self.depths, self.drop_path_rate))
    for stage, (depth, width) in enumerate(zip(self.depths, self.widths)):
      if stage > 0:
        x = _layer_norm(f"stages_{stage}_downsample_norm", self.dtype, self.param_dtype)(x)
        x = conv(width, (2, 2), strides=(2, 2), name=f"stages_{stage}_downsample_conv")(x)
      for b in range(depth):
        x = block_cls(drop_path_rate=next(rates), layer_scale_init=self.layer_scale_init,
                      grn=self.grn, dtype=self.dtype, param_dtype=self.param_dtype,
                      name=f"stages_{stage}_blocks_{b}")(x, train)
    x = global_avg_pool(x)
    x = _layer_norm("head_norm", self.dtype, self.param_dtype)(x)
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    return classifier_head(x, self.num_classes, self.dtype)


_PAPER = "A ConvNet for the 2020s (Liu et al., 2022), arXiv:2201.03545"
# Reference weights: the paper's ImageNet-1k training (fb_in1k); atto exists only in timm.
_TAGS = {"convnext_atto": "d2_in1k"}
_PAPER_V2 = ("ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders "
             "(Woo et al., 2023), arXiv:2301.00808")


def _register() -> None:
  for name, (depths, widths) in VARIANTS.items():
    tag = _TAGS.get(name, "fb_in1k")
    paper = _PAPER if name != "convnext_atto" else _PAPER + "; atto widths/depths from timm"
    register_model(
        functools.partial(ConvNeXt, depths=depths, widths=widths),
        ModelInfo(name=name, family="convnext", input_size=224, crop_pct=0.875,
                  interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  classifier="head", paper=paper, timm_name=name, license="apache-2.0",
                  source=f"timm {name}.{tag} (https://huggingface.co/timm/{name}.{tag})"))
  for name, (depths, widths) in V2_VARIANTS.items():
    # The reference weights: FCMAE pretraining then ImageNet-1k fine-tuning, 224 px.
    tag = "fcmae_ft_in1k"
    register_model(
        functools.partial(ConvNeXt, depths=depths, widths=widths, grn=True,
                          layer_scale_init=None),
        ModelInfo(name=name, family="convnext", input_size=224, crop_pct=0.875,
                  interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  classifier="head", paper=_PAPER_V2, timm_name=name, license="cc-by-nc-4.0",
                  source=f"timm {name}.{tag} (https://huggingface.co/timm/{name}.{tag})"))


_register()
