"""Heads that sit on top of a feature extractor (a registered model with num_classes=0).

`ProjectionHead` is the SimCLR projection g(.) (Chen et al. 2020, arXiv:2002.05709,
section 2.1; SimCLRv2, arXiv:2006.10029, uses three layers): an MLP whose every
Dense is followed by BatchNorm. As in the authors' code, Dense layers that are
followed by BatchNorm carry no bias (the BN shift replaces it), hidden layers use
ReLU, and the output layer is Dense + BatchNorm with neither ReLU nor shift
(BN scale only), so the projection has no bias anywhere in its last layer.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class ProjectionHead(nn.Module):
  """SimCLR projection MLP: (num_layers - 1) x [Dense, BN, ReLU], then Dense, BN (no shift).

  Parameters are named `dense_{i}` / `bn_{i}` for i = 0 .. num_layers - 1. All
  kernels are 2-D and every BN parameter is 1-D, so `optim.decay_mask` gives the
  kernels weight decay and LARS adaptation and exempts the BN parameters.

  Attributes:
    hidden_dim: width of the hidden layers; None uses the input width (the
      paper's choice: 2048 for a ResNet-50).
    out_dim: projection size (128 in the paper).
    num_layers: number of Dense layers, >= 1 (2 in SimCLR v1, 3 in SimCLR v2).
    dtype: compute dtype; the projection comes back in float32.
    bn_momentum: running-statistics decay, flax convention (0.9 as the encoders;
      the SimCLR TF code uses 0.9 too).
    bn_epsilon: BatchNorm epsilon.
  """

  hidden_dim: int | None = 2048
  out_dim: int = 128
  num_layers: int = 2
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Projects features.

    Args:
      x: (batch, features) encoder output.
      train: BatchNorm uses batch statistics (pass mutable=['batch_stats']) when
        True, running statistics when False.

    Returns:
      (batch, out_dim) float32 projections (not normalised; the loss normalises).
    """
    if self.num_layers < 1:
      raise ValueError(f"ProjectionHead: num_layers must be >= 1, got {self.num_layers}.")
    hidden = self.hidden_dim if self.hidden_dim is not None else x.shape[-1]
    x = jnp.asarray(x, self.dtype)
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = nn.Dense(self.out_dim if last else hidden, use_bias=False, dtype=self.dtype,
                   param_dtype=jnp.float32, name=f"dense_{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, use_bias=not last, dtype=self.dtype,
                       param_dtype=jnp.float32, name=f"bn_{i}")(x)
      if not last:
        x = nn.relu(x)
    return x.astype(jnp.float32)
