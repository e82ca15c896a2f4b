"""The representation monitor of the DINO, MAE and BYOL recipes (the SimCLR recipe's, reused).

At every evaluation: frozen encoder features of the memory split (the training
split with eval preprocessing, `<block>.memory_split`) and of the eval split, a
weighted kNN on them, and at the final evaluation a linear probe as well
(`simclr.representation_metrics`, configured by `<block>.knn` and
`<block>.linear`). It is one function so that the shared probes (k-NN, linear,
few-shot) replace it in one place.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax

from vision_jax import data as data_lib
from vision_jax.config_util import ConfigError
from vision_jax.train import sharding as sharding_lib
from vision_jax.train import simclr as simclr_lib


def memory_data_config(config: Any, block: Any) -> Any:
  """config.data of the memory split: `block.memory_split` (default: train), eval preprocessing."""
  memory = config.data.copy_and_resolve_references()
  with memory.unlocked():
    memory.eval_split = (block.get("memory_split", None)
                         or config.data.get("train_split", None) or "train")
    if "views" in memory:
      memory.views = 1
    if "local_crops" in memory:  # DINO's multi-crop is for training only
      memory.local_crops = 0
    if "mix" in memory:
      memory.mix = None
  return memory


def make_representation_eval(config: Any, block: Any, dataset: Any, model: Any, mesh: Any,
                             batch_size: int, params_of: Callable[[Any], Any]):
  """`run_eval(state, final)` -> knn_top1 (+ linear_top1 when final), eval_count.

  Args:
    config: the run's config.
    block: the recipe's config block (config.dino, config.mae, config.byol).
    dataset: the run's dataset (its eval split is the probe's test set).
    model: the recipe's model; `model.apply(variables, images, train=False,
      features_only=True)` must return the encoder features.
    mesh: the device mesh.
    batch_size: eval batch size.
    params_of: state -> the parameters whose encoder is evaluated (DINO: the
      teacher, BYOL and MAE: the trained network).
  """
  memory = data_lib.get_dataset(memory_data_config(config, block))
  feature_fn = jax.jit(functools.partial(simclr_lib.feature_step, model=model),
                       out_shardings=sharding_lib.replicated(mesh))

  def run_eval(state, final: bool = False) -> dict[str, float]:
    params = params_of(state)
    train = simclr_lib.extract_features(feature_fn, params, state.batch_stats, memory,
                                        batch_size, mesh)
    test = simclr_lib.extract_features(feature_fn, params, state.batch_stats, dataset,
                                       batch_size, mesh)
    return simclr_lib.representation_metrics(train, test, block, dataset.num_classes,
                                             linear=final)

  return run_eval


def check_ema_teacher(config: Any, name: str, what: str) -> None:
  """BYOL's target and DINO's teacher live in the EMA slot: config.ema_decay is their momentum."""
  if not 0.0 < float(config.ema_decay or 0.0) < 1.0:
    raise ConfigError(
        f"config.ema_decay={config.ema_decay!r}: recipe='{name}' keeps its {what} in the EMA "
        f"slot, and config.ema_decay is the {what.split()[0]}'s base momentum; set it in (0, 1), "
        "e.g. 0.996 (the paper's).")


def check_two_views(dataset: Any, name: str, what: str, local_crops: bool = False) -> None:
  """The two-view recipes need the pipeline's pair of augmented images per example.

  Only DINO (`local_crops=True`) trains on multi-crop's local crops; the others
  would drop them silently, so they refuse them.
  """
  if dataset is not None and getattr(dataset, "views", 1) != 2:
    raise ConfigError(
        f"recipe='{name}' needs {what} of every training image: set config.data.views=2 "
        "(digits, with augment='simclr'), or put 'two_views' in config.data.preprocess_train.")
  if not local_crops:
    refuse_local_crops(dataset, name)


def refuse_local_crops(dataset: Any, name: str) -> None:
  """ConfigError when the data gives DINO's local crops to a recipe that would ignore them."""
  if dataset is not None and getattr(dataset, "local_views", 0):
    raise ConfigError(
        f"recipe='{name}' does not train on local crops (DINO's multi-crop): remove "
        "config.data.local_crops, or local_crops(n) and the ops after it from "
        "config.data.preprocess_train.")


def check_pretraining(config: Any, name: str) -> None:
  """ConfigErrors shared by the label-free recipes: options that only supervised runs use."""
  if int(config.grad_accum_steps) > 1:
    raise ConfigError(f"config.grad_accum_steps > 1 is not available with recipe='{name}': the "
                      "BatchNorm batch (and DINO's center) would shrink to one micro-batch. Use "
                      "more devices or a smaller batch instead.")
  if config.data.get("mix"):
    raise ConfigError(f"config.data.mix does not apply to recipe='{name}' (no labels are used "
                      "in training); remove it.")
  if config.freeze_bn:
    raise ConfigError(f"config.freeze_bn does not apply to recipe='{name}'; remove it.")
  if config.trainable_params:
    raise ConfigError(f"config.trainable_params is for supervised runs (e.g. a linear probe); "
                      f"recipe='{name}' trains the whole network.")
