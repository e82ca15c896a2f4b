"""SimCLR (Chen et al. 2020, arXiv:2002.05709): model, NT-Xent loss, train step, monitors.

Pieces, in the style of `steps.py` (pure module-level functions, every
dependency a keyword argument, so the trainer binds them with functools.partial
and jits them over the 'data' mesh):

- `SimCLRModel`: encoder f(.) (any registered model built with num_classes=0)
  followed by a `ProjectionHead` g(.). Parameters live under
  `params['encoder']` and `params['head']`.
- `nt_xent_loss`: the normalised-temperature cross-entropy of the paper (eq. 1),
  averaged over all 2N views.
- `simclr_train_step`: one optimizer update on a batch of image pairs.
- `simclr_features`: frozen encoder features (eval-mode BN) for the monitors.
- `knn_accuracy`, `linear_eval`: the usual representation-quality monitors.

Global negatives and global BatchNorm. Under jit the batch is one global array
sharded over the 'data' axis, so `z @ z.T` in the loss is the similarity of
every view with every view of the GLOBAL batch (XLA gathers the projections:
2N x out_dim floats), and the BatchNorm statistics of encoder and head are over
all 2N views, as with SimCLR's cross-replica ("global") BN. Nothing here is
per-device; the results do not depend on the number of devices (tested).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vision_jax.config_base import SIMCLR_DEFAULTS
from vision_jax.models.heads import ProjectionHead
from vision_jax.train import steps
from vision_jax.train.steps import TrainState

# Added to the self-similarity logits so that a view is never its own candidate.
_SELF_MASK = -1e9


class SimCLRModel(nn.Module):
  """Encoder plus projection head.

  Attributes:
    encoder: a feature extractor, e.g.
      `vision_jax.models.create_model('cifar_resnet20', num_classes=0)`; it must
      accept `(images, train=bool)` and return (batch, features).
    head: the projection head applied to the encoder features.
  """

  encoder: nn.Module
  head: ProjectionHead

  def __call__(self, images: jax.Array, train: bool, features_only: bool = False) -> jax.Array:
    """Projections z = g(f(x)), or the encoder features h = f(x).

    Args:
      images: (batch, height, width, channels) NHWC images (one view each).
      train: BatchNorm uses batch statistics (pass mutable=['batch_stats']) and
        dropout/stochastic depth of the encoder are active (with a 'dropout' rng).
      features_only: return h = f(x) (float32) and skip the head, for linear
        evaluation and kNN. The head's parameters are only created by a call
        without it (as `init` does by default).

    Returns:
      (batch, head.out_dim) float32 projections, or (batch, features) float32 features.
    """
    features = self.encoder(images, train=train)
    if features_only:
      return features.astype(jnp.float32)
    return self.head(features, train=train)

  def features(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Encoder features h = f(x) in float32 (use with `apply(..., method='features')`)."""
    return self.encoder(images, train=train).astype(jnp.float32)


def _nt_xent_terms(z1: jax.Array, z2: jax.Array, temperature: float
                   ) -> tuple[jax.Array, jax.Array]:
  """NT-Xent loss and contrastive top-1 accuracy over the 2N views (float32)."""
  if z1.shape != z2.shape or z1.ndim != 2:
    raise ValueError(f"nt_xent_loss: z1 and z2 must both be (N, D); got {z1.shape} and {z2.shape}.")
  n = z1.shape[0]
  z = jnp.concatenate([z1, z2], axis=0).astype(jnp.float32)  # (2N, D): views 1, then views 2
  # l2-normalise; the floor only matters for an all-zero row (as F.normalize / tf.math.l2_normalize).
  z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-24))
  logits = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST) / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), _SELF_MASK, logits)
  positive = (jnp.arange(2 * n) + n) % (2 * n)  # view i of pair k pairs with the other view
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.mean(jnp.take_along_axis(log_probs, positive[:, None], axis=-1))
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == positive).astype(jnp.float32))
  return loss, accuracy


