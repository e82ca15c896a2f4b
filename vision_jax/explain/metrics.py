"""Can an attribution map be believed? Faithfulness, robustness and localisation scores.

Every metric takes the model (`module`, `variables`), model inputs `images`
[N, H, W, C], one map per image `maps` [N, H, W] at the input's size (an
attribution method's `upsample=True` output, or `maps` with channels [N, H, W, C],
which are summed) and the explained classes `targets` [N] (None: the predicted
ones). Each perturbs the images on the device, all perturbation steps of a
batch in one jitted program, and returns per-image numpy scores.

- `deletion` / `insertion` (Petsiuk et al. 2018, RISE): the target probability
  as pixels are removed (set to a baseline) or inserted (into a baseline) in the
  map's order; the area under that curve over the removed fraction in [0, 1].
  Lower deletion and higher insertion AUC is better.
- `road` (Rong et al. 2022): accuracy when the most (MoRF) or least (LeRF)
  relevant pixels are replaced by noisy linear imputation, which removes the
  information without leaving the sharp-edged hole that the model can read.
- `faithfulness_correlation` (Bhatt et al. 2020): Pearson correlation, over
  random pixel subsets, between the map's sum on the subset and the drop in the
  target score when the subset is set to a baseline.
- `max_sensitivity` (Yeh et al. 2019): the largest relative change of the map
  under uniform input noise of a given radius.
- `pointing_game` (Zhang et al. 2016): is the map's maximum inside the object's
  box or mask?

Definitions follow Quantus (tests/test_explain_metrics.py checks each against
it); where Quantus differs from the papers, the docstring says which we follow.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.explain import common
from vision_jax.explain.gradients import gaussian_blur
from vision_jax.explain.layers import ExplainError

# A metric name -> its summary in the metrics table, and whether higher is better.
SUMMARIES = {
    "deletion": False,
    "insertion": True,
    "road_morf": False,
    "road_lerf": True,
    "faithfulness_correlation": True,
    "max_sensitivity": False,
    "pointing_game": True,
}
METRICS = tuple(SUMMARIES)

# Neighbour weights of ROAD's noisy linear imputation: a removed pixel is the
# weighted mean of its 8 neighbours, the direct ones counting twice the diagonal ones.
_IMPUTATION_KERNEL = np.array([[1, 2, 1], [2, 0, 2], [1, 2, 1]], np.float32) / 12.0


class Curve(NamedTuple):
  """A perturbation curve: `scores` [N, P] at `fractions` [P] of pixels perturbed; `auc` [N]."""

  fractions: np.ndarray
  scores: np.ndarray
  auc: np.ndarray


# --- Input checks: one line naming the problem.


def _check(module, variables, images, maps, targets):
  images = common.check_images(images)
  maps = jnp.asarray(maps, jnp.float32)
  if maps.ndim == 4 and maps.shape == images.shape:
    maps = maps.sum(-1)
  if maps.shape != images.shape[:3]:
    raise ExplainError(f"maps must be one map per image at the input size {images.shape[:3]}, "
                       f"got {maps.shape}; compute them with upsample=True.")
  n_classes = common.num_classes_of(module, variables, images)
  return images, maps, common.check_targets(targets, images.shape[0], n_classes)


def make_baseline(images: jax.Array, baseline: float | str | Any) -> jax.Array:
  """The values perturbed pixels take: a number, one per channel, an image, or 'blur'.

  Raises:
    ExplainError: a baseline of a shape that is not (), (C,), (H, W, C) or (N, H, W, C).
  """
  if isinstance(baseline, str):
    if baseline == "blur":
      # RISE's insertion start: the picture without its detail.
      return gaussian_blur(images, max(images.shape[1:3]) / 20.0 + 0.5)
    raise ExplainError(f"baseline must be a number, an array or 'blur', got {baseline!r}.")
  value = jnp.asarray(baseline, jnp.float32)
  n, h, w, c = images.shape
  if value.shape not in ((), (c,), (h, w, c), (n, h, w, c)):
    raise ExplainError(f"baseline of shape {value.shape} does not fit images {images.shape}: "
                       f"give a number, one value per channel ({c},), an image ({h}, {w}, {c}) "
                       f"or one per image.")
  return jnp.broadcast_to(value, images.shape)


def _ranks(maps: jax.Array) -> jax.Array:
  """[N, H*W] rank of each pixel in the map's order, 0 = most relevant (ties: first index)."""
  flat = maps.reshape(maps.shape[0], -1)
  order = jnp.argsort(-flat, axis=1, stable=True)
  return jnp.argsort(order, axis=1, stable=True)


