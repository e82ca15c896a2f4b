"""ResNetV2: BiT's pre-activation ResNets, and the non-preact backbone of ViT-hybrids.

Big Transfer (BiT), Kolesnikov et al., arXiv:1912.11370. Every convolution is
weight-standardised (each output filter is shifted to zero mean and scaled to
unit variance before it is applied) and every norm is a 32-group GroupNorm, so
there are no batch statistics: the model behaves the same in train and eval
mode apart from dropout and stochastic depth.

Two flavours share one module:
  * `preact=True` (BiT): pre-activation bottlenecks (norm -> ReLU -> conv), the
    shortcut projection reads the pre-activated input, and a final GroupNorm +
    ReLU precedes the pooling. Stem 'fixed': 7x7/2 conv, zero padding of 1,
    3x3/2 max-pool without padding.
  * `preact=False` (ViT-hybrid backbone, Dosovitskiy et al., arXiv:2010.11929):
    post-activation bottlenecks with a normalised projection shortcut, no final
    norm, and stem 'same': TF "SAME" padding in every conv and in the max-pool.

The stride of a downsampling block sits on its 3x3 conv (and its shortcut).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.models.layers import (DropPath, check_remat, classifier_head, global_avg_pool,
                                      remat_block)
from vision_jax.models.registry import INCEPTION_MEAN, INCEPTION_STD, ModelInfo, register_model

_STEM_TYPES = ("fixed", "same", "")


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds a channel count to a multiple of `divisor`, never below 90% of it."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


class StdConv(nn.Module):
  """Bias-free 2D convolution with weight standardisation.

  Attributes:
    features: output channels.
    kernel_size: square kernel side.
    strides: square stride.
    same_padding: TF "SAME" padding (depends on the input size); otherwise the
      symmetric PyTorch padding ((stride - 1) + (kernel - 1)) // 2 on each side.
    eps: added to each filter's variance; 1e-8 in BiT and the ViT-hybrids.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  features: int
  kernel_size: int
  strides: int = 1
  same_padding: bool = False
  eps: float = 1e-8
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param(
        "kernel", nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        (k, k, x.shape[-1], self.features), self.param_dtype)
    # Standardise in float32 whatever the compute dtype, then cast: bf16 has
    # too few digits for the statistics of thousands of weights.
    w = kernel.astype(jnp.float32)
    mean = jnp.mean(w, axis=(0, 1, 2), keepdims=True)
    var = jnp.mean(jnp.square(w - mean), axis=(0, 1, 2), keepdims=True)
    w = (w - mean) * jax.lax.rsqrt(var + self.eps)
    if self.same_padding:
      padding: Any = "SAME"
    else:
      p = ((self.strides - 1) + (k - 1)) // 2
      padding = ((p, p), (p, p))
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), w.astype(self.dtype), (self.strides, self.strides), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _gn_act(x: jax.Array, act: bool, name: str, dtype: Any, param_dtype: Any) -> jax.Array:
  """32-group GroupNorm (eps 1e-5, as timm's GroupNormAct), then ReLU if `act`.

  Must be called inside a compact method: the GroupNorm is created there as `name`.
  """
  # The two-pass variance: the one-pass E[x^2] - E[x]^2 loses digits on
  # conv outputs with a large mean.
  x = nn.GroupNorm(num_groups=32, epsilon=1e-5, use_fast_variance=False, dtype=dtype,
                   param_dtype=param_dtype, name=name)(x)
  return nn.relu(x) if act else x


