"""DINO (Caron et al. 2021, arXiv:2104.14294): self-distillation with no labels.

A student network learns to match the output distribution of a teacher network
on other crops of the same image; the teacher is an exponential moving average
(EMA) of the student. Pieces, pure functions in the style of `simclr.py`:

- `DINOHead`: the projection head of the paper (3-layer MLP with GELU to a
  256-d bottleneck, l2-normalisation, then a weight-normalised linear layer
  without bias to `out_dim` = 65536 prototypes, its norm fixed at 1).
- `DINOModel`: encoder (any registered model with num_classes=0) + `DINOHead`;
  parameters under `params['encoder']` and `params['head']` (the SimCLR layout,
  so `init_from` loads the encoder into a classifier and drops the head). It
  also holds the loss's center in the 'batch_stats' collection
  (`batch_stats['center']`), so that the center is checkpointed and resumed with
  the rest of the state.
- `dino_loss`: cross-entropy between the centred, sharpened teacher
  distribution of each global crop and the student distribution of every other
  crop; `update_center`; `teacher_temperature` (the warm-up);
  `cosine_momentum` (the teacher's EMA schedule, also BYOL's).
- `dino_train_step`: one update: student on all crops, teacher (the train
  state's `ema_params`) on the two global crops, last-layer freeze, teacher EMA
  and center update.

Where the teacher lives. The train state's `ema_params` slot holds the teacher
(`create_train_state` starts it as a copy of the student, as DINO does), and
`config.ema_decay` is the teacher's base momentum (0.996 in the paper), which
`cosine_momentum` raises to 1 over the run. The BatchNorm running statistics
kept in the state (ResNet backbones) are the teacher's, the network that is
evaluated; both networks normalise with batch statistics while training.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vision_jax.train import steps
from vision_jax.train.steps import TrainState


def l2_normalise(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / ||x|| along `axis` in float32 (the 1e-12 floor only matters for a zero row)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-24))


class DINOHead(nn.Module):
  """DINO projection head: MLP to a bottleneck, l2-normalise, weight-normalised prototypes.

  Parameters: `mlp_{i}` (Dense with bias, i = 0 .. num_layers - 1; GELU between
  them, BatchNorm `bn_{i}` after the hidden ones when `use_bn`) and
  `last_layer/kernel` (bottleneck_dim, out_dim). The last layer is the paper's
  `weight_norm` layer with its magnitude frozen at 1 (`norm_last_layer=True`):
  each output column of the kernel is divided by its norm in the forward pass,
  so only its direction is learned.

  Attributes:
    out_dim: number of prototypes K (65536 for ViT-S/16 in the paper).
    hidden_dim: width of the hidden layers (2048).
    bottleneck_dim: output width of the MLP (256).
    num_layers: Dense layers of the MLP (3).
    use_bn: BatchNorm after the hidden layers (off for ViTs, the paper's default).
    dtype: compute dtype; the output is float32.
  """

  out_dim: int = 65536
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  num_layers: int = 3
  use_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """(batch, features) -> (batch, out_dim) float32 logits (before the temperature)."""
    if self.num_layers < 1:
      raise ValueError(f"DINOHead: num_layers must be >= 1, got {self.num_layers}.")
    x = jnp.asarray(x, self.dtype)
    dense = lambda width, name: nn.Dense(  # noqa: E731
        width, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.initializers.truncated_normal(0.02), name=name)
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = dense(self.bottleneck_dim if last else self.hidden_dim, f"mlp_{i}")(x)
      if not last:
        if self.use_bn:
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                           dtype=self.dtype, param_dtype=jnp.float32, name=f"bn_{i}")(x)
        x = nn.gelu(x, approximate=False)
    x = l2_normalise(x)
    v = self.param("last_layer", nn.initializers.truncated_normal(0.02),
                   (self.bottleneck_dim, self.out_dim), jnp.float32)
    return jnp.matmul(x, l2_normalise(v, axis=0), precision=jax.lax.Precision.HIGHEST)


class DINOModel(nn.Module):
  """Encoder plus `DINOHead`, and the loss's center (`batch_stats['center']`).

  Attributes:
    encoder: feature extractor, `(images, train=bool) -> (batch, features)`.
    head: the projection head.
  """

  encoder: nn.Module
  head: DINOHead

  @nn.compact
  def __call__(self, images: jax.Array, train: bool, features_only: bool = False) -> jax.Array:
    """Head outputs (batch, out_dim), or with `features_only` the encoder features (float32)."""
    features = self.encoder(images, train=train)
    if features_only:
      return features.astype(jnp.float32)
    # Created by `init`; the train step reads and replaces it (it is not a parameter).
    self.variable("batch_stats", "center", jnp.zeros, (1, self.head.out_dim), jnp.float32)
    return self.head(features, train=train)


def teacher_temperature(step: Any, warmup_temp: float, temp: float, warmup_steps: int) -> Any:
  """Teacher temperature: linear from `warmup_temp` to `temp` over `warmup_steps`, then `temp`."""
  if warmup_steps <= 0:
    return jnp.asarray(temp, jnp.float32)
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)
  return warmup_temp + (temp - warmup_temp) * frac


def cosine_momentum(step: Any, base: float, total_steps: int, final: float = 1.0) -> Any:
  """EMA momentum rising from `base` to `final` along a half cosine over `total_steps`.

  m(k) = final - (final - base) * (cos(pi k / K) + 1) / 2 (BYOL eq. 11's schedule,
  also DINO's teacher momentum).
  """
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / max(int(total_steps), 1), 1.0)
  return final - (final - base) * (jnp.cos(math.pi * frac) + 1.0) / 2.0


def dino_loss(student: jax.Array, teacher: jax.Array, center: jax.Array, student_temp: float,
              teacher_temp: Any) -> jax.Array:
  """DINO's loss over crops: H(P_t(global i), P_s(crop v)) for every pair v != i.

  P_t = softmax((teacher - center) / teacher_temp) (centring and sharpening, no
  gradient), P_s = softmax(student / student_temp). The cross-entropy of each
  (teacher crop, student crop) pair is averaged over the batch; the pairs are
  averaged too. Teacher crop i is the same view as student crop i, so those
  pairs are skipped.

  Args:
    student: (V, B, K) student outputs; crops 0 and 1 are the global crops.
    teacher: (G, B, K) teacher outputs of the G (2) global crops.
    center: (1, K) center.
    student_temp: student temperature (0.1).
    teacher_temp: teacher temperature (0.04 - 0.07 after warm-up).

  Returns:
    The scalar loss (float32).
  """
  if student.ndim != 3 or teacher.ndim != 3 or student.shape[1:] != teacher.shape[1:]:
    raise ValueError(f"dino_loss: student must be (V, B, K) and teacher (G, B, K); got "
                     f"{student.shape} and {teacher.shape}.")
  log_p = jax.nn.log_softmax(student.astype(jnp.float32) / student_temp, axis=-1)
  q = jax.lax.stop_gradient(
      jax.nn.softmax((teacher.astype(jnp.float32) - center) / teacher_temp, axis=-1))
  # (G, V): mean over the batch of -sum_k q log p, for every (teacher, student) crop pair.
  cross = -jnp.einsum("gbk,vbk->gv", q, log_p, precision=jax.lax.Precision.HIGHEST)
  cross = cross / student.shape[1]
  g, v = teacher.shape[0], student.shape[0]
  keep = 1.0 - jnp.eye(g, v, dtype=jnp.float32)
  return jnp.sum(cross * keep) / jnp.sum(keep)


def update_center(center: jax.Array, teacher: jax.Array, momentum: float) -> jax.Array:
  """center * m + (1 - m) * mean of the teacher outputs over crops and the global batch."""
  mean = jnp.mean(teacher.reshape(-1, teacher.shape[-1]).astype(jnp.float32), axis=0,
                  keepdims=True)
  return center * momentum + (1.0 - momentum) * mean


def require_ema(state: TrainState, step_name: str, network: str) -> None:
  """ValueError unless the state holds the EMA network (`ema_params`) that a step updates."""
  if state.ema_params is None:
    raise ValueError(f"{step_name}: the state has no {network} (ema_params); build it with "
                     f"use_ema=True (config.ema_decay > 0, the {network}'s base momentum).")


def ema(target: Any, online: Any, momentum: Any) -> Any:
  """target * m + (1 - m) * online, leaf by leaf (the teacher / target network update)."""
  return jax.tree_util.tree_map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)


def _is_last_layer(path) -> bool:
  keys = [str(getattr(k, "key", k)) for k in path]
  return len(keys) >= 2 and keys[0] == "head" and keys[1] == "last_layer"


def dino_train_step(state: TrainState, batch: dict[str, jax.Array], *, model: DINOModel,
                    tx: optax.GradientTransformation, schedule: Callable[[Any], Any],
                    total_steps: int, momentum_base: float, student_temp: float = 0.1,
                    teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04,
                    warmup_teacher_temp_steps: int = 0, center_momentum: float = 0.9,
                    freeze_last_layer_steps: int = 0
                    ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One DINO update on a global batch of crops.

  The two global crops of the whole batch go through the student in one call
  (and through the teacher in one call); the local crops, at their own
  resolution, in a second student call. During the first
  `freeze_last_layer_steps` steps the head's last layer gets no gradient and
  keeps its value (the paper's `freeze_last_layer`, one epoch): its optimizer
  state stays at its start, as when PyTorch skips a parameter without gradient.
  The teacher (`state.ema_params`) then moves towards the updated student with
  momentum `cosine_momentum(step, momentum_base, total_steps)`, and the center
  towards the mean teacher output.

  Args:
    state: train state; `ema_params` (the teacher) must be present.
    batch: {'image': (B, 2, H, W, C) global crops, optionally 'local':
      (B, N, h, w, C) local crops}; other keys are ignored.
    model: the `DINOModel`.
    tx: optimizer (AdamW in the paper).
    schedule: learning-rate schedule, for the metric only.
    total_steps: length of the run (the momentum schedule's horizon).
    momentum_base: the teacher's starting momentum (0.996).
    student_temp: student temperature.
    teacher_temp: teacher temperature after the warm-up.
    warmup_teacher_temp: teacher temperature at step 0.
    warmup_teacher_temp_steps: length of the linear temperature warm-up.
    center_momentum: momentum of the center (0.9).
    freeze_last_layer_steps: steps during which the last layer is frozen.

  Returns:
    The new state and metrics: loss, teacher_momentum, teacher_temperature,
    teacher_entropy (mean entropy of the sharpened teacher distribution; a
    collapse to one prototype drives it to 0, to uniform outputs to log K),
    grad_norm, learning_rate.
  """
  require_ema(state, "dino_train_step", "teacher")
  b, global_views = steps.paired_views(batch, "dino_train_step")
  local = batch.get("local")
  rng = jax.random.fold_in(state.rng, state.step)
  center = state.batch_stats["center"]
  t_temp = teacher_temperature(state.step, warmup_teacher_temp, teacher_temp,
                               warmup_teacher_temp_steps)

  def by_crop(out, crops):  # (B * crops, K) image-major -> (crops, B, K)
    return jnp.swapaxes(out.reshape((b, crops) + out.shape[1:]), 0, 1)

  teacher_out, teacher_updates = model.apply(
      {"params": state.ema_params, "batch_stats": state.batch_stats}, global_views, train=True,
      rngs={"dropout": rng}, mutable=["batch_stats"])
  teacher_out = jax.lax.stop_gradient(by_crop(teacher_out, 2))

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    # The student's running BN statistics are not kept (see the module docstring).
    out, _ = model.apply(variables, global_views, train=True,
                         rngs={"dropout": jax.random.fold_in(rng, 1)}, mutable=["batch_stats"])
    student = by_crop(out, 2)
    if local is not None:
      n = local.shape[1]
      local_out, _ = model.apply(variables, local.reshape((b * n,) + local.shape[2:]),
                                 train=True, rngs={"dropout": jax.random.fold_in(rng, 2)},
                                 mutable=["batch_stats"])
      student = jnp.concatenate([student, by_crop(local_out, n)], axis=0)
    return dino_loss(student, teacher_out, center, student_temp, t_temp)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  frozen = state.step < freeze_last_layer_steps
  grads = jax.tree_util.tree_map_with_path(
      lambda path, g: jnp.where(frozen, jnp.zeros_like(g), g) if _is_last_layer(path) else g,
      grads)
  new_state = steps.apply_gradients(state, grads, loss, teacher_updates["batch_stats"], tx=tx,
                                    ema_decay=0.0)
  params = jax.tree_util.tree_map_with_path(
      lambda path, new, old: jnp.where(frozen, old, new) if _is_last_layer(path) else new,
      new_state.params, state.params)
  momentum = cosine_momentum(state.step, momentum_base, total_steps)
  batch_stats = dict(new_state.batch_stats)
  batch_stats["center"] = update_center(center, teacher_out, center_momentum)
  q = jax.nn.softmax((teacher_out - center) / t_temp, axis=-1)
  entropy = -jnp.mean(jnp.sum(q * jnp.log(jnp.maximum(q, 1e-30)), axis=-1))
  new_state = new_state.replace(params=params, batch_stats=batch_stats,
                                ema_params=ema(state.ema_params, params, momentum))
  metrics = {"loss": loss, "teacher_momentum": momentum, "teacher_temperature": t_temp,
             "teacher_entropy": entropy, "grad_norm": optax.tree.norm(grads),
             "learning_rate": schedule(state.step)}
  return new_state, metrics
