"""Sanity checks for saliency maps (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

A method that explains the model must give different maps when the model is
destroyed. Two tests:

- model-parameter randomisation: the layers' parameters are replaced by fresh
  initial values from the top (the classifier) down, either cumulatively
  (`mode="cascading"`: the top k layers at step k) or one layer at a time
  (`mode="independent"`), and each method's maps are compared with the maps of
  the trained model;
- data randomisation: the same model trained on permuted labels (which it can
  only memorise) is compared with the one trained on the true labels
  (`data_randomisation`; `train_with_permuted_labels` runs the project's trainer
  on such labels).

Similarity is the SSIM (Wang et al. 2004; a 7x7 uniform window, as
scikit-image's default) and the Spearman rank correlation (ties share their mean
rank) between the maps, on absolute values min-max normalised per image, as in
the paper. A method passes when both fall well below their value for the
trained model (1): its maps depend on what the model learned.

BatchNorm running statistics are kept when parameters are re-initialised (the
paper re-initialises weights only).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.explain import common
from vision_jax.explain.layers import ExplainError

# (module, variables, images, targets) -> maps [N, H, W] at the input size.
MapFn = Callable[[nn.Module, Any, jax.Array, Any], Any]


class SanityResult(NamedTuple):
  """Similarity of each method's maps with the trained model's, per randomisation step.

  Attributes:
    mode: 'cascading', 'independent' or 'data'.
    steps: what was randomised at each step; steps[0] is 'original' (similarity 1).
    ssim: method -> [len(steps)] mean SSIM over the images.
    spearman: method -> [len(steps)] mean Spearman rank correlation over the images.
  """

  mode: str
  steps: list[str]
  ssim: dict[str, np.ndarray]
  spearman: dict[str, np.ndarray]

  def as_dict(self) -> dict[str, Any]:
    return {"mode": self.mode, "steps": list(self.steps),
            "ssim": {k: [float(x) for x in v] for k, v in self.ssim.items()},
            "spearman": {k: [float(x) for x in v] for k, v in self.spearman.items()}}


# --- Similarity of two batches of maps.


def _prepare_maps(maps: Any, absolute: bool) -> jax.Array:
  maps = jnp.asarray(maps, jnp.float32)
  if maps.ndim != 3:
    raise ExplainError(f"maps must be [N, H, W], got shape {maps.shape}.")
  return common.minmax_normalise(jnp.abs(maps) if absolute else maps)


@jax.jit
def _ssim(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean SSIM per image of [N, H, W] maps in [0, 1] (data range 1, sample covariance)."""
  win = min(7, a.shape[1] - (1 - a.shape[1] % 2), a.shape[2] - (1 - a.shape[2] % 2))
  points = win * win

  def mean(x):
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, win, win), (1, 1, 1), "VALID") / points

  ma, mb = mean(a), mean(b)
  scale = points / (points - 1)
  va = scale * (mean(a * a) - ma * ma)
  vb = scale * (mean(b * b) - mb * mb)
  cov = scale * (mean(a * b) - ma * mb)
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
  return s.mean(axis=(1, 2))


def ssim(a: Any, b: Any, *, absolute: bool = True) -> np.ndarray:
  """[N] structural similarity of two batches of maps, after min-max normalisation."""
  return np.asarray(_ssim(_prepare_maps(a, absolute), _prepare_maps(b, absolute)))


def _average_ranks(x: jax.Array) -> jax.Array:
  """Ranks 0..P-1 of a [P] vector, tied values sharing their mean rank."""
  s = jnp.sort(x)
  left = jnp.searchsorted(s, x, side="left")
  right = jnp.searchsorted(s, x, side="right")
  return (left + right - 1) / 2.0


@jax.jit
def _spearman(a: jax.Array, b: jax.Array) -> jax.Array:
  ra = jax.vmap(_average_ranks)(a.reshape(a.shape[0], -1))
  rb = jax.vmap(_average_ranks)(b.reshape(b.shape[0], -1))
  ra = ra - ra.mean(-1, keepdims=True)
  rb = rb - rb.mean(-1, keepdims=True)
  return (ra * rb).sum(-1) / jnp.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))


def spearman(a: Any, b: Any, *, absolute: bool = True) -> np.ndarray:
  """[N] Spearman rank correlation of two batches of maps (NaN for a constant map)."""
  return np.asarray(_spearman(_prepare_maps(a, absolute), _prepare_maps(b, absolute)))