def _scores(module, variables, images, targets, softmax: bool):
  logits = module.apply(variables, images, train=False)
  values = jax.nn.softmax(logits) if softmax else logits
  return jnp.take_along_axis(values, targets[:, None], axis=1)[:, 0], logits


# --- Deletion and insertion.


# `insert` is traced, not static: deletion and insertion share one compiled program.
@functools.partial(jax.jit, static_argnames=("module", "counts", "softmax"))
def _flip_curve(module, variables, images, baseline, ranks, targets, counts, insert, softmax):
  targets = common.resolve_targets(module.apply(variables, images, train=False), targets)

  def point(count):
    flipped = (ranks < count)[:, :, None].reshape(images.shape[:3] + (1,))
    x = jnp.where(flipped != insert, baseline, images)
    return _scores(module, variables, x, targets, softmax)[0]

  return jax.lax.map(point, jnp.asarray(counts)).T


def _curve(module, variables, images, maps, targets, steps, baseline, insert, softmax) -> Curve:
  images, maps, targets = _check(module, variables, images, maps, targets)
  if steps < 1:
    raise ExplainError(f"steps must be at least 1, got {steps}.")
  pixels = images.shape[1] * images.shape[2]
  chunk = math.ceil(pixels / steps)
  counts = tuple(min(k * chunk, pixels) for k in range(steps + 1))
  scores = np.asarray(_flip_curve(module, variables, images, make_baseline(images, baseline),
                                  _ranks(maps), targets, counts, jnp.bool_(insert), softmax))
  fractions = np.asarray(counts, np.float64) / pixels
  auc = np.trapezoid(scores, fractions, axis=1)
  return Curve(fractions, scores, auc)


def deletion(module: nn.Module, variables: Any, images: Any, maps: Any, targets=None, *,
             steps: int = 16, baseline: float | str | Any = 0.0, softmax: bool = True) -> Curve:
  """Target probability as the most relevant pixels are set to `baseline`, `steps` chunks.

  The curve has steps + 1 points, the intact image first; Quantus's PixelFlipping
  returns the same points without the first (its `features_in_step` is our chunk,
  ceil(H * W / steps) pixels). The AUC is the trapezoid rule over the fraction
  removed, in [0, 1] (Quantus integrates over the step index instead).

  Args:
    baseline: the value of a removed pixel in model-input units (0.0 is the
      dataset mean under the usual normalisation), one per channel, an image, or 'blur'.
    softmax: probabilities (default) or logits.
  """
  return _curve(module, variables, images, maps, targets, steps, baseline, False, softmax)


def insertion(module: nn.Module, variables: Any, images: Any, maps: Any, targets=None, *,
              steps: int = 16, baseline: float | str | Any = "blur",
              softmax: bool = True) -> Curve:
  """Target probability as the most relevant pixels are put back into `baseline`.

  Starts from the baseline (RISE's blurred picture by default) and ends on the
  intact image; higher AUC is better. Same points and AUC as `deletion`.
  """
  return _curve(module, variables, images, maps, targets, steps, baseline, True, softmax)


# --- ROAD.


def _neighbour_sum(v: jax.Array) -> jax.Array:
  """Weighted sum of each pixel's 8 neighbours (zero outside the image), per channel."""
  n, h, w, c = v.shape
  kernel = jnp.broadcast_to(jnp.asarray(_IMPUTATION_KERNEL)[:, :, None, None], (3, 3, 1, c))
  return jax.lax.conv_general_dilated(v, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=c)


def linear_imputation(images: jax.Array, removed: jax.Array, iterations: int | None = None
                      ) -> jax.Array:
  """Fills the `removed` pixels [N, H, W] (bool) with the solution of ROAD's linear system.

  Each removed pixel equals the weighted mean of its neighbours inside the
  image (weights renormalised at the border, as Quantus and the ROAD code do).
  The system is symmetric positive definite on every group of removed pixels
  that touches a kept one, so conjugate gradients solve it on the device; a
  group that touches none (everything removed) has no information and stays 0.
  """
  images = jnp.asarray(images, jnp.float32)
  unknown = removed[..., None].astype(jnp.float32)
  valid = _neighbour_sum(jnp.ones(images.shape[:3] + (1,), jnp.float32))
  known = images * (1 - unknown)
  b = unknown * _neighbour_sum(known)

  def matvec(v):
    return unknown * (valid * v - _neighbour_sum(v))

  if iterations is None:
    # CG needs about the grid's diameter in iterations for this Laplacian-like system.
    iterations = 4 * max(images.shape[1:3]) + 20
  solution, _ = jax.scipy.sparse.linalg.cg(matvec, b, tol=1e-7, maxiter=iterations)
  return known + unknown * solution


