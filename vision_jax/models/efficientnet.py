"""EfficientNet B0-B7 (Tan & Le, arXiv:1905.11946).

Every variant is the B0 network of the paper's Table 1 scaled by a compound
coefficient: channels are multiplied by `width_mult` (rounded to a multiple of
8, never more than 10% down), the number of blocks of each stage by
`depth_mult` (rounded up). The blocks are MBConv (inverted residuals with a
depthwise convolution) with squeeze-and-excitation and swish, as in the
TensorFlow TPU reference.

By default the layout matches timm's `tf_efficientnet_b0..b7` (ports of the
TensorFlow weights): TensorFlow 'SAME' padding, which pads asymmetrically
(more at the bottom/right) for strided convolutions, and BatchNorm epsilon
1e-3. `padding='symmetric', bn_epsilon=1e-5` gives timm's PyTorch-trained
`efficientnet_b0..b7` (padding k // 2 on every side). Parameter names mirror
timm's module tree (`conv_stem`, `bn1`, `blocks_{stage}_{block}/...`,
`conv_head`, `bn2`) so that `vision_jax.weights.from_timm` maps them one to one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models.depthwise import DepthwiseConv
from vision_jax.models.layers import (DropPath, PooledConvNet, check_remat, remat_block,
                                      setting_field)
from vision_jax.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, register_model

ModuleDef = Callable[..., nn.Module]

PADDINGS = ("same", "symmetric")


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One row of the B0 table: a stage of identical MBConv blocks.

  Attributes:
    repeats: number of blocks before depth scaling.
    kernel: side of the depthwise kernel.
    stride: stride of the stage's first block (the others have stride 1).
    expand: expansion ratio of the inverted residual (1: no expansion conv).
    features: output channels before width scaling.
    se_ratio: squeeze-excite width as a fraction of the block's input channels.
  """

  repeats: int
  kernel: int
  stride: int
  expand: int
  features: int
  se_ratio: float = 0.25


# EfficientNet-B0, Table 1 of the paper (after the 3x3 stem of 32 channels).
B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(repeats=1, kernel=3, stride=1, expand=1, features=16),
    StageSpec(repeats=2, kernel=3, stride=2, expand=6, features=24),
    StageSpec(repeats=2, kernel=5, stride=2, expand=6, features=40),
    StageSpec(repeats=3, kernel=3, stride=2, expand=6, features=80),
    StageSpec(repeats=3, kernel=5, stride=1, expand=6, features=112),
    StageSpec(repeats=4, kernel=5, stride=2, expand=6, features=192),
    StageSpec(repeats=1, kernel=3, stride=1, expand=6, features=320),
)

# Compound scaling, as in the TPU reference:
# variant -> (width_mult, depth_mult, resolution, dropout before the head).
COMPOUND_COEFFICIENTS: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


def round_channels(features: int, width_mult: float, divisor: int = 8) -> int:
  """Scales a channel count and rounds it to the nearest multiple of `divisor`.

  Rounding down by more than 10% is not allowed (one more `divisor` is added
  instead), as in the reference.
  """
  scaled = features * width_mult
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * scaled:
    rounded += divisor
  return rounded


def round_repeats(repeats: int, depth_mult: float) -> int:
  """Scales the number of blocks of a stage, rounding up."""
  return int(math.ceil(repeats * depth_mult))


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """The fully scaled settings of one MBConv block."""

  stage: int
  index: int
  in_features: int
  out_features: int
  kernel: int
  stride: int
  expand: int
  se_features: int
  drop_path_rate: float


def block_configs(width_mult: float, depth_mult: float, drop_path_rate: float,
                  stages: Sequence[StageSpec] = B0_STAGES,
                  stem_width: int = 32) -> list[BlockConfig]:
  """Every block of a scaled network, in order.

  Args:
    width_mult: channel multiplier.
    depth_mult: block-count multiplier.
    drop_path_rate: drop-connect rate; block i of n gets drop_path_rate * i / n,
      as in the reference (the last block stays below the nominal rate).
    stages: the unscaled stage table.
    stem_width: unscaled width of the stem convolution.

  Returns:
    One `BlockConfig` per block.
  """
  repeats = [round_repeats(s.repeats, depth_mult) for s in stages]
  total = sum(repeats)
  configs = []
  in_features = round_channels(stem_width, width_mult)
  for stage, (spec, n) in enumerate(zip(stages, repeats)):
    out_features = round_channels(spec.features, width_mult)
    for b in range(n):
      configs.append(BlockConfig(
          stage=stage,
          index=b,
          in_features=in_features,
          out_features=out_features,
          kernel=spec.kernel,
          stride=spec.stride if b == 0 else 1,
          expand=spec.expand,
          # The squeeze width comes from the block's input, not its expanded, channels.
          se_features=max(1, int(in_features * spec.se_ratio)),
          drop_path_rate=drop_path_rate * len(configs) / total,
      ))
      in_features = out_features
  return configs


