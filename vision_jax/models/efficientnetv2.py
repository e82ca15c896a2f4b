"""EfficientNetV2 (Tan & Le, arXiv:2104.00298) and timm's `efficientnetv2_rw_*`.

V2 keeps EfficientNet's stem, head and MBConv blocks but starts with cheaper
blocks where the feature maps are large: the first stage is a plain 3x3
conv + BN + SiLU (timm's ConvBnAct, `cn`), the next two are Fused-MBConv
(timm's EdgeResidual, `er`: one full 3x3 convolution does the expansion and the
spatial mixing, then a linear 1x1 projection, no squeeze-excite), and only the
later, low-resolution stages are MBConv with squeeze-excite (`ir`, imported
from `efficientnet.py`, whose SE and padding helpers are reused as well). The
paper found depthwise convolutions slow in early layers on accelerators; the
fused blocks trade FLOPs for throughput there.

Each variant is a stage table (the paper's Table 4 for S, the google/automl
release for B0-B3, M, L and XL) with width/depth multipliers, as data in
`VARIANTS`. Two flavours, as in timm:

* `efficientnetv2_{b0,b1,b2,b3,s,m,l,xl}` have the layout of timm's
  `tf_efficientnetv2_*` (ports of the TensorFlow weights): TensorFlow 'SAME'
  padding and BatchNorm epsilon 1e-3.
* `efficientnetv2_rw_{t,s,m}` are timm's own PyTorch-trained variants, drawn by
  timm's author before the official code was released (rw_s/rw_m: a Fused-MBConv
  first stage, 272 channels in the last stage and a 1792-wide head; rw_t: the
  official S table at width 0.8, depth 0.9): symmetric k // 2 padding and
  epsilon 1e-5.

Parameter names mirror timm's module tree (`conv_stem`, `bn1`,
`blocks_{stage}_{block}/{conv,conv_exp,conv_pw,...}`, `conv_head`, `bn2`), so
`vision_jax.weights.from_timm` maps them one to one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax

from vision_jax.models.efficientnet import (BlockBase, BlockConfig, EfficientNetBase, MBConv,
                                            SqueezeExcite, _conv_padding, _depthwise_init,
                                            round_channels)
from vision_jax.models.layers import remat_block
from vision_jax.models.registry import (IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN,
                                        INCEPTION_STD, ModelInfo, register_model)

ModuleDef = Callable[..., nn.Module]

BLOCK_KINDS = ("conv", "fused", "mbconv")


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One row of a stage table: a stage of identical blocks, before scaling.

  Attributes:
    kind: 'conv' (conv + BN + SiLU), 'fused' (Fused-MBConv) or 'mbconv'.
    repeats: number of blocks before depth scaling.
    features: output channels before width scaling.
    stride: stride of the stage's first block (the others have stride 1).
    expand: expansion ratio (ignored by 'conv').
    kernel: side of the spatial kernel.
    se_ratio: squeeze-excite width as a fraction of the block's input channels
      (0: no squeeze-excite).
  """

  kind: str
  repeats: int
  features: int
  stride: int = 1
  expand: int = 1
  kernel: int = 3
  se_ratio: float = 0.0


def _conv(repeats: int, features: int) -> StageSpec:
  return StageSpec("conv", repeats, features)


def _fused(repeats: int, features: int, stride: int = 2, expand: int = 4) -> StageSpec:
  return StageSpec("fused", repeats, features, stride, expand)


def _mbconv(repeats: int, features: int, stride: int, expand: int) -> StageSpec:
  return StageSpec("mbconv", repeats, features, stride, expand, se_ratio=0.25)


# The google/automl stage tables (timm 1.0.31 `_gen_efficientnetv2_*` has the same ones).
BASE_STAGES = (_conv(1, 16), _fused(2, 32), _fused(2, 48), _mbconv(3, 96, 2, 4),
               _mbconv(5, 112, 1, 6), _mbconv(8, 192, 2, 6))
S_STAGES = (_conv(2, 24), _fused(4, 48), _fused(4, 64), _mbconv(6, 128, 2, 4),
            _mbconv(9, 160, 1, 6), _mbconv(15, 256, 2, 6))
