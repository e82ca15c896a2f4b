"""The supervised recipe: softmax classification (from scratch, fine-tuning, linear probes).

Step: `steps.train_step` (label smoothing, gradient accumulation, frozen BatchNorm,
`trainable_params`). Evaluation: loss, top-1 and top-5 over one ordered pass of
the eval split, with the EMA parameters when the run keeps them.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from vision_jax import models
from vision_jax.config_util import ConfigError
from vision_jax.train import sharding as sharding_lib
from vision_jax.train import steps as steps_lib
from vision_jax.train.recipes.base import Recipe, model_overrides, register_recipe


def evaluate(eval_fn, params, batch_stats, dataset, batch_size: int, mesh) -> dict[str, float]:
  """Classification metrics over one full, ordered pass of the eval split."""
  totals = None
  for batch in dataset.eval_iterator(batch_size, jax.process_index(), jax.process_count()):
    out = eval_fn(params, batch_stats, sharding_lib.make_global_batch(batch, mesh))
    totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"eval_loss": float(totals["loss"]) / count, "eval_top1": float(totals["top1"]) / count,
          "eval_top5": float(totals["top5"]) / count, "eval_count": count}


def eval_params(state) -> Any:
  """The parameters evaluation uses: the EMA when the run keeps one."""
  return state.ema_params if state.ema_params is not None else state.params


class Supervised(Recipe):
  """Classification with softmax cross-entropy on labelled images."""

  name = "supervised"

  def check(self, config: Any, dataset: Any) -> None:
    if getattr(dataset, "views", 1) != 1:
      raise ConfigError("The training data gives two views per image (config.data.views=2 or "
                        "'two_views' in preprocess_train), which only recipe='simclr' uses; set "
                        "config.recipe='simclr' or remove the second view.")

  def build_model(self, config: Any, dataset: Any, dtype: Any):
    return models.create_model(config.model.name, num_classes=dataset.num_classes, dtype=dtype,
                               **model_overrides(config))

  def train_step(self, config: Any, dataset: Any, model, tx, schedule):
    return functools.partial(
        steps_lib.train_step, model=model, tx=tx, schedule=schedule,
        num_classes=dataset.num_classes, label_smoothing=float(config.label_smoothing),
        grad_accum_steps=int(config.grad_accum_steps), ema_decay=float(config.ema_decay or 0.0),
        freeze_bn=bool(config.freeze_bn), trainable=config.trainable_params or None)

  def make_eval(self, config: Any, dataset: Any, model, mesh, batch_size: int):
    eval_fn = jax.jit(functools.partial(steps_lib.eval_step, model=model,
                                        num_classes=dataset.num_classes))

    def run_eval(state, final: bool = False) -> dict[str, float]:
      del final  # the final evaluation is the same pass
      return evaluate(eval_fn, eval_params(state), state.batch_stats, dataset, batch_size, mesh)

    return run_eval


register_recipe(Supervised())
