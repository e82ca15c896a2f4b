"""Probes of a frozen representation: weighted k-NN, linear probe and few-shot ridge.

One evaluation for every encoder (supervised, SimCLR, DINO, MAE, BYOL, pretrained
tags): features are computed once by a frozen feature function, then

- `knn_accuracy`: weighted k-NN as DINO evaluates (Caron et al. 2021, after Wu et
  al. 2018): cosine similarity between L2-normalised features, the k nearest
  training features vote for their label with weight exp(similarity / T);
  defaults k=20, T=0.07.
- `linear_probe`: multinomial logistic regression on the frozen features, fitted
  to convergence by full-batch L-BFGS (jitted), with an L2 penalty on the weights.
  `standardize=True` is MAE's linear-probing head (a BatchNorm without affine
  parameters before the linear layer): at evaluation that BatchNorm divides by the
  training set's statistics, which is what standardising with them does.
- `fewshot_accuracy`: big_vision's few-shot linear protocol: for each of 1, 5, 10
  and 25 examples per class, closed-form ridge regression onto +-1 one-hot
  targets from that many training examples per class, test accuracy averaged
  over several random draws (seeds).

`probe_metrics` runs a chosen set on (features, labels) pairs; `extract_features`
turns images (arrays, or a dataset's eval batches) into features in fixed-size
jitted batches. Recipes call `probe_metrics` at `eval_every_*`, and
`tools/evaluate.py --probe` runs it on any checkpoint or pretrained tag
(docs/self_supervised.md).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

PROBES = ("knn", "linear", "fewshot")
KNN_K = 20
KNN_TEMPERATURE = 0.07
FEWSHOT_SHOTS = (1, 5, 10, 25)
FEWSHOT_SEEDS = 3
# big_vision's few-shot evaluator regularises its least-squares fit with 2**10 by default.
FEWSHOT_L2 = 2.0 ** 10
LINEAR_L2 = 1e-4
# MAE's BatchNorm1d(affine=False, eps=1e-6) in front of the linear-probe classifier.
BN_EPS = 1e-6


class ProbeError(ValueError):
  """Features or labels a probe cannot use; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------
# Input checks.


