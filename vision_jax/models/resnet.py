"""ResNet v1.5 (He et al., arXiv:1512.03385) with BatchNorm, and the CIFAR ResNets.

"v1.5" puts the stride of a downsampling bottleneck in its 3x3 convolution
rather than in the first 1x1 (as in fb.resnet.torch, torchvision and Goyal et
al., arXiv:1706.02677); basic blocks are unaffected. The layout matches timm's
`resnet18` ... `resnet200` (7x7 stem, max-pool, 1x1 projection shortcuts), so
timm checkpoints load with `vision_jax.weights.from_timm`.

The CIFAR variants of section 4.2 of the paper (`cifar_resnet20/32/56`) are the
same module with a 3x3 stride-1 stem, no max-pool and three stages of 16/32/64
channels; their shortcuts are 1x1 projections wherever the shape changes
(option B), so the same block code serves.
"""

from __future__ import annotations

import functools
from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models.layers import (DropPath, PooledConvNet, check_remat, remat_block,
                                      setting_field)
from vision_jax.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, register_model

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# He (fan-out) init for every convolution, as in the paper and timm.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

ModuleDef = Callable[..., nn.Module]


class ResidualBlock(nn.Module):
  """What the basic and the bottleneck block share: their fields and the residual merge.

  A subclass sets `expansion` (its output channels over `features`) and builds
  its branch in `__call__`, ending with `merge`.

  Attributes:
    features: width of the block's 3x3 convolutions; the block outputs
      `expansion` times as many channels.
    strides: stride of the block's strided 3x3 convolution (and of the projection).
    conv: convolution constructor (dtype, init and bias already bound).
    norm: BatchNorm constructor (train mode, momentum, epsilon already bound).
    drop_path_rate: stochastic-depth rate of the residual branch.
    zero_init_last_bn: start the branch's last BN scale at zero, so that the
      block begins as the identity (Goyal et al.).
  """

  expansion: ClassVar[int]

  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  drop_path_rate: float = 0.0
  zero_init_last_bn: bool = True

  def merge(self, x: jax.Array, branch: jax.Array, last_bn: str, train: bool) -> jax.Array:
    """relu(shortcut(x) + drop_path(BN(branch))), the BN named `last_bn`."""
    init = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    y = self.norm(name=last_bn, scale_init=init)(branch)
    y = DropPath(self.drop_path_rate)(y, deterministic=not train)
    shortcut = _shortcut(x, self.features * self.expansion, self.strides, self.conv, self.norm)
    return nn.relu(y + shortcut)


