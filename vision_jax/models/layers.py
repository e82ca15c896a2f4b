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

from typing import Any, Sequence

import flax.linen as nn
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
