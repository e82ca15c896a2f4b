"""Train state and the pure, module-level step functions of the supervised recipe.

Every dependency (model, optimizer, schedule, options) is an argument, so a test
can call a step alone; the trainer binds them with functools.partial and jits.

BatchNorm under jit: the batch is one global array sharded over the 'data' mesh
axis, so the batch statistics that flax computes are over the GLOBAL batch (XLA
inserts the cross-device reductions): this is synchronised BatchNorm, and the
result does not depend on the number of devices.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. A checkpoint stores exactly this.

  Attributes:
    step: number of optimizer updates done.
    params: model parameters (float32).
    batch_stats: BatchNorm running statistics ({} for models without BatchNorm).
    opt_state: optimizer state.
    ema_params: exponential moving average of params, or None.
    rng: base key; step `s` uses fold_in(rng, s) for dropout/stochastic depth.
    first_nonfinite_step: -1, or the first step whose loss was NaN/Inf (kept on
      device so that detection never stalls the host).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array
  first_nonfinite_step: jax.Array


def create_train_state(rng: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
                       input_shape: tuple[int, ...], use_ema: bool) -> TrainState:
  """Initialises variables and optimizer state (jit this with out_shardings)."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init({"params": init_rng, "dropout": init_rng},
                         jnp.zeros(input_shape, jnp.float32), train=False)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
      ema_params=jax.tree_util.tree_map(jnp.copy, params) if use_ema else None,
      rng=state_rng, first_nonfinite_step=jnp.full((), -1, jnp.int32))


# LLVM optimisation level for the initialisation program on the CPU (XLA's default is 2).
CPU_INIT_OPT_LEVEL = 1