@functools.partial(jax.jit, static_argnames=("module", "counts"))
def _road(module, variables, images, ranks, targets, noise_key, noise, counts):
  """MoRF over `ranks`; LeRF is MoRF over the reversed ranks (one compiled program for both)."""
  logits = module.apply(variables, images, train=False)
  targets = common.resolve_targets(logits, targets)

  def point(args):
    count, key = args
    removed = (ranks < count).reshape(images.shape[:3])
    imputed = linear_imputation(images, removed)
    imputed = imputed + noise * removed[..., None] * jax.random.normal(key, images.shape)
    out = module.apply(variables, imputed, train=False)
    probability = jnp.take_along_axis(jax.nn.softmax(out), targets[:, None], axis=1)[:, 0]
    return jnp.argmax(out, axis=-1) == targets, probability

  keys = jax.random.split(noise_key, len(counts))
  correct, probability = jax.lax.map(point, (jnp.asarray(counts), keys))
  return correct.T, probability.T


class RoadResult(NamedTuple):
  """ROAD at `percentages` [P]: `correct` [N, P] (prediction kept), `probability` [N, P]."""

  percentages: np.ndarray
  correct: np.ndarray
  probability: np.ndarray

  @property
  def accuracy(self) -> np.ndarray:
    """[P] fraction of images whose prediction survives each removal."""
    return self.correct.mean(axis=0)


def road(module: nn.Module, variables: Any, images: Any, maps: Any, targets=None, *,
         order: str = "morf", percentages: Sequence[float] = (10, 30, 50, 70, 90),
         noise: float = 0.01, seed: int = 0) -> RoadResult:
  """RemOve And Debias: accuracy after noisy linear imputation of a share of the pixels.

  `order` 'morf' removes the most relevant pixels first (a faithful map makes the
  accuracy fall fast: lower is better), 'lerf' the least relevant first (higher
  is better). `int(H * W * p / 100)` pixels are removed at each percentage, as in
  Quantus; `noise` is the standard deviation of the Gaussian noise added to the
  imputed values (0 gives the deterministic imputation Quantus is compared with).
  """
  images, maps, targets = _check(module, variables, images, maps, targets)
  if order not in ("morf", "lerf"):
    raise ExplainError(f"order must be 'morf' or 'lerf', got {order!r}.")
  pixels = images.shape[1] * images.shape[2]
  bad = [p for p in percentages if not 0 <= p <= 100]
  if bad:
    raise ExplainError(f"percentages must lie in [0, 100], got {bad}.")
  counts = tuple(int(pixels * p / 100) for p in percentages)
  ranks = _ranks(maps)
  if order == "lerf":
    ranks = ranks.shape[1] - 1 - ranks
  correct, probability = _road(module, variables, images, ranks, targets, jax.random.key(seed),
                               jnp.float32(noise), counts)
  return RoadResult(np.asarray(percentages, np.float64), np.asarray(correct),
                    np.asarray(probability))


# --- Faithfulness correlation.


@functools.partial(jax.jit, static_argnames=("module", "softmax"))
def _subset_drops(module, variables, images, baseline, subsets, targets, softmax):
  """Score drop [N, R] when each subset [N, R, K] of pixels is set to the baseline."""
  targets = common.resolve_targets(module.apply(variables, images, train=False), targets)
  reference = _scores(module, variables, images, targets, softmax)[0]
  n, h, w, c = images.shape

  def run(subset):  # [N, K]
    hit = jnp.zeros((n, h * w), bool).at[jnp.arange(n)[:, None], subset].set(True)
    x = jnp.where(hit.reshape(n, h, w, 1), baseline, images)
    return reference - _scores(module, variables, x, targets, softmax)[0]

  return jax.lax.map(run, jnp.swapaxes(subsets, 0, 1)).T