def _as_features(train_x: Any, train_y: Any, test_x: Any, test_y: Any, where: str,
                 num_classes: Optional[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                      np.ndarray, int]:
  train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
    raise ProbeError(f"{where}: features must be (examples, dims) with the same dims on both "
                     f"sides, got {train_x.shape} and {test_x.shape}; flatten or pool them first.")
  if train_y.shape != train_x.shape[:1] or test_y.shape != test_x.shape[:1]:
    raise ProbeError(f"{where}: {train_y.shape} / {test_y.shape} labels for {len(train_x)} / "
                     f"{len(test_x)} feature rows; give one integer label per row.")
  if not len(train_x) or not len(test_x):
    raise ProbeError(f"{where}: empty train ({len(train_x)}) or test ({len(test_x)}) set.")
  if not (np.issubdtype(train_y.dtype, np.integer) and np.issubdtype(test_y.dtype, np.integer)):
    raise ProbeError(f"{where}: labels must be integers, got {train_y.dtype} and {test_y.dtype}.")
  top = int(max(train_y.max(), test_y.max()))
  if min(train_y.min(), test_y.min()) < 0:
    raise ProbeError(f"{where}: negative labels; labels are class indices 0..num_classes-1.")
  if num_classes is None:
    num_classes = top + 1
  elif top >= num_classes:
    raise ProbeError(f"{where}: label {top} with num_classes={num_classes}; raise num_classes.")
  if not (np.all(np.isfinite(train_x)) and np.all(np.isfinite(test_x))):
    raise ProbeError(f"{where}: the features hold NaN or inf; the encoder diverged or its "
                     "weights did not load.")
  return train_x, train_y.astype(np.int32), test_x, test_y.astype(np.int32), int(num_classes)


def l2_normalize(x: jax.Array) -> jax.Array:
  """Rows scaled to unit L2 norm (float32; an all-zero row stays zero)."""
  x = jnp.asarray(x, jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


# ---------------------------------------------------------------------------------------------
# Weighted k-NN.


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_votes(train, train_labels, queries, temperature, *, k, num_classes):
  sims = jnp.matmul(queries, train.T, precision=jax.lax.Precision.HIGHEST)
  top_sims, top_idx = jax.lax.top_k(sims, k)
  # exp(s / T) shifted per row by its largest term: the shares below are unchanged and the
  # exponent cannot overflow at small temperatures.
  weights = jnp.exp((top_sims - top_sims[:, :1]) / temperature)
  votes = jnp.sum(jax.nn.one_hot(train_labels[top_idx], num_classes) * weights[..., None], axis=1)
  return votes / jnp.sum(votes, axis=-1, keepdims=True)


def knn_scores(train_x: Any, train_y: Any, test_x: Any, *, k: int = KNN_K,
               temperature: float = KNN_TEMPERATURE, num_classes: Optional[int] = None,
               chunk_size: int = 1024) -> np.ndarray:
  """Each test row's share of the weighted votes per class (rows sum to 1).

  Args:
    train_x: (N, D) features of the labelled set.
    train_y: (N,) integer labels.
    test_x: (M, D) features to classify.
    k: neighbours (clipped to N).
    temperature: T of the vote weights exp(cosine similarity / T).
    num_classes: classes; default max label + 1.
    chunk_size: test rows per similarity block (memory: chunk_size x N floats).

  Returns:
    (M, num_classes) float32 vote shares; the prediction is their argmax.
  """
  if k < 1 or temperature <= 0:
    raise ProbeError(f"knn: k={k} and temperature={temperature} must both be > 0.")
  train_x, train_y, test_x, _, num_classes = _as_features(
      train_x, train_y, test_x, np.zeros(len(np.asarray(test_x)), np.int32), "knn", num_classes)
  train = l2_normalize(train_x)
  test = l2_normalize(test_x)
  k = min(int(k), train.shape[0])
  m = test.shape[0]
  chunk = min(int(chunk_size), m)
  padded = jnp.pad(test, ((0, (-m) % chunk), (0, 0)))  # one compiled shape for every chunk
  out = [_knn_votes(train, jnp.asarray(train_y), padded[i:i + chunk], float(temperature), k=k,
                    num_classes=num_classes)
         for i in range(0, padded.shape[0], chunk)]
  return np.asarray(jnp.concatenate(out))[:m]


def knn_accuracy(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *, k: int = KNN_K,
                 temperature: float = KNN_TEMPERATURE, num_classes: Optional[int] = None,
                 chunk_size: int = 1024) -> float:
  """Top-1 accuracy of the weighted k-NN (`knn_scores`) on the test set."""
  scores = knn_scores(train_x, train_y, test_x, k=k, temperature=temperature,
                      num_classes=num_classes, chunk_size=chunk_size)
  return float(np.mean(scores.argmax(-1) == np.asarray(test_y)))


# ---------------------------------------------------------------------------------------------
# Linear probe: multinomial logistic regression, full-batch L-BFGS.


def standardize(train_x: Any, *others: Any, eps: float = BN_EPS) -> tuple[jax.Array, ...]:
  """(x - mean) / sqrt(var + eps) with the training rows' statistics, for every input.

  This is MAE's BatchNorm-without-affine head at evaluation time, with the running
  statistics equal to the training set's.
  """
  train_x = jnp.asarray(train_x, jnp.float32)
  mean = jnp.mean(train_x, axis=0)
  scale = jax.lax.rsqrt(jnp.var(train_x, axis=0) + eps)
  return tuple((jnp.asarray(x, jnp.float32) - mean) * scale for x in (train_x, *others))


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def _fit_logistic(x, y, l2, tol, *, num_classes, max_iter):
  d = x.shape[1]
  params = {"kernel": jnp.zeros((d, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}
  targets = jax.nn.one_hot(y, num_classes)

  def objective(p):
    logits = jnp.matmul(x, p["kernel"], precision=jax.lax.Precision.HIGHEST) + p["bias"]
    return (jnp.mean(optax.softmax_cross_entropy(logits, targets))
            + 0.5 * l2 * jnp.sum(p["kernel"] ** 2))

  solver = optax.lbfgs()  # with its zoom line search (strong Wolfe conditions)
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=objective)
    return optax.apply_updates(p, updates), state

  def keep_going(carry):
    _, state = carry
    count = optax.tree_utils.tree_get(state, "count")
    grad = optax.tree_utils.tree_get(state, "grad")
    return (count == 0) | ((count < max_iter) & (optax.tree_utils.tree_norm(grad) >= tol))

  params, state = jax.lax.while_loop(keep_going, step, (params, solver.init(params)))
  return params, optax.tree_utils.tree_get(state, "count")


def fit_logistic(train_x: Any, train_y: Any, *, num_classes: int, l2: float = LINEAR_L2,
                 max_iter: int = 1000, tol: float = 1e-6) -> dict[str, jax.Array]:
  """Multinomial logistic regression: min mean cross-entropy + l2 / 2 * |kernel|^2.

  The bias is not penalised. This is scikit-learn's `LogisticRegression(C=1 / (l2 *
  N))` objective (its loss is the sum over the N rows), solved the same way (L-BFGS),
  here jitted as one XLA while-loop.

  Args:
    train_x: (N, D) features.
    train_y: (N,) integer labels.
    num_classes: classes.
    l2: weight of the kernel penalty.
    max_iter: L-BFGS iterations at most.
    tol: stop when the gradient's L2 norm falls below this.

  Returns:
    {'kernel': (D, num_classes), 'bias': (num_classes,)}.
  """
  params, _ = _fit_logistic(jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32),
                            float(l2), float(tol), num_classes=int(num_classes),
                            max_iter=int(max_iter))
  return params


def linear_probe(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *,
                 l2: float = LINEAR_L2, standardize_features: bool = True,
                 num_classes: Optional[int] = None, max_iter: int = 1000,
                 tol: float = 1e-6) -> float:
  """Top-1 test accuracy of `fit_logistic` on frozen features.

  Args:
    train_x, train_y, test_x, test_y: features (rows) and integer labels.
    l2: kernel penalty (see `fit_logistic`).
    standardize_features: MAE's BatchNorm-without-affine head (`standardize`);
      False fits on the raw features.
    num_classes: classes; default max label + 1.
    max_iter, tol: L-BFGS stopping rule.

  Returns:
    Top-1 accuracy in [0, 1].
  """
  if l2 < 0:
    raise ProbeError(f"linear probe: l2={l2} must be >= 0.")
  train_x, train_y, test_x, test_y, num_classes = _as_features(
      train_x, train_y, test_x, test_y, "linear probe", num_classes)
  if standardize_features:
    train_x, test_x = standardize(train_x, test_x)
  params = fit_logistic(train_x, train_y, num_classes=num_classes, l2=l2, max_iter=max_iter,
                        tol=tol)
  logits = jnp.asarray(test_x) @ params["kernel"] + params["bias"]
  return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == test_y))


