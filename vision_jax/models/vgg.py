"""VGG (Simonyan & Zisserman, arXiv:1409.1556), configurations A, B, D and E, with and without BN.

The layout matches torchvision's and timm's `vgg11` ... `vgg19_bn`: 3x3
convolutions with bias (each followed by BatchNorm in the `_bn` variants) and
ReLU, 2x2 max-pools between the five stages, then a three-layer classifier
512*7*7 -> 4096 -> 4096 -> classes with ReLU and dropout. The first classifier
layer is kept as a 7x7 convolution over a 7x7 map (the same weights as
torchvision's Linear(25088, 4096), reordered), so one set of parameters serves
both ways of feeding it, chosen by `head_style`:

- "timm" (timm's `ConvMlp` pre-logits): a feature map smaller than 7x7 (inputs
  below 224, e.g. 1x1 for 32x32 CIFAR images) is first average-pooled *up* to
  7x7; the 7x7 convolution then runs without padding, and its output (1x1 at
  224, 2x2 at 256) is averaged after the second layer. `from_timm` assumes this.
- "torchvision": the feature map is adaptive-average-pooled to exactly 7x7
  whatever the input size, as `torchvision.models.VGG.avgpool` does.
  `from_torchvision` assumes this.

Both give the same logits while the last feature map is at most 7x7, i.e. for
inputs under 256x256 (the pooling up to 7x7 is the same operation); from 256 up
they differ: timm slides the 7x7 layer and averages, torchvision pools down to
7x7 first. Parameter names mirror the two
libraries' module trees: `features_{i}` is `features.{i}` (conv, or BN at the
next index), `pre_logits/fc1` and `pre_logits/fc2` are timm's `pre_logits.fc1/fc2`
(torchvision's `classifier.0/3`), and `head` is `head.fc` (`classifier.6`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models.layers import BatchNormClassifier, classifier_head
from vision_jax.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, register_model

# Channels of each 3x3 conv, 'M' for a 2x2 max-pool (the paper's Table 1, configurations A/B/D/E).
LAYERS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}
HEAD_STYLES = ("timm", "torchvision")
_POOL_SIDE = 7  # the classifier's first layer sees a 7x7 map (224 / 32)

# He (fan-out) init for the convolutions, as torchvision and timm.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def adaptive_pool_matrix(size_in: int, size_out: int) -> jax.Array:
  """(size_out, size_in) averaging weights of PyTorch's adaptive_avg_pool along one axis.

  Output i averages inputs floor(i * in / out) .. ceil((i + 1) * in / out) - 1, so
  pooling up (out > in) repeats inputs and pooling down averages overlapping windows.
  """
  rows = []
  for i in range(size_out):
    start = (i * size_in) // size_out
    end = math.ceil((i + 1) * size_in / size_out)
    rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(size_in)])
  return jnp.asarray(rows, jnp.float32)


def adaptive_avg_pool(x: jax.Array, height: int, width: int) -> jax.Array:
  """PyTorch's adaptive_avg_pool2d of an NHWC tensor, accumulated in float32."""
  rows = adaptive_pool_matrix(x.shape[1], height)
  cols = adaptive_pool_matrix(x.shape[2], width)
  y = jnp.einsum("ih,nhwc,jw->nijc", rows, x.astype(jnp.float32), cols)
  return y.astype(x.dtype)


class PreLogits(nn.Module):
  """7x7 conv (no padding) -> ReLU -> dropout -> 1x1 (a Dense) -> ReLU, at every position.

  timm's `ConvMlp`; torchvision's `classifier[0:5]` when the input is exactly 7x7.
  """

  hidden_width: int
  out_width: int
  drop_rate: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(self.hidden_width, (_POOL_SIDE, _POOL_SIDE), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, kernel_init=_conv_init, name="fc1")(x)
    x = nn.Dropout(self.drop_rate)(nn.relu(x), deterministic=not train)
    x = nn.Dense(self.out_width, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(x)
    return nn.relu(x)


class VGG(BatchNormClassifier):
  """VGG: 3x3 conv stages with max-pools, then a 7x7-conv / Dense / Dense classifier.

  Attributes:
    layers: channels of each 3x3 conv and 'M' for each 2x2 max-pool (`LAYERS`).
    batch_norm: BatchNorm after every conv (the `_bn` variants).
    head_style: 'timm' or 'torchvision': how the last feature map reaches the 7x7
      first classifier layer (see the module docstring).
    hidden_width: output channels of the first classifier layer (4096).
    pre_logits_width: output width of the second classifier layer, the pooled
      features when num_classes == 0 (4096).
    num_classes, dtype, param_dtype, bn_momentum, bn_epsilon: see
      `layers.BatchNormClassifier`, whose defaults VGG keeps; num_classes == 0
      returns the pre-logits features.
    drop_rate: dropout after each of the two hidden classifier layers (torchvision
      trains with 0.5, timm's default is 0).
  """

  layers: Sequence[int | str]
  batch_norm: bool = False
  head_style: str = "timm"
  hidden_width: int = 4096
  pre_logits_width: int = 4096

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits (float32) of NHWC images, or pre-logits features when num_classes == 0.

    Args:
      x: images, (batch, height, width, 3); any side from 32 up.
      train: use batch statistics (pass mutable=['batch_stats'] for the BN variants) and
        enable dropout (needs the 'dropout' rng when drop_rate > 0).

    Returns:
      (batch, num_classes) float32 logits, or (batch, pre_logits_width) features.
    """
    if self.head_style not in HEAD_STYLES:
      raise ValueError(f"VGG: head_style must be one of {HEAD_STYLES}, got {self.head_style!r}.")
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)),
                             dtype=self.dtype, param_dtype=self.param_dtype,
                             kernel_init=_conv_init)
    x = jnp.asarray(x, self.dtype)
    index = 0  # the torchvision / timm Sequential index, which names the parameters
    for layer in self.layers:
      if layer == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        index += 1
        continue
      x = conv(int(layer), name=f"features_{index}")(x)
      index += 1
      if self.batch_norm:
        x = self.batch_norm_layer(train)(name=f"features_{index}")(x)
        index += 1
      x = nn.relu(x)
      index += 1

    height, width = x.shape[1], x.shape[2]
    if self.head_style == "torchvision":
      x = adaptive_avg_pool(x, _POOL_SIDE, _POOL_SIDE)
    elif height < _POOL_SIDE or width < _POOL_SIDE:
      x = adaptive_avg_pool(x, max(height, _POOL_SIDE), max(width, _POOL_SIDE))
    x = PreLogits(self.hidden_width, self.pre_logits_width, self.drop_rate, self.dtype,
                  self.param_dtype, name="pre_logits")(x, train)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)  # 1x1 at 224: a no-op
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    return classifier_head(x, self.num_classes, self.dtype)


_PAPER = ("Very Deep Convolutional Networks for Large-Scale Image Recognition "
          "(Simonyan & Zisserman, 2014), arXiv:1409.1556")


def _register() -> None:
  for base, layers in LAYERS.items():
    for batch_norm in (False, True):
      name = f"{base}_bn" if batch_norm else base
      register_model(
          functools.partial(VGG, layers=layers, batch_norm=batch_norm),
          ModelInfo(name=name, family="vgg", input_size=224, crop_pct=0.875,
                    interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    classifier="head", paper=_PAPER, timm_name=name, license="bsd-3-clause",
                    source=f"torchvision {name} IMAGENET1K_V1, = timm {name}.tv_in1k "
                           f"(https://huggingface.co/timm/{name}.tv_in1k)"))


_register()
