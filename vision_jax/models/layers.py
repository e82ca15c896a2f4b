"""Small building blocks shared by several model families."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


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
  """Mean over the spatial axes of an NHWC tensor, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)


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