# ---------------------------------------------------------------------------------------------
# Few-shot linear: closed-form ridge regression.


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _fit_ridge(x, y, l2, *, num_classes):
  targets = 2.0 * jax.nn.one_hot(y, num_classes) - 1.0  # +1 for the class, -1 elsewhere
  x_mean, t_mean = jnp.mean(x, axis=0), jnp.mean(targets, axis=0)
  xc, tc = x - x_mean, targets - t_mean
  n, d = x.shape
  hi = jax.lax.Precision.HIGHEST
  if n < d:  # few shots: the n x n (dual) system is the small one
    gram = jnp.matmul(xc, xc.T, precision=hi) + l2 * jnp.eye(n)
    kernel = jnp.matmul(xc.T, jnp.linalg.solve(gram, tc), precision=hi)
  else:
    gram = jnp.matmul(xc.T, xc, precision=hi) + l2 * jnp.eye(d)
    kernel = jnp.linalg.solve(gram, jnp.matmul(xc.T, tc, precision=hi))
  return {"kernel": kernel, "bias": t_mean - jnp.matmul(x_mean, kernel, precision=hi)}


def fit_ridge(train_x: Any, train_y: Any, *, num_classes: int, l2: float = FEWSHOT_L2
              ) -> dict[str, jax.Array]:
  """Ridge regression onto +-1 one-hot targets, with an unpenalised intercept.

  min |X W + b - T|^2 + l2 |W|^2 with T = 2 one_hot(y) - 1: scikit-learn's
  `RidgeClassifier(alpha=l2)`; solved in closed form (through the n x n system
  when there are fewer rows than dims, as in few-shot).

  Returns:
    {'kernel': (D, num_classes), 'bias': (num_classes,)}; predict with the argmax.
  """
  return _fit_ridge(jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32),
                    float(l2), num_classes=int(num_classes))


