"""Small building blocks shared by several model families, and two rules they all follow.

Precision in low-precision (bf16 / fp16) runs
---------------------------------------------
A model built with `dtype=jnp.bfloat16` computes its convolutions, matmuls and
activations in bf16 and keeps every parameter in float32 (`param_dtype`). The
numerically fragile parts are done in float32 and only their results are cast:

- BatchNorm, GroupNorm and LayerNorm compute mean and variance in float32 from
  the (bf16) input, normalise in float32, and return `dtype` (bf16). flax does
  this for every `nn.BatchNorm` / `nn.GroupNorm` / `nn.LayerNorm` whose `dtype`
  is the compute dtype: it takes the statistics in at least float32 whatever
  the input dtype (recent flax names this `force_float32_reductions`, on by
  default), and the normalisation arithmetic is float32 as well.
  BatchNorm's running statistics (`batch_stats`) are float32 too. Every norm
  layer of this package is built that way: `dtype=self.dtype`, never a
  low-precision `param_dtype`. tests/test_fast_paths.py checks the statistics
  against float64 ones, so a flax change would be caught. (The variance of
  BatchNorm and of ViT's LayerNorm is flax's one-pass E[x^2] - E[x]^2, in
  float32, which loses digits when |mean| >> std; ResNetV2's GroupNorm and
  ConvNeXt's LayerNorm use the two-pass form.)
- Softmax (attention) runs in float32; `jax.nn.dot_product_attention` does so
  and accumulates q.k in float32 as well.
- Pooling means and squeeze-excite means accumulate in float32
  (`global_avg_pool`); weight standardisation (ResNetV2's StdConv) is in float32.
- Logits leave the classifier in float32 (`classifier_head`), so the loss is
  float32.
- The residual stream between blocks stays in the compute dtype, as in
  big_vision and timm's autocast.

Rematerialisation (`remat`)
---------------------------
Models with repeated blocks take `remat` in `REMAT_CHOICES`, applied to every
residual / transformer block with `nn.remat` (the parameter tree is the same
either way, so checkpoints and pretrained weights load in both):

- 'none': keep every activation for the backward pass (fastest, most memory).
- 'block': inside each block keep only the outputs of the matmuls (those
  without batch dimensions, i.e. not the attention matrix) and convolutions;
  norms, activations, softmax and the attention products are recomputed in the
  backward pass. Little extra compute.
- 'full': keep only each block's input; the whole block is recomputed in the
  backward pass (about one more forward pass of compute, least memory).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
from flax.linen import kw_only_dataclasses
import jax
import jax.numpy as jnp

REMAT_CHOICES = ("none", "block", "full")


def _save_matmuls_and_convs(prim: Any, *args: Any, **params: Any) -> bool:
  """Checkpoint policy of remat='block': keep non-batched matmul and convolution outputs."""
  if prim is jax.lax.conv_general_dilated_p:
    return True
  return jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *args, **params)


def check_remat(remat: str, owner: str) -> None:
  """Raises ValueError unless `remat` is one of `REMAT_CHOICES`."""
  if remat not in REMAT_CHOICES:
    raise ValueError(f"{owner}: remat must be one of {REMAT_CHOICES}, got {remat!r}.")


def remat_block(block_cls: type[nn.Module], remat: str,
                static_argnums: Sequence[int] = (2,)) -> type[nn.Module]:
  """`block_cls`, or its rematerialised version for remat 'block' / 'full'.

  The wrapped class keeps the block's name and parameters. Arguments that steer
  Python control flow (the `train` flag, argument 2 counting `self` as 0) must be
  in `static_argnums` and passed positionally.
  """
  check_remat(remat, block_cls.__name__)
  if remat == "none":
    return block_cls
  policy = _save_matmuls_and_convs if remat == "block" else None  # None: save nothing
  return nn.remat(block_cls, policy=policy, static_argnums=tuple(static_argnums))


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example.

  Active only when `deterministic` is False and `rate` > 0; it then needs the
  'dropout' rng. Kept examples are scaled by 1 / (1 - rate), as in timm and
  the EfficientNet reference (drop-connect).
  """

  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    rng = self.make_rng("dropout")
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over the spatial axes of an NHWC tensor, accumulated in at least float32."""
  acc = jnp.promote_types(x.dtype, jnp.float32)  # float32 for bf16, float64 stays float64
  return jnp.mean(x.astype(acc), axis=(1, 2)).astype(x.dtype)


def classifier_head(features: jax.Array, num_classes: int, dtype: Any,
                    name: str = "head") -> jax.Array:
  """The classifier Dense, or the features themselves when num_classes == 0.

  Logits are returned in float32 whatever the compute dtype, so that the loss
  is always computed in float32.
  """
  if num_classes == 0:
    return features
  logits = nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32, name=name)(features)
  return logits.astype(jnp.float32)


def setting_field(default: Any) -> Any:
  """A field of a base module that flax places after the fields its subclasses declare.

  flax moves keyword-only fields behind the subclass's own ones, in the
  constructor and in `dataclasses.fields`, so a base class can hold defaulted
  settings while a subclass still starts with fields that have no default
  (ResNet's `stage_sizes`) and keeps its positional arguments first.
  """
  return kw_only_dataclasses.field(default=default, kw_only=True)


class BatchNormClassifier(nn.Module):
  """The settings every BatchNorm CNN classifier of this package takes (VGG, ResNet, EfficientNet).

  A subclass declares its architecture fields; these settings follow them in
  the constructor. A family with other defaults declares the field again with
  its own default.

  Attributes:
    num_classes: classifier size; 0 returns the features the classifier would see.
    dtype: compute dtype.
    param_dtype: dtype of the convolution and BatchNorm parameters (the
      classifier's are always float32).
    bn_momentum: running-statistics decay, flax convention (0.9 is PyTorch's 0.1).
    bn_epsilon: BatchNorm epsilon.
    drop_rate: dropout on the features, before the classifier.
  """

  num_classes: int = setting_field(1000)
  dtype: Any = setting_field(jnp.float32)
  param_dtype: Any = setting_field(jnp.float32)
  bn_momentum: float = setting_field(0.9)
  bn_epsilon: float = setting_field(1e-5)
  drop_rate: float = setting_field(0.0)

  @nn.nowrap
  def batch_norm_layer(self, train: bool) -> Callable[..., nn.Module]:
    """The model's BatchNorm constructor: batch statistics when training, running ones otherwise."""
    return functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, param_dtype=self.param_dtype)


class PooledConvNet(BatchNormClassifier):
  """A BatchNorm CNN whose last feature map is average-pooled into the classifier.

  The subclass defines `forward_features`; `__call__` adds the pooling, the
  dropout and the classifier (`head`), so every such model has the same head
  and the same call.

  Attributes:
    drop_path_rate: stochastic depth of the residual branches; how it grows
      over the blocks is the subclass's (see its docstring).
    remat: 'none', 'block' or 'full': rematerialise every residual block in the
      backward pass (see `REMAT_CHOICES`); parameters are unchanged.
    num_classes, dtype, param_dtype, bn_momentum, bn_epsilon, drop_rate: see
      `BatchNormClassifier`.
  """

  drop_path_rate: float = setting_field(0.0)
  remat: str = setting_field("none")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits (float32) of NHWC images, or pooled features when num_classes == 0.

    Args:
      x: images, (batch, height, width, 3).
      train: use batch statistics (pass mutable=['batch_stats']) and enable
        dropout / stochastic depth (needs the 'dropout' rng when their rates are > 0).

    Returns:
      (batch, num_classes) float32 logits, or (batch, features) pooled features.
    """
    x = self.forward_features(x, train)
    x = global_avg_pool(x)
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    return classifier_head(x, self.num_classes, self.dtype)

  def forward_features(self, x: jax.Array, train: bool) -> jax.Array:
    """The last feature map, (batch, height, width, features), of images `x`.

    Called by `__call__` only (it creates the model's layers): a subclass
    checks its settings, casts `x` to `dtype` and runs stem and stages.
    """
    raise NotImplementedError(f"{type(self).__name__} must define forward_features.")


def field_values(module: nn.Module, cls: type[nn.Module]) -> dict[str, Any]:
  """`module`'s values of the dataclass fields of `cls` (one of its classes), by name.

  The settings to build a sub-module, or another subclass of `cls`, with the same
  configuration; flax's own `parent` and `name` are left out.
  """
  return {name: getattr(module, name) for name in cls.__dataclass_fields__
          if name not in ("parent", "name")}