# --- Model-parameter randomisation.


def layer_order(module: nn.Module, variables: Any, images: Any) -> list[str]:
  """Top-level parameter names in the order the forward pass uses them.

  The top module's own parameters (a ViT's cls_token, pos_embed) come first.
  """
  images = common.check_images(images)[:1]
  _, state = module.apply(variables, images, train=False, capture_intermediates=True,
                          mutable=["intermediates"])
  params = variables["params"]
  # The intermediates dict is filled as the modules return, so a block's entry
  # follows its children's; the first time a top-level name appears is its place.
  order = [name for name in state["intermediates"] if name in params]
  # Parameters held by the top module itself (a ViT's cls_token and pos_embed) are
  # used where the input is embedded: they go first, so that a top-down
  # randomisation reaches them last, not before the classifier.
  own = [name for name in params if name not in order and not isinstance(params[name], Mapping)]
  return own + order + [name for name in params if name not in order and name not in own]


def fresh_parameters(module: nn.Module, images: Any, seed: int = 0) -> Any:
  """A new random initialisation's parameters (jitted: an eager init of a deep model is slow)."""
  x = common.check_images(images)[:1]
  return jax.jit(lambda key: module.init(key, x)["params"])(jax.random.key(seed))


def randomise_layers(module: nn.Module, variables: Any, images: Any, layers: Sequence[str],
                     seed: int = 0, fresh: Any = None) -> Any:
  """`variables` with the parameters of `layers` replaced by a fresh initialisation's.

  Args:
    fresh: the parameters to take them from (default: `fresh_parameters(seed)`).
  """
  if fresh is None:
    fresh = fresh_parameters(module, images, seed)
  unknown = [name for name in layers if name not in variables["params"]]
  if unknown:
    raise ExplainError(f"layer {unknown[0]!r} has no parameters in this model; layers: "
                       f"{', '.join(variables['params'])}.")
  params = dict(variables["params"])
  for name in layers:
    params[name] = fresh[name]
  return {**variables, "params": params}


def _maps(method: MapFn, module, variables, images, targets) -> np.ndarray:
  return np.asarray(method(module, variables, images, targets), np.float32)


def _mean(values: np.ndarray) -> float:
  # NaN (a constant map has no ranks) is left out; all NaN stays NaN, without a warning.
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if finite.size else float("nan")


def _compare(methods, reference, module, variables, images, targets, absolute):
  ssims, ranks = {}, {}
  for name, method in methods.items():
    maps = _maps(method, module, variables, images, targets)
    ssims[name] = _mean(ssim(reference[name], maps, absolute=absolute))
    ranks[name] = _mean(spearman(reference[name], maps, absolute=absolute))
  return ssims, ranks


def model_randomisation(module: nn.Module, variables: Any, images: Any,
                        methods: Mapping[str, MapFn], targets=None, *,
                        mode: str = "cascading", layers: Sequence[str] | None = None,
                        seed: int = 0, absolute: bool = True) -> SanityResult:
  """Adebayo et al.'s model-parameter randomisation test, from the top layer down.

  Args:
    methods: name -> fn(module, variables, images, targets) giving [N, H, W] maps
      (see `method_fn`).
    targets: the classes explained, the same at every step (default: the trained
      model's predictions), so that only the parameters change.
    mode: 'cascading' (top k layers randomised at step k) or 'independent'
      (only the k-th layer from the top).
    layers: top-level parameter names, bottom-up; default `layer_order`.
  """
  if mode not in ("cascading", "independent"):
    raise ExplainError(f"mode must be 'cascading' or 'independent', got {mode!r}.")
  images = common.check_images(images)
  if targets is None:
    targets = np.asarray(module.apply(variables, images, train=False)).argmax(-1)
  layers = list(layers) if layers is not None else layer_order(module, variables, images)
  top_down = layers[::-1]
  reference = {name: _maps(m, module, variables, images, targets) for name, m in methods.items()}
  ssims = {name: [1.0] for name in methods}
  ranks = {name: [1.0] for name in methods}
  steps = ["original"]
  # One draw serves every step: each layer's new values are independent of the others'.
  fresh = fresh_parameters(module, images, seed + 1)
  for k, layer in enumerate(top_down):
    chosen = top_down[:k + 1] if mode == "cascading" else [layer]
    randomised = randomise_layers(module, variables, images, chosen, fresh=fresh)
    s, r = _compare(methods, reference, module, randomised, images, targets, absolute)
    for name in methods:
      ssims[name].append(s[name])
      ranks[name].append(r[name])
    steps.append(layer)
  return SanityResult(mode, steps, {k: np.asarray(v) for k, v in ssims.items()},
                      {k: np.asarray(v) for k, v in ranks.items()})


