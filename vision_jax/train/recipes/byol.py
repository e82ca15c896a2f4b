"""The BYOL recipe (Grill et al. 2020): an online network regresses an EMA target's projections.

The model is `byol.BYOLModel`: the registered `config.model.name` built with
`num_classes=0` as the encoder (a ResNet in the paper), plus projector and
predictor (`config.byol.head`: hidden_dim, out_dim). The target network is the
train state's `ema_params` and `config.ema_decay` is its base momentum
tau_base (0.996), raised to 1 along a cosine, so target and schedule are in
the checkpoint and a resumed run continues bit for bit.
Step: `byol.byol_train_step` (symmetric normalised MSE). Optimizer: LARS
(`config.optimizer.name='lars'`, optax.lars with biases and norms excluded).
Evaluation: the online encoder's features, kNN at every eval and a linear probe
at the final one (`ssl_monitor`; config.byol.knn, .linear, .memory_split).
"""

from __future__ import annotations

import functools
from typing import Any

from vision_jax import models
from vision_jax.config_util import ConfigError
from vision_jax.train import byol as byol_lib
from vision_jax.train.recipes import ssl_monitor
from vision_jax.train.recipes.base import Recipe, model_overrides, register_recipe
from vision_jax.train.recipes.dino import total_steps


def build_model(config: Any, dtype: Any) -> byol_lib.BYOLModel:
  """`BYOLModel` from config.model (encoder, num_classes=0) and config.byol.head."""
  encoder = models.create_model(config.model.name, num_classes=0, dtype=dtype,
                                **model_overrides(config))
  head = dict(config.byol.get("head", None) or {})
  return byol_lib.BYOLModel(encoder=encoder, head=byol_lib.BYOLHead(
      hidden_dim=int(head.get("hidden_dim", 4096)), out_dim=int(head.get("out_dim", 256)),
      dtype=dtype))


class BYOL(Recipe):
  """Label-free bootstrap of an EMA target; kNN and linear-probe monitors."""

  name = "byol"
  zero_head_on_load = False
  checkpoint_tag = "byol"

  def check(self, config: Any, dataset: Any = None) -> None:
    if "byol" not in config:
      raise ConfigError("recipe='byol' needs a config.byol block (head, knn, linear); see "
                        "configs/byol_digits.py.")
    ssl_monitor.check_ema_teacher(config, self.name, "target network")
    ssl_monitor.check_pretraining(config, self.name)
    ssl_monitor.check_two_views(dataset, self.name, "two augmented views")

  def build_model(self, config: Any, dataset: Any, dtype: Any):
    del dataset  # no classifier
    return build_model(config, dtype)

  def train_step(self, config: Any, dataset: Any, model, tx, schedule):
    return functools.partial(byol_lib.byol_train_step, model=model, tx=tx, schedule=schedule,
                             total_steps=total_steps(config, dataset),
                             momentum_base=float(config.ema_decay))

  def make_eval(self, config: Any, dataset: Any, model, mesh, batch_size: int):
    return ssl_monitor.make_representation_eval(config, config.byol, dataset, model, mesh,
                                                batch_size, lambda state: state.params)


register_recipe(BYOL())