def _conv_padding(padding: str, kernel: int) -> Any:
  """flax padding of a convolution for the chosen style."""
  if padding == "same":
    # flax/lax 'SAME' computes pads exactly as TensorFlow: the odd pixel goes at the end.
    return "SAME"
  pad = kernel // 2  # PyTorch-style symmetric padding (odd kernels only here)
  return ((pad, pad), (pad, pad))


# TF reference init: N(0, 2 / fan_out) with fan_out = k * k * out_channels / groups.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# For a depthwise kernel (k, k, 1, C) that fan-out is k * k, which flax calls its fan-in.
_depthwise_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class SqueezeExcite(nn.Module):
  """Channel gate: global mean, 1x1 reduce + swish, 1x1 expand + sigmoid.

  Attributes:
    se_features: width of the squeeze.
    conv: convolution constructor (dtype already bound).
  """

  se_features: int
  conv: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Accumulate in float32 at least (bf16 sums lose precision), then back to compute dtype.
    acc = jnp.promote_types(x.dtype, jnp.float32)
    s = jnp.mean(x, axis=(1, 2), keepdims=True, dtype=acc).astype(x.dtype)
    s = self.conv(self.se_features, (1, 1), use_bias=True, name="conv_reduce")(s)
    s = nn.swish(s)
    s = self.conv(x.shape[-1], (1, 1), use_bias=True, name="conv_expand")(s)
    return x * nn.sigmoid(s)


class BlockBase(nn.Module):
  """The fields every EfficientNet(V2) block takes, and the residual they all end with.

  Attributes:
    config: the block's scaled settings.
    padding: 'same' (TensorFlow) or 'symmetric' (PyTorch k // 2).
    conv: convolution constructor (dtype, no bias already bound).
    norm: BatchNorm constructor (train mode, momentum, epsilon already bound).
  """

  config: BlockConfig
  padding: str
  conv: ModuleDef
  norm: ModuleDef

  def residual(self, x: jax.Array, y: jax.Array, train: bool) -> jax.Array:
    """The block's output `y`, plus its input (after drop-connect) when the shape is kept."""
    cfg = self.config
    if cfg.stride == 1 and cfg.in_features == cfg.out_features:
      y = DropPath(cfg.drop_path_rate)(y, deterministic=not train) + x
    return y


class MBConv(BlockBase):
  """Inverted residual with squeeze-excite; without expansion when `expand == 1`.

  With expansion: 1x1 expand (`conv_pw`, `bn1`), depthwise (`conv_dw`, `bn2`),
  SE, 1x1 linear projection (`conv_pwl`, `bn3`). Without (timm's
  DepthwiseSeparableConv): depthwise (`conv_dw`, `bn1`), SE, 1x1 projection
  (`conv_pw`, `bn2`). The residual (with drop-connect) exists when the block
  keeps the shape.

  Attributes:
    depthwise: depthwise convolution constructor (dtype, no bias, init already bound);
      `DepthwiseConv` has nn.Conv's parameters and picks the fast path per backend.
    config, padding, conv, norm: see `BlockBase`.
  """

  depthwise: ModuleDef = DepthwiseConv

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cfg = self.config
    names = (("conv_dw", "bn1", "conv_pw", "bn2") if cfg.expand == 1
             else ("conv_dw", "bn2", "conv_pwl", "bn3"))
    dw_name, dw_bn, proj_name, proj_bn = names
    y = x
    if cfg.expand != 1:
      # A no-op rounding while channels are multiples of 8, kept as in the reference.
      mid = round_channels(cfg.in_features * cfg.expand, 1.0)
      y = self.conv(mid, (1, 1), padding="VALID", name="conv_pw")(y)
      y = nn.swish(self.norm(name="bn1")(y))
    mid = y.shape[-1]
    y = self.depthwise(mid, (cfg.kernel, cfg.kernel), strides=cfg.stride,
                       padding=_conv_padding(self.padding, cfg.kernel), name=dw_name)(y)
    y = nn.swish(self.norm(name=dw_bn)(y))
    y = SqueezeExcite(cfg.se_features, conv=self.conv, name="se")(y)
    y = self.conv(cfg.out_features, (1, 1), padding="VALID", name=proj_name)(y)
    y = self.norm(name=proj_bn)(y)  # linear bottleneck: no activation
    return self.residual(x, y, train)


