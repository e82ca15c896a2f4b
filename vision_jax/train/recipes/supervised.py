"""The supervised recipe: softmax classification (from scratch, fine-tuning, linear probes).

Step: `steps.train_step` (label smoothing, gradient accumulation, frozen BatchNorm,
`trainable_params`, class weights under config.data.balance='loss'). Evaluation:
loss, top-1 and top-5 over one ordered pass of the eval split, with the EMA
parameters when the run keeps them, plus the balanced top-1 (mean of per-class
top-1) and the worst class's top-1; the final evaluation adds each class's top-1
(`eval_top1_class_<i>`, up to MAX_CLASSES_REPORTED classes).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import models
from vision_jax.config_util import ConfigError
from vision_jax.data import balance as balance_lib
from vision_jax.train import sharding as sharding_lib
from vision_jax.train import steps as steps_lib
from vision_jax.train.recipes.base import Recipe, model_overrides, register_recipe


MAX_CLASSES_REPORTED = 100


def evaluate(eval_fn, params, batch_stats, dataset, batch_size: int, mesh,
             per_class: bool = False) -> dict[str, float]:
  """Classification metrics over one full, ordered pass of the eval split.

  Balanced top-1 and the worst class are over the classes the split holds; with
  `per_class` (and at most MAX_CLASSES_REPORTED classes) each class's top-1 too.
  """
  totals = None
  for batch in dataset.eval_iterator(batch_size, jax.process_index(), jax.process_count()):
    out = eval_fn(params, batch_stats, sharding_lib.make_global_batch(batch, mesh))
    totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  metrics = {"eval_loss": float(totals["loss"]) / count,
             "eval_top1": float(totals["top1"]) / count,
             "eval_top5": float(totals["top5"]) / count, "eval_count": count}
  if "class_count" in totals:
    counts, hits = np.asarray(totals["class_count"]), np.asarray(totals["class_top1"])
    present = counts > 0
    recall = hits[present] / counts[present]
    metrics["eval_balanced_top1"] = float(np.mean(recall))
    metrics["eval_worst_class_top1"] = float(np.min(recall))
    if per_class and len(counts) <= MAX_CLASSES_REPORTED:
      for i in np.flatnonzero(present):
        metrics[f"eval_top1_class_{i}"] = float(hits[i] / counts[i])
  return metrics


def eval_params(state) -> Any:
  """The parameters evaluation uses: the EMA when the run keeps one."""
  return state.ema_params if state.ema_params is not None else state.params


class Supervised(Recipe):
  """Classification with softmax cross-entropy on labelled images."""

  name = "supervised"

  def check(self, config: Any, dataset: Any = None) -> None:
    if dataset is not None and getattr(dataset, "views", 1) != 1:
      raise ConfigError("The training data gives two views per image (config.data.views=2 or "
                        "'two_views' in preprocess_train), which only recipe='simclr' uses; set "
                        "config.recipe='simclr' or remove the second view.")

  def build_model(self, config: Any, dataset: Any, dtype: Any):
    return models.create_model(config.model.name, num_classes=dataset.num_classes, dtype=dtype,
                               **model_overrides(config))

  def train_step(self, config: Any, dataset: Any, model, tx, schedule):
    weights = None
    if config.data.get("balance", None) == "loss":
      weights = balance_lib.loss_weights(balance_lib.class_counts(dataset))
    return functools.partial(
        steps_lib.train_step, model=model, tx=tx, schedule=schedule,
        num_classes=dataset.num_classes, label_smoothing=float(config.label_smoothing),
        grad_accum_steps=int(config.grad_accum_steps), ema_decay=float(config.ema_decay or 0.0),
        freeze_bn=bool(config.freeze_bn), trainable=config.trainable_params or None,
        class_weights=weights)

  def make_eval(self, config: Any, dataset: Any, model, mesh, batch_size: int):
    eval_fn = jax.jit(functools.partial(steps_lib.eval_step, model=model,
                                        num_classes=dataset.num_classes))

    def run_eval(state, final: bool = False) -> dict[str, float]:
      return evaluate(eval_fn, eval_params(state), state.batch_stats, dataset, batch_size, mesh,
                      per_class=final)

    return run_eval


register_recipe(Supervised())