M_STAGES = (_conv(3, 24), _fused(5, 48), _fused(5, 80), _mbconv(7, 160, 2, 4),
            _mbconv(14, 176, 1, 6), _mbconv(18, 304, 2, 6), _mbconv(5, 512, 1, 6))
L_STAGES = (_conv(4, 32), _fused(7, 64), _fused(7, 96), _mbconv(10, 192, 2, 4),
            _mbconv(19, 224, 1, 6), _mbconv(25, 384, 2, 6), _mbconv(7, 640, 1, 6))
XL_STAGES = (_conv(4, 32), _fused(8, 64), _fused(8, 96), _mbconv(16, 192, 2, 4),
             _mbconv(24, 256, 1, 6), _mbconv(32, 512, 2, 6), _mbconv(8, 640, 1, 6))
# timm's efficientnetv2_rw_s/m: Fused-MBConv (expansion 1) first, 272 channels last.
RW_STAGES = (_fused(2, 24, stride=1, expand=1),) + S_STAGES[1:-1] + (_mbconv(15, 272, 2, 6),)


def scale_channels(features: int, width_mult: float, round_limit: float = 0.9) -> int:
  """Scales a channel count and rounds it to a multiple of 8.

  As EfficientNet's `round_channels`, except that the rule "never more than
  10% down" is `round_limit` (0.9); B0-B3 round without it (round_limit 0), as
  the reference does, which gives B3 a 16-channel first stage, not 24.
  """
  if round_limit == 0.9:
    return round_channels(features, width_mult)
  scaled = features * width_mult
  rounded = max(8, int(scaled + 4) // 8 * 8)
  return rounded + 8 if rounded < round_limit * scaled else rounded


@dataclasses.dataclass(frozen=True)
class V2BlockConfig(BlockConfig):
  """EfficientNet's block settings plus the block kind (see `BLOCK_KINDS`)."""

  kind: str = "mbconv"


def block_configs(stages: Sequence[StageSpec], width_mult: float,
                  depth_mult: float | Sequence[float], drop_path_rate: float,
                  stem_width: int, round_limit: float = 0.9) -> list[V2BlockConfig]:
  """Every block of a scaled network, in order.

  Args:
    stages: the unscaled stage table.
    width_mult: channel multiplier.
    depth_mult: block-count multiplier, one for all stages or one per stage
      (timm's rw_m scales its last two stages more); rounded up.
    drop_path_rate: block i of n gets drop_path_rate * i / n.
    stem_width: unscaled width of the stem.
    round_limit: see `scale_channels`.

  Returns:
    One `V2BlockConfig` per block.
  """
  depths = (tuple(depth_mult) if isinstance(depth_mult, (tuple, list))
            else (depth_mult,) * len(stages))
  if len(depths) != len(stages):
    raise ValueError(f"EfficientNetV2: {len(depths)} depth multipliers for {len(stages)} stages.")
  repeats = [int(math.ceil(s.repeats * d)) for s, d in zip(stages, depths)]
  total = sum(repeats)
  configs = []
  in_features = scale_channels(stem_width, width_mult, round_limit)
  for stage, (spec, n) in enumerate(zip(stages, repeats)):
    if spec.kind not in BLOCK_KINDS:
      raise ValueError(f"EfficientNetV2: block kind must be one of {BLOCK_KINDS}, "
                       f"got {spec.kind!r}.")
    out_features = scale_channels(spec.features, width_mult, round_limit)
    for b in range(n):
      mid = round_channels(in_features * spec.expand, 1.0)
      configs.append(V2BlockConfig(
          stage=stage, index=b, in_features=in_features, out_features=out_features,
          kernel=spec.kernel, stride=spec.stride if b == 0 else 1, expand=spec.expand,
          # The squeeze width is a fraction of the block input (timm: of mid / expand).
          se_features=round(mid * spec.se_ratio / spec.expand),
          drop_path_rate=drop_path_rate * len(configs) / total, kind=spec.kind))
      in_features = out_features
  return configs


class ConvBlock(BlockBase):
  """kxk conv + BN + SiLU, with a residual when the block keeps the shape (timm's ConvBnAct).

  Attributes: as `efficientnet.BlockBase` (`config` is a `V2BlockConfig`).
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cfg = self.config
    y = self.conv(cfg.out_features, (cfg.kernel, cfg.kernel), strides=cfg.stride,
                  padding=_conv_padding(self.padding, cfg.kernel), name="conv")(x)
    y = nn.swish(self.norm(name="bn1")(y))
    return self.residual(x, y, train)


class FusedMBConv(BlockBase):
  """Fused-MBConv: kxk expansion conv (`conv_exp`, `bn1`, SiLU), optional SE, 1x1 linear
  projection (`conv_pwl`, `bn2`), residual with drop-connect when the shape is kept.

  Attributes: as `efficientnet.BlockBase` (`config` is a `V2BlockConfig`).
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cfg = self.config
    mid = round_channels(cfg.in_features * cfg.expand, 1.0)
    y = self.conv(mid, (cfg.kernel, cfg.kernel), strides=cfg.stride,
                  padding=_conv_padding(self.padding, cfg.kernel), name="conv_exp")(x)
    y = nn.swish(self.norm(name="bn1")(y))
    if cfg.se_features:
      y = SqueezeExcite(cfg.se_features, conv=self.conv, name="se")(y)
    y = self.conv(cfg.out_features, (1, 1), padding="VALID", name="conv_pwl")(y)
    y = self.norm(name="bn2")(y)  # linear bottleneck: no activation
    return self.residual(x, y, train)


class EfficientNetV2(EfficientNetBase):
  """EfficientNetV2: conv, Fused-MBConv and MBConv stages between EfficientNet's stem and head.

  Attributes:
    stages: the unscaled stage table.
    width_mult: channel multiplier.
    depth_mult: block-count multiplier (a float, or one per stage).
    stem_width: unscaled channels of the 3x3 stride-2 stem.
    head_width: channels of the final 1x1 convolution (already scaled: the
      reference scales it for some variants and not for others).
    round_limit: channel rounding, see `scale_channels`.
    padding, bn_momentum, bn_epsilon, drop_rate, drop_path_rate, num_classes, dtype,
      param_dtype, remat: see `efficientnet.EfficientNetBase` (padding 'same' for timm's
      tf_efficientnetv2_*, 'symmetric' for its efficientnetv2_*).
  """

  # The reference init of a depthwise kernel, as EfficientNet's: N(0, 2 / (k * k)). The
  # TF code's fan-out of a (k, k, C, 1) depthwise kernel is k * k, timm's k * k * C / groups;
  # flax's fan-out of our (k, k, 1, C) layout would be k * k * C, sqrt(C) times too small.
  depthwise_init = staticmethod(_depthwise_init)

  stages: Sequence[StageSpec] = S_STAGES
  width_mult: float = 1.0
  depth_mult: float | Sequence[float] = 1.0
  stem_width: int = 24
  head_width: int = 1280
  round_limit: float = 0.9

  def stem_features(self) -> int:
    return scale_channels(self.stem_width, self.width_mult, self.round_limit)

  def head_features(self) -> int:
    return self.head_width

  def blocks(self, x: jax.Array, train: bool, conv: ModuleDef, norm: ModuleDef,
             depthwise: ModuleDef) -> jax.Array:
    block_classes = {"conv": remat_block(ConvBlock, self.remat),
                     "fused": remat_block(FusedMBConv, self.remat),
                     "mbconv": remat_block(MBConv, self.remat)}
    for cfg in block_configs(self.stages, self.width_mult, self.depth_mult,
                             self.drop_path_rate, self.stem_width, self.round_limit):
      extra = {"depthwise": depthwise} if cfg.kind == "mbconv" else {}
      x = block_classes[cfg.kind](cfg, self.padding, conv, norm, **extra,
                                  name=f"blocks_{cfg.stage}_{cfg.index}")(x, train)
    return x


@dataclasses.dataclass(frozen=True)
class Variant:
  """A registered EfficientNetV2: its architecture and its reference weights' settings.

  Attributes:
    timm_name: timm's name of the same architecture.
    tag: timm's pretrained tag whose preprocessing `ModelInfo` describes.
    architecture: `EfficientNetV2` fields.
    input_size: evaluation resolution of those weights (timm's test_input_size).
    crop_pct: their evaluation centre-crop fraction.
    inception_norm: whether they take [-1, 1] inputs (mean = std = 0.5).
  """

  timm_name: str
  tag: str
  architecture: dict
  input_size: int
  crop_pct: float
  inception_norm: bool


def _arch(stages, width=1.0, depth=1.0, stem=24, head=1280, round_limit=0.9, drop=0.2,
          pytorch=False) -> dict:
  arch = dict(stages=stages, width_mult=width, depth_mult=depth, stem_width=stem,
              head_width=head, round_limit=round_limit, drop_rate=drop)
  if pytorch:
    arch.update(padding="symmetric", bn_epsilon=1e-5)
  return arch


def _base(width, depth, drop):
  # B0-B3 scale the head with the width and round without the 10% rule.
  return _arch(BASE_STAGES, width, depth, stem=32, head=scale_channels(1280, width, 0.0),
               round_limit=0.0, drop=drop)


# Dropout before the head: the paper's final (largest) values of Table 6 for S/M/L
# (0.3/0.4/0.5; XL is not in that table and takes L's), B0-B3 as EfficientNet B0-B3.
VARIANTS: dict[str, Variant] = {
    "efficientnetv2_b0": Variant("tf_efficientnetv2_b0", "in1k", _base(1.0, 1.0, 0.2), 224,
                                 0.875, False),
    "efficientnetv2_b1": Variant("tf_efficientnetv2_b1", "in1k", _base(1.0, 1.1, 0.2), 240,
                                 0.882, False),
    "efficientnetv2_b2": Variant("tf_efficientnetv2_b2", "in1k", _base(1.1, 1.2, 0.3), 260,
                                 0.890, False),
    "efficientnetv2_b3": Variant("tf_efficientnetv2_b3", "in1k", _base(1.2, 1.4, 0.3), 300,
                                 0.904, False),
    "efficientnetv2_s": Variant("tf_efficientnetv2_s", "in1k", _arch(S_STAGES, drop=0.3), 384,
                                1.0, True),
    "efficientnetv2_m": Variant("tf_efficientnetv2_m", "in1k", _arch(M_STAGES, drop=0.4), 480,
                                1.0, True),
    "efficientnetv2_l": Variant("tf_efficientnetv2_l", "in1k",
                                _arch(L_STAGES, stem=32, drop=0.5), 480, 1.0, True),
    "efficientnetv2_xl": Variant("tf_efficientnetv2_xl", "in21k_ft_in1k",
                                 _arch(XL_STAGES, stem=32, drop=0.5), 512, 1.0, True),
    "efficientnetv2_rw_t": Variant("efficientnetv2_rw_t", "ra2_in1k",
                                   _arch(S_STAGES, 0.8, 0.9, head=scale_channels(1280, 0.8),
                                         pytorch=True), 288,
                                   1.0, False),
    "efficientnetv2_rw_s": Variant("efficientnetv2_rw_s", "ra2_in1k",
                                   _arch(RW_STAGES, head=1792, pytorch=True), 384, 1.0, False),
    "efficientnetv2_rw_m": Variant("efficientnetv2_rw_m", "agc_in1k",
                                   _arch(RW_STAGES, 1.2, (1.2,) * 4 + (1.6,) * 2,
                                         head=scale_channels(1792, 1.2), pytorch=True),
                                   416, 1.0, False),
}

_PAPER = ("EfficientNetV2: Smaller Models and Faster Training (Tan & Le, 2021), "
          "arXiv:2104.00298")


def _register() -> None:
  for name, v in VARIANTS.items():
    tf_port = v.timm_name.startswith("tf_")
    tag = f"{v.timm_name}.{v.tag}"
    source = (f"timm {tag} (https://huggingface.co/timm/{tag}), "
              + ("ported from the TensorFlow weights of google/automl" if tf_port
                 else "trained by timm in PyTorch"))
    register_model(
        functools.partial(EfficientNetV2, **v.architecture),
        ModelInfo(name=name, family="efficientnetv2", input_size=v.input_size,
                  crop_pct=v.crop_pct,
                  mean=INCEPTION_MEAN if v.inception_norm else IMAGENET_MEAN,
                  std=INCEPTION_STD if v.inception_norm else IMAGENET_STD,
                  classifier="head", paper=_PAPER, timm_name=v.timm_name,
                  license="apache-2.0", source=source))


_register()