class EfficientNetBase(PooledConvNet):
  """The part of EfficientNet and EfficientNetV2 around their blocks, with their defaults.

  A 3x3 stride-2 stem (`conv_stem`, `bn1`, swish), the blocks, a 1x1 head
  convolution (`conv_head`, `bn2`, swish), then `PooledConvNet`'s pooling and
  classifier. A subclass sets `depthwise_init` and defines `stem_features`,
  `head_features` and `blocks`.

  Attributes:
    padding: 'same' for TensorFlow SAME padding (timm's tf_efficientnet*),
      'symmetric' for PyTorch-style k // 2 padding (timm's efficientnet*).
    bn_momentum: running-statistics decay in flax convention (the reference's 0.99).
    bn_epsilon: BatchNorm epsilon (1e-3 in TensorFlow, 1e-5 in timm's PyTorch nets).
    drop_rate: dropout on the pooled features, before the classifier.
    drop_path_rate: drop-connect (stochastic depth) of the residual branches;
      block i of n gets drop_path_rate * i / n, as in the reference.
    num_classes, dtype, param_dtype, remat: see `layers.PooledConvNet`.
  """

  # The init of the MBConv depthwise kernels; a subclass sets it as a staticmethod, so that
  # neither Python nor flax binds it as a method of the module.
  depthwise_init: ClassVar[Callable[..., jax.Array]]

  # The TensorFlow reference's values, in place of PooledConvNet's PyTorch-style defaults.
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  drop_rate: float = 0.2
  drop_path_rate: float = 0.2
  padding: str = setting_field("same")

  def forward_features(self, x: jax.Array, train: bool) -> jax.Array:
    owner = type(self).__name__
    if self.padding not in PADDINGS:
      raise ValueError(f"{owner}: padding must be one of {PADDINGS}, got {self.padding!r}.")
    check_remat(self.remat, owner)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=_conv_init)
    norm = self.batch_norm_layer(train)
    depthwise = functools.partial(DepthwiseConv, use_bias=False, dtype=self.dtype,
                                  param_dtype=self.param_dtype, kernel_init=self.depthwise_init)

    x = jnp.asarray(x, self.dtype)
    x = conv(self.stem_features(), (3, 3), strides=2, padding=_conv_padding(self.padding, 3),
             name="conv_stem")(x)
    x = nn.swish(norm(name="bn1")(x))
    x = self.blocks(x, train, conv, norm, depthwise)
    x = conv(self.head_features(), (1, 1), padding="VALID", name="conv_head")(x)
    return nn.swish(norm(name="bn2")(x))

  def stem_features(self) -> int:
    """Output channels of the stem convolution."""
    raise NotImplementedError

  def head_features(self) -> int:
    """Output channels of the head convolution: the pooled features."""
    raise NotImplementedError

  def blocks(self, x: jax.Array, train: bool, conv: ModuleDef, norm: ModuleDef,
             depthwise: ModuleDef) -> jax.Array:
    """Runs the blocks between stem and head (named `blocks_{stage}_{block}`)."""
    raise NotImplementedError


class EfficientNet(EfficientNetBase):
  """EfficientNet: scaled B0 of MBConv blocks with squeeze-excite and swish.

  Attributes:
    width_mult: channel multiplier of the compound scaling.
    depth_mult: block-count multiplier of the compound scaling.
    stages: the unscaled stage table (B0's by default).
    stem_width: unscaled channels of the 3x3 stride-2 stem convolution.
    head_width: unscaled channels of the final 1x1 convolution.
    padding, bn_momentum, bn_epsilon, drop_rate, drop_path_rate, num_classes, dtype,
      param_dtype, remat: see `EfficientNetBase` (remat applies to every MBConv block).
  """

  # TF reference init of a depthwise kernel (see `_depthwise_init`).
  depthwise_init = staticmethod(_depthwise_init)

  width_mult: float = 1.0
  depth_mult: float = 1.0
  stages: Sequence[StageSpec] = B0_STAGES
  stem_width: int = 32
  head_width: int = 1280

  def stem_features(self) -> int:
    return round_channels(self.stem_width, self.width_mult)

  def head_features(self) -> int:
    return round_channels(self.head_width, self.width_mult)

  def blocks(self, x: jax.Array, train: bool, conv: ModuleDef, norm: ModuleDef,
             depthwise: ModuleDef) -> jax.Array:
    block_cls = remat_block(MBConv, self.remat)
    for cfg in block_configs(self.width_mult, self.depth_mult, self.drop_path_rate,
                             self.stages, self.stem_width):
      x = block_cls(cfg, self.padding, conv, norm, depthwise,
                    name=f"blocks_{cfg.stage}_{cfg.index}")(x, train)
    return x


_PAPER = ("EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks "
          "(Tan & Le, 2019), arXiv:1905.11946")

# Centre-crop fraction of timm's default (Noisy Student) weights of each tf_ variant.
_CROP_PCT: dict[str, float] = {
    "b0": 0.875, "b1": 0.882, "b2": 0.89, "b3": 0.904,
    "b4": 0.922, "b5": 0.934, "b6": 0.942, "b7": 0.949,
}


def _register() -> None:
  for variant, (width, depth, resolution, dropout) in COMPOUND_COEFFICIENTS.items():
    timm_name = f"tf_efficientnet_{variant}"
    tag = f"{timm_name}.ns_jft_in1k"
    register_model(
        functools.partial(EfficientNet, width_mult=width, depth_mult=depth, drop_rate=dropout),
        ModelInfo(name=f"efficientnet_{variant}", family="efficientnet", input_size=resolution,
                  crop_pct=_CROP_PCT[variant], mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  classifier="head", paper=_PAPER, timm_name=timm_name, license="apache-2.0",
                  source=(f"timm {tag} (https://huggingface.co/timm/{tag}), Noisy Student "
                          "weights ported from the TensorFlow TPU reference")))


_register()