class Stem(nn.Module):
  """7x7/2 standardised conv (+ GroupNorm-ReLU when not preact), then a 3x3/2 max-pool.

  Attributes:
    features: output channels.
    stem_type: 'fixed' (BiT: pad the conv output with one row/column of zeros on
      every side, then pool without padding), 'same' (TF "SAME" conv and pool,
      ViT-hybrids) or '' (symmetric padding of 1, pooled as -inf).
    preact: no norm in the stem (the first block normalises its input).
  """

  features: int
  stem_type: str = "fixed"
  preact: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    same = self.stem_type == "same"
    x = StdConv(self.features, 7, 2, same_padding=same, dtype=self.dtype,
                param_dtype=self.param_dtype, name="conv")(x)
    if not self.preact:
      x = _gn_act(x, True, "norm", self.dtype, self.param_dtype)
    if self.stem_type == "fixed":
      # Zeros, not -inf: in the preact stem the conv output can be negative, so
      # the padded border takes part in the max.
      x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
      return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    if same:
      return nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Downsample(nn.Module):
  """1x1 strided projection shortcut; normalised (no ReLU) only when not preact."""

  features: int
  strides: int
  preact: bool
  same_padding: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = StdConv(self.features, 1, self.strides, same_padding=self.same_padding,
                dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
    if not self.preact:
      x = _gn_act(x, False, "norm", self.dtype, self.param_dtype)
    return x


class _BottleneckBase(nn.Module):
  """Fields and layers shared by the two bottlenecks, which order their norms differently.

  `mid_features` is the width of the 1x1 and 3x3 convs; `project` gives a stage's first
  block its 1x1 projection shortcut; `strides` applies to the 3x3 conv and that shortcut.
  """

  features: int
  mid_features: int
  strides: int = 1
  project: bool = False
  same_padding: bool = False
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _gn(self, x: jax.Array, act: bool, name: str) -> jax.Array:
    return _gn_act(x, act, name, self.dtype, self.param_dtype)

  def _projection(self, x: jax.Array, preact: bool) -> jax.Array:
    """The strided 1x1 `downsample` shortcut of a stage's first block (`project`)."""
    return Downsample(self.features, self.strides, preact=preact, same_padding=self.same_padding,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="downsample")(x)

  def _branch(self, x: jax.Array, norms: tuple[str, str], train: bool,
              out_norm: str | None = None) -> jax.Array:
    """conv1 (1x1) -> GN-ReLU -> conv2 (3x3, strided) -> GN-ReLU -> conv3 (1x1) [-> GN].

    `norms` names the two inner GroupNorms; `out_norm`, when given, a GroupNorm
    (no ReLU) after conv3. Stochastic depth is applied to the result.
    """
    conv = functools.partial(StdConv, same_padding=self.same_padding, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    y = self._gn(conv(self.mid_features, 1, name="conv1")(x), True, norms[0])
    y = self._gn(conv(self.mid_features, 3, self.strides, name="conv2")(y), True, norms[1])
    y = conv(self.features, 1, name="conv3")(y)
    if out_norm is not None:
      y = self._gn(y, False, out_norm)
    return DropPath(self.drop_path_rate, name="drop_path")(y, deterministic=not train)


class PreActBottleneck(_BottleneckBase):
  """Pre-activation bottleneck: (GN-ReLU -> conv) x 3 (1x1, 3x3 strided, 1x1) + shortcut.

  The projection shortcut, when present, reads the pre-activated input.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x_pre = self._gn(x, True, "norm1")
    shortcut = self._projection(x_pre, preact=True) if self.project else x
    return self._branch(x_pre, ("norm2", "norm3"), train) + shortcut


class Bottleneck(_BottleneckBase):
  """Post-activation bottleneck (ResNet v1.5 order) with GroupNorm and standardised convs.

  conv-GN-ReLU (1x1), conv-GN-ReLU (3x3 strided), conv-GN (1x1), add the
  (projected and normalised) shortcut, ReLU.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    shortcut = self._projection(x, preact=False) if self.project else x
    return nn.relu(self._branch(x, ("norm1", "norm2"), train, out_norm="norm3") + shortcut)


class ResNetV2(nn.Module):
  """ResNetV2 with GroupNorm and weight-standardised convolutions.

  Blocks are named `stages_{i}_blocks_{j}`; the first block of every stage has
  a projection shortcut, and stages after the first downsample by 2 there.

  Attributes:
    layers: blocks per stage; () builds the stem only (ViT-hybrid R+ViT-Ti).
    width_factor: multiplies the stem and every stage width (BiT's "x1".."x4").
    channels: output channels of each stage at width factor 1.
    stem_chs: stem output channels at width factor 1.
    bottle_ratio: bottleneck width / block output width.
    num_classes: classifier size; 0 returns the pooled features.
    preact: pre-activation blocks and a final GN-ReLU (BiT); False gives the
      ViT-hybrid backbone.
    stem_type: 'fixed' (BiT), 'same' (ViT-hybrids: also TF "SAME" padding in
      every conv) or '' (symmetric padding everywhere).
    global_pool: False returns the last NHWC feature map (after the final norm
      when preact) with no pooling; needs num_classes=0.
    drop_rate: dropout before the classifier.
    drop_path_rate: stochastic depth, rising linearly over all blocks from 0 to
      this rate at the last block.
    remat: 'none', 'block' or 'full': rematerialise every bottleneck in the
      backward pass (see `layers.REMAT_CHOICES`); parameters are unchanged.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  layers: Sequence[int]
  width_factor: int = 1
  channels: Sequence[int] = (256, 512, 1024, 2048)
  stem_chs: int = 64
  bottle_ratio: float = 0.25
  num_classes: int = 1000
  preact: bool = True
  stem_type: str = "fixed"
  global_pool: bool = True
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  remat: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Runs the network.

    Args:
      x: images, NHWC.
      train: enables dropout and stochastic depth (needs the 'dropout' rng).

    Returns:
      float32 logits (num_classes > 0), pooled features (num_classes == 0), or
      the NHWC feature map in `dtype` (global_pool=False).
    """
    if self.stem_type not in _STEM_TYPES:
      raise ValueError(f"stem_type must be one of {_STEM_TYPES}, got {self.stem_type!r}.")
    if len(self.layers) > len(self.channels):
      raise ValueError(f"{len(self.layers)} stages but only {len(self.channels)} channel widths.")
    if not self.global_pool and self.num_classes:
      raise ValueError("global_pool=False returns the feature map: it needs num_classes=0.")
    same = self.stem_type == "same"
    wf = self.width_factor
    x = x.astype(self.dtype)
    x = Stem(make_divisible(self.stem_chs * wf), self.stem_type, self.preact,
             dtype=self.dtype, param_dtype=self.param_dtype, name="stem")(x)

    check_remat(self.remat, "ResNetV2")
    block_cls = remat_block(PreActBottleneck if self.preact else Bottleneck, self.remat)
    total = sum(self.layers)
    rates = np.linspace(0.0, self.drop_path_rate, total) if total else []
    index = 0
    for i, depth in enumerate(self.layers):
      out = make_divisible(self.channels[i] * wf)
      mid = make_divisible(out * self.bottle_ratio)
      for j in range(depth):
        x = block_cls(
            out, mid, strides=2 if (i > 0 and j == 0) else 1, project=j == 0,
            same_padding=same, drop_path_rate=float(rates[index]), dtype=self.dtype,
            param_dtype=self.param_dtype, name=f"stages_{i}_blocks_{j}")(x, train)
        index += 1

    if self.preact:
      x = _gn_act(x, True, "norm", self.dtype, self.param_dtype)
    if not self.global_pool:
      return x
    x = global_avg_pool(x)
    x = nn.Dropout(self.drop_rate, name="head_drop")(x, deterministic=not train)
    return classifier_head(x, self.num_classes, self.dtype)


# BiT variants: (depth, width factor) -> blocks per stage. Metadata of the
# BiT-M weights (ImageNet-21k pretraining, ImageNet-1k fine-tuning).
_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_BIT_VARIANTS = (
    # (depth, width, input size of timm's goog_in21k_ft_in1k weights)
    (50, 1, 448),
    (50, 3, 448),
    (101, 1, 448),
    (101, 3, 448),
    (152, 2, 448),
    (152, 4, 480),
)
_BIT_PAPER = "Big Transfer (BiT): General Visual Representation Learning, arXiv:1912.11370"


def _register_all() -> None:
  for depth, width, size in _BIT_VARIANTS:
    name = f"resnetv2_{depth}x{width}_bit"
    register_model(
        functools.partial(ResNetV2, layers=_DEPTHS[depth], width_factor=width,
                          preact=True, stem_type="fixed"),
        ModelInfo(
            name=name, family="resnet_v2", input_size=size, crop_pct=1.0,
            interpolation="bilinear", mean=INCEPTION_MEAN, std=INCEPTION_STD, classifier="head", paper=_BIT_PAPER,
            timm_name=name, license="apache-2.0",
            source=(f"timm {name}.goog_in21k_ft_in1k (google-research/big_transfer BiT-M: "
                    "ImageNet-21k pretrained, ImageNet-1k fine-tuned)")))


_register_all()