def random_subsets(key: jax.Array, batch: int, pixels: int, runs: int, size: int) -> jax.Array:
  """[batch, runs, size] distinct pixel indices per (image, run), uniformly drawn."""
  noise = jax.random.uniform(key, (batch, runs, pixels))
  return jnp.argsort(noise, axis=-1)[..., :size]


def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
  a = a - a.mean(-1, keepdims=True)
  b = b - b.mean(-1, keepdims=True)
  return (a * b).sum(-1) / jnp.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def faithfulness_correlation(module: nn.Module, variables: Any, images: Any, maps: Any,
                             targets=None, *, runs: int = 100, subset_size: int | None = None,
                             baseline: float | Any = 0.0, softmax: bool = True, seed: int = 0,
                             subsets: Any = None) -> np.ndarray:
  """[N] Pearson correlation between a subset's map sum and the score drop it causes.

  Args:
    subset_size: pixels per subset; default a quarter of the image's pixels.
    subsets: explicit [N, runs, subset_size] pixel indices (row-major over H, W)
      instead of the `seed`ed draw: how the test matches Quantus's draws.
  """
  images, maps, targets = _check(module, variables, images, maps, targets)
  n, h, w, _ = images.shape
  if subsets is None:
    size = subset_size or max(1, h * w // 4)
    if not 0 < size <= h * w:
      raise ExplainError(f"subset_size must be in [1, {h * w}], got {size}.")
    subsets = random_subsets(jax.random.key(seed), n, h * w, runs, size)
  subsets = jnp.asarray(subsets, jnp.int32)
  if subsets.ndim != 3 or subsets.shape[0] != n:
    raise ExplainError(f"subsets must be [N={n}, runs, size] pixel indices, got "
                       f"{subsets.shape}.")
  drops = _subset_drops(module, variables, images, make_baseline(images, baseline), subsets,
                        targets, softmax)
  flat = maps.reshape(n, -1)
  sums = jnp.take_along_axis(flat[:, None, :], subsets, axis=2).sum(-1)
  return np.asarray(_pearson(sums, drops))


# --- Max-sensitivity.


def max_sensitivity(explain_fn: Callable[[jax.Array, Any], Any], images: Any, targets=None, *,
                    radius: float = 0.2, samples: int = 10, seed: int = 0,
                    noise: Any = None, batch_size: int = 64) -> np.ndarray:
  """[N] max over noisy copies of ||e(x + d) - e(x)|| / ||e(x)|| (Frobenius norms).

  Each noisy copy explains the same class as its image (`targets`, or the
  class predicted on the clean image), as Quantus does, so that the score
  measures the map's stability and not a change of the explained class.

  Args:
    explain_fn: (images [M, H, W, C], targets [M]) -> maps [M, ...], e.g.
      `lambda x, t: grad_cam(module, variables, x, t)`.
    radius: d is uniform in [-radius, radius] on every input value (Quantus's
      `lower_bound`).
    noise: explicit [samples, N, H, W, C] noise instead of the `seed`ed draw.
  """
  images = common.check_images(images)
  n = images.shape[0]
  if targets is None:
    raise ExplainError("max_sensitivity needs the explained classes (targets); pass the "
                       "labels or the predicted classes.")
  targets = np.broadcast_to(np.asarray(targets), (n,))
  if noise is None:
    noise = jax.random.uniform(jax.random.key(seed), (samples,) + images.shape,
                               minval=-radius, maxval=radius)
  noise = jnp.asarray(noise, jnp.float32)
  if noise.shape[1:] != images.shape:
    raise ExplainError(f"noise must be [samples, *images.shape] = [S, {images.shape}], got "
                       f"{noise.shape}.")
  samples = noise.shape[0]
  reference = jnp.asarray(explain_fn(images, targets), jnp.float32).reshape(n, -1)
  noisy = (images[None] + noise).reshape((-1,) + images.shape[1:])
  tiled = np.tile(targets, samples)
  perturbed = jnp.concatenate([
      jnp.asarray(explain_fn(noisy[i:i + batch_size], tiled[i:i + batch_size]), jnp.float32)
      .reshape(-1, reference.shape[1]) for i in range(0, len(noisy), batch_size)])
  perturbed = perturbed.reshape(samples, n, -1)
  change = jnp.linalg.norm(perturbed - reference[None], axis=-1)
  return np.asarray((change / jnp.linalg.norm(reference, axis=-1)[None]).max(0))


# --- Pointing game.


def boxes_to_masks(boxes: Any, height: int, width: int) -> np.ndarray:
  """[N, 4] (x0, y0, x1, y1) pixel boxes, end-exclusive, or [N, B, 4] -> [N, H, W] bool masks."""
  boxes = np.asarray(boxes, np.float64)
  if boxes.ndim == 2:
    boxes = boxes[:, None]
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ExplainError(f"boxes must be [N, 4] or [N, B, 4] (x0, y0, x1, y1), got {boxes.shape}.")
  ys, xs = np.mgrid[:height, :width]
  x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))
  inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)  # [N, B, H, W]
  return inside.any(axis=1)