def nt_xent_loss(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
  """Normalised-temperature cross-entropy (SimCLR eq. 1), mean over the 2N views.

  With u = l2-normalised projections, for each of the 2N views i the logits are
  sim(i, j) / temperature over the 2N - 1 views j != i; the target is i's other
  view, so the other 2N - 2 views are the negatives. All of them come from the
  whole (global) batch. Computed in float32.

  Note: the paper's L is this mean; the authors' TF code returns the sum of
  the two directional means, which is 2x this value.

  Args:
    z1: (N, D) projections of the first views.
    z2: (N, D) projections of the second views; z2[k] is the positive of z1[k].
    temperature: tau > 0 (0.1 - 0.5 in the paper; 0.5 for CIFAR-10, 0.1 for ImageNet).

  Returns:
    The scalar loss.
  """
  return _nt_xent_terms(z1, z2, temperature)[0]


def simclr_train_step(state: TrainState, batch: dict[str, jax.Array], *, model: SimCLRModel,
                      tx: optax.GradientTransformation, schedule: Callable[[Any], Any],
                      temperature: float, ema_decay: float = 0.0
                      ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update of SimCLR on a global batch of image pairs.

  Both views go through the model in ONE forward call on the 2B images, so the
  BatchNorm statistics (encoder and head) are over both views of the whole
  global batch. The two views of an image are kept next to each other
  ((B, 2, ...) -> (2B, ...) is a reshape), so a batch sharded on its first axis
  stays sharded without any data movement before the forward pass.

  Gradient accumulation is deliberately not offered: splitting the batch would
  shrink the set of negatives and the BN batch.

  Args:
    state: `steps.TrainState` whose params/batch_stats are those of `model`.
    batch: {'image': (B, 2, H, W, C)}: image k's two augmented views are
      batch['image'][k, 0] and batch['image'][k, 1]. Other keys (e.g. 'label')
      are ignored.
    model: the `SimCLRModel`.
    tx: optimizer (LARS in the paper: `optim.make_optimizer` with name 'lars').
    schedule: learning-rate schedule, for the metric only.
    temperature: NT-Xent temperature.
    ema_decay: decay of `state.ema_params` when the state has them.

  Returns:
    The new state and metrics: loss, contrastive_accuracy (fraction of the 2B
    views whose positive has the highest similarity among the 2B - 1
    candidates), grad_norm, learning_rate.
  """
  b, views = steps.paired_views(batch, "simclr_train_step")
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    variables = {"params": params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
      z, updates = model.apply(variables, views, train=True, rngs={"dropout": rng},
                               mutable=["batch_stats"])
      new_stats = updates["batch_stats"]
    else:
      z, new_stats = model.apply(variables, views, train=True, rngs={"dropout": rng}), {}
    z = z.reshape((b, 2) + z.shape[1:])
    loss, accuracy = _nt_xent_terms(z[:, 0], z[:, 1], temperature)
    return loss, (new_stats, accuracy)

  (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = steps.apply_gradients(state, grads, loss, batch_stats, tx=tx, ema_decay=ema_decay)
  metrics = {"loss": loss, "contrastive_accuracy": accuracy,
             "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step)}
  return new_state, metrics


def simclr_features(params: Any, batch_stats: Any, images: jax.Array, *,
                    model: SimCLRModel) -> jax.Array:
  """Frozen encoder features (eval-mode BatchNorm, float32) of (batch, H, W, C) images."""
  variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
  features = model.apply(variables, images, train=False, features_only=True)
  return jax.lax.stop_gradient(features)


def _l2_normalise(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_predict(train_features, train_labels, queries, *, k, num_classes, temperature):
  sims = jnp.matmul(queries, train_features.T, precision=jax.lax.Precision.HIGHEST)
  top_sims, top_idx = jax.lax.top_k(sims, k)
  # exp(s / T), shifted per row by its largest term (same argmax, no overflow).
  weights = jnp.exp((top_sims - top_sims[:, :1]) / temperature)
  votes = jnp.sum(jax.nn.one_hot(train_labels[top_idx], num_classes) * weights[..., None], axis=1)
  return jnp.argmax(votes, axis=-1)


def knn_accuracy(train_features: Any, train_labels: Any, test_features: Any, test_labels: Any,
                 k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
                 chunk_size: int = 1024) -> float:
  """Weighted kNN top-1 accuracy on cosine similarity (Wu et al. 2018, InstDisc).

  Each test feature votes with its k most cosine-similar train features, neighbour
  j weighing exp(sim_j / temperature) for its label; the class with the most
  weight wins.

  Args:
    train_features: (N, D) features of the labelled (memory-bank) set.
    train_labels: (N,) integer labels.
    test_features: (M, D) features to classify.
    test_labels: (M,) integer labels.
    k: number of neighbours (clipped to N).
    temperature: vote temperature (0.07 in InstDisc; 0.1 - 0.5 also common).
    num_classes: number of classes; default max label + 1.
    chunk_size: test features per similarity block (memory: chunk_size x N floats).

  Returns:
    Top-1 accuracy in [0, 1] as a Python float.
  """
  train = _l2_normalise(jnp.asarray(train_features))
  train_labels = jnp.asarray(train_labels, jnp.int32)
  test = _l2_normalise(jnp.asarray(test_features))
  test_labels = np.asarray(test_labels)
  if num_classes is None:
    num_classes = int(max(int(jnp.max(train_labels)), int(test_labels.max()))) + 1
  k = min(int(k), train.shape[0])
  m = test.shape[0]
  chunk = min(chunk_size, m)
  padded = jnp.pad(test, ((0, (-m) % chunk), (0, 0)))  # one compiled shape for every chunk
  preds = [
      _knn_predict(train, train_labels, padded[i:i + chunk], k=k, num_classes=num_classes,
                   temperature=temperature)
      for i in range(0, padded.shape[0], chunk)
  ]
  preds = np.asarray(jnp.concatenate(preds))[:m]
  return float(np.mean(preds == test_labels))


def linear_eval(train_features: Any, train_labels: Any, test_features: Any, test_labels: Any,
                *, num_classes: int | None = None, num_steps: int = 1000,
                learning_rate: float = 1e-2, weight_decay: float = 0.0,
                batch_size: int = 4096, normalize: bool = True, seed: int = 0) -> float:
  """Test accuracy of a linear (softmax) classifier trained on frozen features.

  The classifier is trained with optax AdamW on the softmax cross-entropy (no
  gradient reaches the features: they are inputs, and stop_gradient makes that
  explicit). With `normalize` the features are standardised with the train
  set's per-dimension mean and std first. Each step uses the whole train set
  when it has at most `batch_size` examples, else a batch of that size drawn
  uniformly with replacement.

  Args:
    train_features: (N, D) frozen features of the train split.
    train_labels: (N,) integer labels.
    test_features: (M, D) frozen features of the test split.
    test_labels: (M,) integer labels.
    num_classes: number of classes; default max label + 1.
    num_steps: optimizer steps.
    learning_rate: AdamW peak learning rate (cosine-decayed to 0).
    weight_decay: AdamW decoupled weight decay on the kernel.
    batch_size: examples per step.
    normalize: standardise the features with train statistics.
    seed: seed of the batch sampling.

  Returns:
    Top-1 test accuracy in [0, 1] as a Python float.
  """
  x_train = jax.lax.stop_gradient(jnp.asarray(train_features, jnp.float32))
  x_test = jax.lax.stop_gradient(jnp.asarray(test_features, jnp.float32))
  y_train = jnp.asarray(train_labels, jnp.int32)
  y_test = np.asarray(test_labels)
  if num_classes is None:
    num_classes = int(max(int(jnp.max(y_train)), int(y_test.max()))) + 1
  if normalize:
    mean = jnp.mean(x_train, axis=0)
    std = jnp.std(x_train, axis=0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
  weights = _fit_linear(x_train, y_train, jax.random.key(seed), num_classes=num_classes,
                        num_steps=int(num_steps), learning_rate=float(learning_rate),
                        weight_decay=float(weight_decay),
                        batch_size=min(int(batch_size), x_train.shape[0]))
  logits = x_test @ weights["kernel"] + weights["bias"]
  return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == y_test))


@functools.partial(jax.jit, static_argnames=("num_classes", "num_steps", "batch_size"))
def _fit_linear(x, y, rng, *, num_classes, num_steps, learning_rate, weight_decay, batch_size):
  n, d = x.shape
  params = {"kernel": jnp.zeros((d, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}
  tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, num_steps), weight_decay=weight_decay,
                   mask={"kernel": True, "bias": False})
  targets = jax.nn.one_hot(y, num_classes)

  def loss_fn(p, xb, tb):
    return jnp.mean(optax.softmax_cross_entropy(xb @ p["kernel"] + p["bias"], tb))

  def body(i, carry):
    p, opt_state = carry
    if batch_size < n:
      idx = jax.random.randint(jax.random.fold_in(rng, i), (batch_size,), 0, n)
      xb, tb = x[idx], targets[idx]
    else:
      xb, tb = x, targets
    grads = jax.grad(loss_fn)(p, xb, tb)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  params, _ = jax.lax.fori_loop(0, num_steps, body, (params, tx.init(params)))
  return params


# ---------------------------------------------------------------------------
# Monitors of the SimCLR recipe (vision_jax/train/recipes/simclr.py).
# ---------------------------------------------------------------------------
def extract_features(feature_fn: Callable, params: Any, batch_stats: Any, dataset: Any,
                     batch_size: int, mesh: Any) -> tuple[np.ndarray, np.ndarray]:
  """(features, labels) of one ordered pass over `dataset`'s eval split, padding removed.

  `feature_fn(params, batch_stats, batch) -> (features, labels, mask)` must be
  jitted with replicated outputs, so that every process gets the whole global
  batch back (the kNN and linear monitors then run on each host alike).
  """
  from vision_jax.train import sharding as sharding_lib  # pylint: disable=import-outside-toplevel
  features, labels = [], []
  for batch in dataset.eval_iterator(batch_size, jax.process_index(), jax.process_count()):
    f, y, m = jax.device_get(feature_fn(params, batch_stats,
                                        sharding_lib.make_global_batch(batch, mesh)))
    m = m.astype(bool)
    features.append(f[m])
    labels.append(y[m])
  return np.concatenate(features), np.concatenate(labels)


def feature_step(params: Any, batch_stats: Any, batch: dict[str, jax.Array], *,
                 model: SimCLRModel) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(encoder features, labels, mask) of an eval batch, for `extract_features`."""
  mask = batch.get("mask", jnp.ones(batch["label"].shape[:1], bool))
  return simclr_features(params, batch_stats, batch["image"], model=model), batch["label"], mask


def representation_metrics(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                           config: Any, num_classes: int, linear: bool) -> dict[str, float]:
  """kNN top-1 (and with `linear`, linear-probe top-1) of frozen features; config = config.simclr."""
  knn = {**SIMCLR_DEFAULTS["knn"], **dict(config.get("knn", None) or {})}
  out = {"knn_top1": knn_accuracy(*train, *test, k=int(knn["k"]),
                                  temperature=float(knn["temperature"]),
                                  num_classes=num_classes),
         "eval_count": float(len(test[1]))}
  if linear:
    lin = {**SIMCLR_DEFAULTS["linear"], **dict(config.get("linear", None) or {})}
    out["linear_top1"] = linear_eval(
        *train, *test, num_classes=num_classes, num_steps=int(lin["steps"]),
        learning_rate=float(lin["learning_rate"]), weight_decay=float(lin["weight_decay"]),
        batch_size=int(lin["batch_size"]))
  return out