class BasicBlock(ResidualBlock):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34, CIFAR ResNets).

  The first convolution carries the stride. Attributes: see `ResidualBlock`.
  """

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.features, (3, 3), self.strides, padding=((1, 1), (1, 1)), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), 1, padding=((1, 1), (1, 1)), name="conv2")(y)
    return self.merge(x, y, "bn2", train)


class Bottleneck(ResidualBlock):
  """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand by 4 (ResNet-50 and deeper).

  Attributes: see `ResidualBlock`.
  """

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.features, (1, 1), 1, padding=((0, 0), (0, 0)), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), self.strides, padding=((1, 1), (1, 1)), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.features * self.expansion, (1, 1), 1, padding=((0, 0), (0, 0)),
                  name="conv3")(y)
    return self.merge(x, y, "bn3", train)


def _shortcut(x: jax.Array, features: int, strides: int, conv: ModuleDef,
              norm: ModuleDef) -> jax.Array:
  """Identity, or a 1x1 projection + BN when the stride or the width changes."""
  if strides == 1 and x.shape[-1] == features:
    return x
  x = conv(features, (1, 1), strides, padding=((0, 0), (0, 0)), name="downsample_conv")(x)
  return norm(name="downsample_bn")(x)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def drop_path_rates(stage_sizes: Sequence[int], rate: float) -> list[float]:
  """Stochastic-depth rate of each block: 0 for the first, `rate` for the last, linear between."""
  num_blocks = sum(stage_sizes)
  return [rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]


class ResNet(PooledConvNet):
  """ResNet v1.5 with BatchNorm.

  Parameter names follow timm's layout: `conv1`/`bn1` (stem), `layer{s}_{b}`
  for block b (from 0) of stage s (from 1), timm's `layer{s}.{b}`,
  each with `conv1..3`, `bn1..3` and `downsample_conv`/`downsample_bn`, and the
  classifier `head`.

  Attributes:
    stage_sizes: number of blocks in each stage.
    block: 'basic' (two 3x3) or 'bottleneck' (1x1-3x3-1x1, x4 expansion).
    widths: block width of each stage (a bottleneck outputs 4x this).
    stem: 'imagenet' (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool) or
      'cifar' (3x3 stride-1 conv, BN, ReLU, no pooling), for 32x32 inputs.
    stem_width: channels of the stem convolution.
    zero_init_last_bn: initialise the last BN scale of every residual branch to zero.
    num_classes, dtype, param_dtype, bn_momentum, bn_epsilon, drop_rate, remat:
      see `layers.PooledConvNet`, whose defaults ResNet keeps.
    drop_path_rate: stochastic depth of the last block; block i of n gets
      drop_path_rate * i / (n - 1), as in timm.
  """

  stage_sizes: Sequence[int]
  block: str = "basic"
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"
  stem_width: int = 64
  # An init setting, not the architecture: it comes after the shared settings.
  zero_init_last_bn: bool = setting_field(True)

  def forward_features(self, x: jax.Array, train: bool) -> jax.Array:
    if self.block not in BLOCKS:
      raise ValueError(f"ResNet: block must be one of {sorted(BLOCKS)}, got {self.block!r}.")
    if self.stem not in ("imagenet", "cifar"):
      raise ValueError(f"ResNet: stem must be 'imagenet' or 'cifar', got {self.stem!r}.")
    if len(self.widths) != len(self.stage_sizes):
      raise ValueError(f"ResNet: {len(self.stage_sizes)} stages but {len(self.widths)} widths.")
    check_remat(self.remat, "ResNet")
    block_cls = remat_block(BLOCKS[self.block], self.remat)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=_conv_init)
    norm = self.batch_norm_layer(train)

    x = jnp.asarray(x, self.dtype)
    if self.stem == "imagenet":
      x = conv(self.stem_width, (7, 7), 2, padding=((3, 3), (3, 3)), name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
      # Padding with -inf (flax's max_pool does) equals PyTorch's implicit padding.
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(self.stem_width, (3, 3), 1, padding=((1, 1), (1, 1)), name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))

    rates = iter(drop_path_rates(self.stage_sizes, self.drop_path_rate))
    for stage, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(size):
        x = block_cls(
            features=width,
            strides=2 if stage > 0 and b == 0 else 1,  # later stages halve the resolution
            conv=conv,
            norm=norm,
            drop_path_rate=next(rates),
            zero_init_last_bn=self.zero_init_last_bn,
            name=f"layer{stage + 1}_{b}")(x, train)
    return x


_PAPER = "Deep Residual Learning for Image Recognition (He et al., 2015), arXiv:1512.03385"
_PAPER_V15 = (_PAPER + "; v1.5 strides as in Accurate, Large Minibatch SGD: Training ImageNet "
              "in 1 Hour (Goyal et al., 2017), arXiv:1706.02677")

# name: (block, blocks per stage, timm's default pretrained tag, its crop_pct).
_IMAGENET_VARIANTS: dict[str, tuple[str, tuple[int, ...], str, float]] = {
    "resnet18": ("basic", (2, 2, 2, 2), "a1_in1k", 0.95),
    "resnet34": ("basic", (3, 4, 6, 3), "a1_in1k", 0.95),
    "resnet50": ("bottleneck", (3, 4, 6, 3), "a1_in1k", 0.95),
    "resnet101": ("bottleneck", (3, 4, 23, 3), "a1h_in1k", 0.95),
    "resnet152": ("bottleneck", (3, 8, 36, 3), "a1h_in1k", 0.95),
    # timm has no weights for ResNet-200; its 'untrained' config gives the crop.
    "resnet200": ("bottleneck", (3, 24, 36, 3), "untrained", 0.875),
}

# name: n, the number of basic blocks per stage (depth 6n + 2).
_CIFAR_VARIANTS: dict[str, int] = {"cifar_resnet20": 3, "cifar_resnet32": 5, "cifar_resnet56": 9}


def _register() -> None:
  for name, (block, sizes, tag, crop_pct) in _IMAGENET_VARIANTS.items():
    if tag == "untrained":
      source = f"timm {name} (no pretrained weights; random init or own training)"
    else:
      source = f"timm {name}.{tag} (https://huggingface.co/timm/{name}.{tag})"
    register_model(
        functools.partial(ResNet, stage_sizes=sizes, block=block),
        ModelInfo(name=name, family="resnet", input_size=224, crop_pct=crop_pct,
                  mean=IMAGENET_MEAN, std=IMAGENET_STD, classifier="head", paper=_PAPER_V15,
                  timm_name=name, license="apache-2.0", source=source))
  for name, n in _CIFAR_VARIANTS.items():
    register_model(
        functools.partial(ResNet, stage_sizes=(n, n, n), block="basic", widths=(16, 32, 64),
                          stem="cifar", stem_width=16),
        ModelInfo(name=name, family="resnet", input_size=32, crop_pct=1.0,
                  mean=CIFAR10_MEAN, std=CIFAR10_STD, classifier="head",
                  paper=_PAPER + ", section 4.2 (CIFAR-10), with option-B projection shortcuts",
                  timm_name=None, license="apache-2.0",
                  source="no reference weights (train from scratch)"))


_register()