def pointing_game(maps: Any, *, boxes: Any = None, masks: Any = None,
                  tolerance: int = 0) -> np.ndarray:
  """[N] 1.0 where a maximum of the map lies on the object, NaN where the object is empty.

  Any pixel that ties for the maximum counts (as Quantus). `tolerance` > 0 grows
  the object by that many pixels (Zhang et al. used 15 px at 224 px), so that a
  maximum just beside it still counts.

  Raises:
    ExplainError: neither boxes nor masks given, or a shape that does not fit the maps.
  """
  maps = jnp.asarray(maps, jnp.float32)
  if maps.ndim != 3:
    raise ExplainError(f"maps must be [N, H, W], got shape {maps.shape}.")
  n, h, w = maps.shape
  if boxes is None and masks is None:
    raise ExplainError("the pointing game needs the objects' locations: pass boxes=[N, 4] "
                       "(x0, y0, x1, y1) or masks=[N, H, W].")
  masks = boxes_to_masks(boxes, h, w) if masks is None else np.asarray(masks).astype(bool)
  if masks.shape != (n, h, w):
    raise ExplainError(f"masks must be [N, H, W] = {(n, h, w)} like the maps, got "
                       f"{masks.shape}.")
  target = jnp.asarray(masks)
  if tolerance > 0:
    size = 2 * tolerance + 1
    target = jax.lax.reduce_window(target, False, jax.lax.bitwise_or, (1, size, size),
                                   (1, 1, 1), "SAME")
  peak = maps == maps.max(axis=(1, 2), keepdims=True)
  hit = np.asarray((peak & target).any(axis=(1, 2)), np.float64)
  hit[~masks.any(axis=(1, 2))] = np.nan
  return hit


# --- All at once, for the metrics table.


def evaluate(metrics: Sequence[str], module: nn.Module, variables: Any, images: Any, maps: Any,
             targets=None, *, explain_fn: Callable | None = None, boxes: Any = None,
             masks: Any = None, baseline: float | Any = 0.0, steps: int = 16,
             sensitivity_samples: int = 10, sensitivity_radius: float = 0.2, runs: int = 64,
             seed: int = 0) -> dict[str, float]:
  """Mean score of each named metric over the images (one number each, NaNs skipped).

  deletion / insertion give the AUC; road_morf / road_lerf the mean accuracy over
  the percentages; max_sensitivity needs `explain_fn(images, targets)`; pointing_game
  needs boxes or masks.
  """
  unknown = [m for m in metrics if m not in SUMMARIES]
  if unknown:
    raise ExplainError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}.")
  if "pointing_game" in metrics and boxes is None and masks is None:
    raise ExplainError("the pointing_game metric needs the objects' locations: give boxes or "
                       "masks, or leave pointing_game out.")
  out = {}
  for name in metrics:
    if name == "deletion":
      value = deletion(module, variables, images, maps, targets, steps=steps,
                       baseline=baseline).auc
    elif name == "insertion":
      value = insertion(module, variables, images, maps, targets, steps=steps).auc
    elif name.startswith("road_"):
      value = road(module, variables, images, maps, targets, order=name[5:], seed=seed).correct
    elif name == "faithfulness_correlation":
      value = faithfulness_correlation(module, variables, images, maps, targets, runs=runs,
                                       baseline=baseline, seed=seed)
    elif name == "max_sensitivity":
      if explain_fn is None:
        raise ExplainError("max_sensitivity needs explain_fn, the method to re-run on noisy "
                           "images.")
      if targets is None:
        targets = np.asarray(module.apply(variables, images, train=False)).argmax(-1)
      value = max_sensitivity(explain_fn, images, targets, radius=sensitivity_radius,
                              samples=sensitivity_samples, seed=seed)
    else:
      value = pointing_game(maps, boxes=boxes, masks=masks)
    out[name] = float(np.nanmean(np.asarray(value, np.float64)))
  return out
