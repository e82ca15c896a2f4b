"""BYOL (Grill et al. 2020, arXiv:2006.07733): bootstrap your own latent.

An online network (encoder, projector, predictor) predicts the projection that
a target network (encoder, projector) gives of another view of the same image;
the target is an exponential moving average of the online network. No
negatives. Pieces, pure functions in the style of `simclr.py`:

- `MLPHead`: BYOL's projector and predictor (Dense 4096, BatchNorm, ReLU,
  Dense 256).
- `BYOLModel`: encoder + `head/projector` + `head/predictor`; parameters under
  `params['encoder']` and `params['head']` (the SimCLR layout, so `init_from`
  loads the encoder into a classifier and drops projector and predictor).
- `byol_loss`: the symmetric normalised MSE, 2 - 2 cos(p, sg(z')) for both
  orderings of the two views (the paper's L + L~, eq. 2).
- `byol_train_step`: one update; the target is the train state's `ema_params`,
  moved with `dino.cosine_momentum` (tau = 1 - (1 - tau_base)(cos(pi k/K)+1)/2,
  the paper's eq. 11) from `config.ema_decay` = tau_base (0.996).

The target's copy of the predictor is carried along (the EMA slot holds a copy
of every online parameter) and never used. BatchNorm: both networks normalise
with the statistics of the global batch; the running statistics kept are the
online network's, which is the one evaluated (the paper evaluates the online
encoder).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vision_jax.train import steps
from vision_jax.train.dino import cosine_momentum, ema, l2_normalise, require_ema
from vision_jax.train.steps import TrainState


class MLPHead(nn.Module):
  """Dense(hidden) -> BatchNorm -> ReLU -> Dense(out_dim) with bias (BYOL's projector/predictor).

  Attributes:
    hidden_dim: hidden width (4096 in the paper).
    out_dim: output width (256).
    dtype: compute dtype; the output is float32.
  """

  hidden_dim: int = 4096
  out_dim: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32, name="dense_0")(
        jnp.asarray(x, self.dtype))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                     param_dtype=jnp.float32, name="bn_0")(x)
    x = nn.relu(x)
    x = nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=jnp.float32, name="dense_1")(x)
    return x.astype(jnp.float32)


class BYOLHead(nn.Module):
  """Projector g and predictor q: returns (z = g(h), p = q(z)).

  Attributes:
    hidden_dim: hidden width of both MLPs.
    out_dim: projection size.
    dtype: compute dtype.
  """

  hidden_dim: int = 4096
  out_dim: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    z = MLPHead(self.hidden_dim, self.out_dim, self.dtype, name="projector")(h, train)
    p = MLPHead(self.hidden_dim, self.out_dim, self.dtype, name="predictor")(z, train)
    return z, p


class BYOLModel(nn.Module):
  """Encoder plus `BYOLHead`.

  Attributes:
    encoder: feature extractor, `(images, train=bool) -> (batch, features)`.
    head: projector and predictor.
  """

  encoder: nn.Module
  head: BYOLHead

  def __call__(self, images: jax.Array, train: bool, features_only: bool = False):
    """(projections, predictions), or with `features_only` the encoder features (float32)."""
    features = self.encoder(images, train=train)
    if features_only:
      return features.astype(jnp.float32)
    return self.head(features, train=train)


def regression_loss(p: jax.Array, z: jax.Array) -> jax.Array:
  """Per-example ||p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z) (float32)."""
  return jnp.sum((l2_normalise(p) - l2_normalise(z)) ** 2, axis=-1)


def byol_loss(p1: jax.Array, p2: jax.Array, z1: jax.Array, z2: jax.Array) -> jax.Array:
  """Symmetric BYOL loss: mean over the batch of 2 - 2cos(p1, z2) + 2 - 2cos(p2, z1).

  Args:
    p1, p2: (B, D) online predictions of views 1 and 2.
    z1, z2: (B, D) target projections of views 1 and 2 (no gradient flows into them).

  Returns:
    The scalar loss, in [0, 8].
  """
  z1, z2 = jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2)
  return jnp.mean(regression_loss(p1, z2) + regression_loss(p2, z1))


def byol_train_step(state: TrainState, batch: dict[str, jax.Array], *, model: BYOLModel,
                    tx: optax.GradientTransformation, schedule: Callable[[Any], Any],
                    total_steps: int, momentum_base: float
                    ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One BYOL update on a global batch of image pairs.

  Both views of the whole batch go through the online network in one call and
  through the target (`state.ema_params`) in one call, so BatchNorm statistics
  are over both views of the global batch (as in SimCLR's step). After the
  optimizer update the target moves towards the new online parameters with
  momentum `cosine_momentum(step, momentum_base, total_steps)`.

  Args:
    state: train state with `ema_params` (the target).
    batch: {'image': (B, 2, H, W, C)}; other keys are ignored.
    model: the `BYOLModel`.
    tx: optimizer (LARS in the paper).
    schedule: learning-rate schedule, for the metric only.
    total_steps: length of the run (the momentum schedule's horizon).
    momentum_base: tau_base (0.996).

  Returns:
    The new state and metrics: loss, target_momentum, grad_norm, learning_rate.
  """
  require_ema(state, "byol_train_step", "target network")
  b, views = steps.paired_views(batch, "byol_train_step")
  rng = jax.random.fold_in(state.rng, state.step)

  (z_target, _), _ = model.apply({"params": state.ema_params, "batch_stats": state.batch_stats},
                                 views, train=True, rngs={"dropout": rng}, mutable=["batch_stats"])
  z_target = jax.lax.stop_gradient(z_target.reshape((b, 2, -1)))

  def loss_fn(params):
    (_, p), updates = model.apply({"params": params, "batch_stats": state.batch_stats}, views,
                                  train=True, rngs={"dropout": jax.random.fold_in(rng, 1)},
                                  mutable=["batch_stats"])
    p = p.reshape((b, 2, -1))
    return byol_loss(p[:, 0], p[:, 1], z_target[:, 0], z_target[:, 1]), updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = steps.apply_gradients(state, grads, loss, batch_stats, tx=tx, ema_decay=0.0)
  momentum = cosine_momentum(state.step, momentum_base, total_steps)
  new_state = new_state.replace(ema_params=ema(state.ema_params, new_state.params, momentum))
  metrics = {"loss": loss, "target_momentum": momentum, "grad_norm": optax.tree.norm(grads),
             "learning_rate": schedule(state.step)}
  return new_state, metrics