# --- Data randomisation.


def data_randomisation(module: nn.Module, variables: Any, permuted_variables: Any,
                       images: Any, methods: Mapping[str, MapFn], targets=None, *,
                       absolute: bool = True) -> SanityResult:
  """Maps of the model trained on permuted labels against the model trained on true labels.

  The explained class is the same for both (`targets`, default the true-label
  model's predictions).
  """
  images = common.check_images(images)
  if targets is None:
    targets = np.asarray(module.apply(variables, images, train=False)).argmax(-1)
  reference = {name: _maps(m, module, variables, images, targets) for name, m in methods.items()}
  s, r = _compare(methods, reference, module, permuted_variables, images, targets, absolute)
  return SanityResult("data", ["original", "permuted labels"],
                      {k: np.array([1.0, s[k]]) for k in methods},
                      {k: np.array([1.0, r[k]]) for k in methods})


def permute_labels(dataset: Any, seed: int = 0) -> Any:
  """A copy of an ArrayDataset whose training labels are shuffled (evaluation untouched)."""
  images, labels = dataset.train
  shuffled = np.random.default_rng(seed).permutation(np.asarray(labels))
  return dataclasses.replace(dataset, train=(images, shuffled))


@contextlib.contextmanager
def _permuted_training_data(seed: int):
  """While open, the trainer's datasets come with permuted training labels."""
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  original = trainer.data_lib.get_dataset

  def get_dataset(data_config, *args, **kwargs):
    dataset = original(data_config, *args, **kwargs)
    if not hasattr(dataset, "train") or not dataclasses.is_dataclass(dataset):
      raise ExplainError(f"data randomisation needs an in-memory dataset (digits, synthetic); "
                         f"config.data.name={data_config.get('name')!r} streams from tf.data.")
    return permute_labels(dataset, seed)

  trainer.data_lib.get_dataset = get_dataset
  try:
    yield
  finally:
    trainer.data_lib.get_dataset = original


def train_with_permuted_labels(config: Any, workdir: str, seed: int = 0) -> dict[str, float]:
  """Runs the project's trainer (`train_and_evaluate`) on `config` with shuffled labels.

  Returns the trainer's final metrics; the model in `workdir` is what
  `data_randomisation` compares with the one trained on the true labels.
  """
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  with _permuted_training_data(seed):
    return trainer.train_and_evaluate(config, workdir)


# --- Methods and the plot.


def method_fn(name: str, **options) -> MapFn:
  """explain.METHODS[name] as a MapFn giving upsampled [N, H, W] maps."""
  from vision_jax.explain import METHODS  # pylint: disable=import-outside-toplevel
  if name not in METHODS:
    raise ExplainError(f"unknown method {name!r}; choose from {', '.join(METHODS)}.")
  method = METHODS[name]

  def run(module, variables, images, targets):
    return method(module, variables, images, targets, upsample=True, **options)

  return run


def plot(results: Sequence[SanityResult], path: str) -> str:
  """One panel per (result, similarity): each method's curve over the randomisation steps."""
  from vision_jax.cli import common as cli_common  # pylint: disable=import-outside-toplevel
  plt = cli_common.pyplot()
  fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.4 * len(results)), squeeze=False)
  for row, result in zip(axes, results):
    for ax, (label, values) in zip(row, (("SSIM", result.ssim),
                                          ("Spearman rank correlation", result.spearman))):
      x = np.arange(len(result.steps))
      for name, curve in values.items():
        ax.plot(x, curve, marker="o", label=name)
      ax.set_xticks(x, result.steps, rotation=60, ha="right", fontsize=7)
      ax.set_ylim(-0.3, 1.05)
      ax.axhline(0, color="grey", lw=0.5)
      ax.set_ylabel(label)
      ax.set_title(f"{result.mode} randomisation", fontsize=9)
      ax.legend(fontsize=7)
  fig.tight_layout()
  cli_common.save_png(fig, path, dpi=90)
  return path