def fewshot_indices(train_y: np.ndarray, shots: int, seed: int, num_classes: int) -> np.ndarray:
  """`shots` distinct training rows per class, drawn at random with `seed`."""
  rng = np.random.default_rng(seed)
  picked = []
  for c in range(num_classes):
    rows = np.flatnonzero(train_y == c)
    if len(rows) < shots:
      raise ProbeError(f"fewshot: class {c} has {len(rows)} training examples, fewer than "
                       f"{shots} shots; drop that shot count (shots=...) or the class.")
    picked.append(rng.choice(rows, size=shots, replace=False))
  return np.concatenate(picked)


def fewshot_accuracy(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *,
                     shots: Sequence[int] = FEWSHOT_SHOTS, seeds: int = FEWSHOT_SEEDS,
                     l2: float = FEWSHOT_L2, num_classes: Optional[int] = None
                     ) -> dict[str, float]:
  """big_vision's few-shot linear evaluation: ridge regression on n examples per class.

  Args:
    train_x, train_y: the pool the shots are drawn from (features, integer labels).
    test_x, test_y: the evaluation set.
    shots: examples per class (1, 5, 10, 25 by default).
    seeds: random draws per shot count; the accuracy is their mean.
    l2: ridge penalty (`fit_ridge`).
    num_classes: classes; default max label + 1.

  Returns:
    {'fewshot_{n}shot': mean top-1, 'fewshot_{n}shot_std': spread over the draws}.
  """
  if seeds < 1 or l2 <= 0 or not shots or min(shots) < 1:
    raise ProbeError(f"fewshot: shots={tuple(shots)}, seeds={seeds} and l2={l2} must all be "
                     "positive.")
  train_x, train_y, test_x, test_y, num_classes = _as_features(
      train_x, train_y, test_x, test_y, "fewshot", num_classes)
  test = jnp.asarray(test_x)
  out = {}
  for n in shots:
    accuracies = []
    for seed in range(seeds):
      rows = fewshot_indices(train_y, int(n), seed, num_classes)
      params = fit_ridge(train_x[rows], train_y[rows], num_classes=num_classes, l2=l2)
      predictions = np.asarray(jnp.argmax(test @ params["kernel"] + params["bias"], -1))
      accuracies.append(float(np.mean(predictions == test_y)))
    out[f"fewshot_{n}shot"] = float(np.mean(accuracies))
    out[f"fewshot_{n}shot_std"] = float(np.std(accuracies))
  return out


# ---------------------------------------------------------------------------------------------
# Features and the one entry point.


def extract_features(feature_fn: Callable[[jax.Array], jax.Array], images: Any,
                     batch_size: int = 256) -> np.ndarray:
  """Features of an image array in fixed-size batches (one compile; the tail is padded).

  Args:
    feature_fn: images (B, H, W, C) -> features (B, D); jit it once outside.
    images: (N, H, W, C) array.
    batch_size: images per call.

  Returns:
    (N, D) float32 features.
  """
  images = np.asarray(images)
  n = len(images)
  out = []
  for i in range(0, n, batch_size):
    batch = images[i:i + batch_size]
    pad = batch_size - len(batch) if n > batch_size else 0
    if pad:
      batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
    out.append(np.asarray(feature_fn(batch), np.float32)[:len(batch) - pad])
  return np.concatenate(out)