def init_state(init_fn: Callable[[jax.Array], Any], rng: jax.Array,
               out_shardings: Any = None) -> Any:
  """`init_fn(rng)` compiled and run, its output born with `out_shardings` (None: JAX's choice).

  On the CPU, initialisation is compiled at LLVM optimisation level 1 instead of
  2. What survives of that program is integer random-number hashing (threefry,
  one loop per parameter) plus element-wise scaling (the forward pass that flax
  runs on zeros is dead code): no reduction or matmul whose rounding the level
  could change. The values were bitwise the same for one model of each of the
  seven families (tests/test_train.py keeps checking a ResNet and a ViT), and
  compilation is 2 to 3.5 times faster: for cifar_resnet20 it was most of the
  compile time of a short CPU run.
  """
  jitted = (jax.jit(init_fn) if out_shardings is None
            else jax.jit(init_fn, out_shardings=out_shardings))
  lowered = jitted.lower(rng)
  if jax.default_backend() == "cpu":
    compiled = lowered.compile(compiler_options={
        "xla_backend_optimization_level": CPU_INIT_OPT_LEVEL})
  else:
    compiled = lowered.compile()
  return compiled(rng)


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32, integer or one-hot/soft labels."""
  logits = logits.astype(jnp.float32)
  if labels.ndim == logits.ndim:
    targets = labels.astype(jnp.float32)
  else:
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _forward(model, params, batch_stats, images, rng, train):
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
    logits, updates = model.apply(variables, images, train=train, rngs={"dropout": rng},
                                  mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  return model.apply(variables, images, train=train, rngs={"dropout": rng}), batch_stats


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: Callable[[Any], Any],
               num_classes: int, label_smoothing: float = 0.0, grad_accum_steps: int = 1,
               ema_decay: float = 0.0, freeze_bn: bool = False, trainable: str | None = None,
               class_weights: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on a global batch; returns the new state and step metrics.

  With `grad_accum_steps` = k > 1 the batch is split into k micro-batches that run
  one after another (lax.scan): activations of only one micro-batch are live, the
  gradients are averaged, and BatchNorm statistics update once per micro-batch.
  With `freeze_bn` the model runs in inference mode while training: BatchNorm
  uses and keeps its running statistics (dropout and stochastic depth are off
  too, since one `train` flag drives both). With `trainable` (a regex over
  '/'-joined parameter paths, e.g. 'head/.*') every other parameter is behind
  stop_gradient: no gradient is computed for it (a frozen backbone costs only its
  forward pass) and the optimizer must leave it alone (`optim.freeze_except`).
  With `class_weights` ([num_classes], config.data.balance='loss') each example's
  loss is scaled by its class's weight (soft labels: the label-weighted mean).
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, batch_stats, micro, micro_rng):
    if trainable is not None:
      params = stop_gradient_except(params, trainable)
    logits, new_stats = _forward(model, params, batch_stats, micro["image"], micro_rng,
                                 not freeze_bn)
    per_example = cross_entropy(logits, micro["label"], num_classes, label_smoothing)
    if class_weights is not None:
      per_example = per_example * example_weights(micro["label"], class_weights)
    loss = jnp.mean(per_example)
    return loss, (new_stats, logits)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (loss, (batch_stats, logits)), grads = grad_fn(state.params, state.batch_stats, batch, rng)
    correct = _top1_correct(logits, batch["label"])
  else:
    k = grad_accum_steps
    micro_batches = jax.tree_util.tree_map(
        lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)

    def body(carry, xs):
      grads_sum, loss_sum, correct_sum, stats = carry
      micro, i = xs
      (loss, (stats, logits)), grads = grad_fn(state.params, stats, micro,
                                               jax.random.fold_in(rng, i))
      grads_sum = jax.tree_util.tree_map(jnp.add, grads_sum, grads)
      return (grads_sum, loss_sum + loss, correct_sum + _top1_correct(logits, micro["label"]),
              stats), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    (grads, loss, correct, batch_stats), _ = jax.lax.scan(
        body, (zeros, 0.0, 0.0, state.batch_stats), (micro_batches, jnp.arange(k)))
    grads = jax.tree_util.tree_map(lambda g: g / k, grads)
    loss = loss / k

  new_state = apply_gradients(state, grads, loss, batch_stats, tx=tx, ema_decay=ema_decay)
  metrics = {"loss": loss, "accuracy": correct / batch["label"].shape[0],
             "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step)}
  return new_state, metrics


def example_weights(labels: jax.Array, class_weights: Any) -> jax.Array:
  """[N] weights of integer or soft labels under per-class `class_weights` [C]."""
  class_weights = jnp.asarray(class_weights, jnp.float32)
  if labels.ndim == 2:
    return labels.astype(jnp.float32) @ class_weights
  return class_weights[labels]


def trainable_mask(params: Any, trainable: str) -> Any:
  """A bool tree: True where the '/'-joined path of a parameter fully matches `trainable`."""
  pattern = re.compile(trainable)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(pattern.fullmatch("/".join(str(getattr(k, "key", k)) for k in path))),
      params)


def stop_gradient_except(params: Any, trainable: str) -> Any:
  """`params` with jax.lax.stop_gradient on every parameter that `trainable` does not match."""
  return jax.tree_util.tree_map(lambda p, t: p if t else jax.lax.stop_gradient(p), params,
                                trainable_mask(params, trainable))


def paired_views(batch: dict[str, jax.Array], step_name: str) -> tuple[int, jax.Array]:
  """(B, the 2B views as one batch) of a two-view batch (SimCLR, BYOL, DINO's global crops).

  batch['image'] is (B, 2, H, W, C); the views come image-major: img0 view1, img0
  view2, img1 view1, ...

  Raises:
    ValueError: the images are not (B, 2, H, W, C).
  """
  images = batch["image"]
  if images.ndim != 5 or images.shape[1] != 2:
    raise ValueError(f"{step_name}: batch['image'] must be (B, 2, H, W, C), got "
                     f"{images.shape}.")
  b = images.shape[0]
  return b, images.reshape((2 * b,) + images.shape[2:])


def apply_gradients(state: TrainState, grads: Any, loss: jax.Array, batch_stats: Any, *,
                    tx: optax.GradientTransformation, ema_decay: float) -> TrainState:
  """The end of every recipe's step: optimizer update, EMA, NaN bookkeeping, step + 1."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
  first_bad = jnp.where((state.first_nonfinite_step < 0) & ~jnp.isfinite(loss), state.step,
                        state.first_nonfinite_step)
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state, ema_params=ema, first_nonfinite_step=first_bad)


def _top1_correct(logits, labels):
  if labels.ndim == logits.ndim:
    labels = jnp.argmax(labels, -1)
  return jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def eval_step(params: Any, batch_stats: Any, batch: dict[str, jax.Array], *, model: nn.Module,
              num_classes: int) -> dict[str, jax.Array]:
  """Sums of loss, top-1 and top-5 hits over the real (mask=1) examples of a batch, plus
  per-class sums [num_classes] of examples ('class_count') and top-1 hits ('class_top1')."""
  variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
  logits = model.apply(variables, batch["image"], train=False)
  labels = batch["label"]
  mask = batch.get("mask", jnp.ones(labels.shape[:1], bool)).astype(jnp.float32)
  loss = cross_entropy(logits, labels, num_classes)
  top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
  hit5 = jnp.any(top5 == labels[:, None], axis=-1)
  hit1 = jnp.argmax(logits, -1) == labels
  # Per-class sums by segment (not a [N, num_classes] one-hot: 21k-class heads evaluate too).
  by_class = functools.partial(jax.ops.segment_sum, segment_ids=labels, num_segments=num_classes)
  return {"loss": jnp.sum(loss * mask), "top1": jnp.sum(hit1 * mask),
          "top5": jnp.sum(hit5 * mask), "count": jnp.sum(mask),
          "class_count": by_class(mask.astype(jnp.float32)),
          "class_top1": by_class((hit1 * mask).astype(jnp.float32))}