def features_of_batches(feature_fn: Callable[[jax.Array], jax.Array],
                        batches: Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
  """(features, labels) of batches with 'image', 'label' and an optional 'mask' (padding
  rows, as a dataset's `eval_iterator` yields them), the masked rows left out."""
  features, labels = [], []
  for batch in batches:
    f = np.asarray(feature_fn(batch["image"]), np.float32)
    y = np.asarray(batch["label"])
    mask = np.asarray(batch.get("mask", np.ones(len(y), bool)), bool)
    features.append(f[mask])
    labels.append(y[mask])
  if not features:
    raise ProbeError("features_of_batches: the dataset yielded no batch; check its split.")
  return np.concatenate(features), np.concatenate(labels)


def probe_metrics(train: tuple[Any, Any], test: tuple[Any, Any],
                  probes: Sequence[str] = PROBES, *, num_classes: Optional[int] = None,
                  knn: Optional[Mapping[str, Any]] = None,
                  linear: Optional[Mapping[str, Any]] = None,
                  fewshot: Optional[Mapping[str, Any]] = None) -> dict[str, float]:
  """The chosen probes on (features, labels) of a train (memory) and a test split.

  This is what recipes call at `eval_every_*` (usually k-NN at every eval and all
  three at the final one) and what `tools/evaluate.py --probe` prints.

  Args:
    train: (features, labels) the probes learn from.
    test: (features, labels) they are scored on.
    probes: any of 'knn', 'linear', 'fewshot'.
    num_classes: classes; default max label + 1.
    knn: `knn_accuracy` options (k, temperature).
    linear: `linear_probe` options (l2, standardize_features, max_iter, tol).
    fewshot: `fewshot_accuracy` options (shots, seeds, l2).

  Returns:
    {'knn_top1', 'linear_top1', 'fewshot_{n}shot', 'fewshot_{n}shot_std', ...} for the
    probes asked, and 'probe_count' (test rows).
  """
  unknown = sorted(set(probes) - set(PROBES))
  if unknown or not probes:
    raise ProbeError(f"unknown probe(s) {unknown or list(probes)}; choose from {list(PROBES)}.")
  out: dict[str, float] = {"probe_count": float(len(test[1]))}
  if "knn" in probes:
    out["knn_top1"] = knn_accuracy(*train, *test, num_classes=num_classes, **dict(knn or {}))
  if "linear" in probes:
    out["linear_top1"] = linear_probe(*train, *test, num_classes=num_classes,
                                      **dict(linear or {}))
  if "fewshot" in probes:
    out.update(fewshot_accuracy(*train, *test, num_classes=num_classes, **dict(fewshot or {})))
  return out


# What a recipe runs when its config has no `probes` block: the cheap k-NN at every eval,
# all three probes at the final one.
DEFAULT_EVERY = ("knn",)
DEFAULT_FINAL = PROBES


def probes_from_config(train: tuple[Any, Any], test: tuple[Any, Any],
                       config: Optional[Mapping[str, Any]], num_classes: Optional[int],
                       final: bool) -> dict[str, float]:
  """`probe_metrics` as a recipe's eval calls it at `eval_every_*`, set by a config block.

  Args:
    train, test: (features, labels) of the memory (training) split and the eval split.
    config: e.g. config.probes, a mapping with any of 'every' (probes at every eval,
      default ('knn',)), 'final' (at the last eval, default all three), and the
      options 'knn', 'linear', 'fewshot' of `probe_metrics`; None: the defaults.
    num_classes: classes of the dataset.
    final: whether this is the run's last evaluation.

  Returns:
    The metrics of `probe_metrics`.
  """
  config = dict(config or {})
  unknown = sorted(set(config) - {"every", "final", "knn", "linear", "fewshot"})
  if unknown:
    raise ProbeError(f"config.probes has unknown key(s) {unknown}; it takes 'every', 'final', "
                     "'knn', 'linear' and 'fewshot'.")
  chosen = config.get("final", DEFAULT_FINAL) if final else config.get("every", DEFAULT_EVERY)
  if not chosen:
    return {}
  return probe_metrics(train, test, tuple(chosen), num_classes=num_classes,
                       knn=config.get("knn"), linear=config.get("linear"),
                       fewshot=config.get("fewshot"))
