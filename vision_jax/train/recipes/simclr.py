"""The SimCLR recipe (Chen et al. 2020): contrastive pretraining on two views of each image.

The model is `SimCLRModel`: the registered `config.model.name` built with
`num_classes=0` as the encoder, plus a projection MLP (`config.simclr.head`).
Step: `vision_jax.train.simclr.simclr_train_step` (NT-Xent at
`config.simclr.temperature`, negatives and BatchNorm over the global batch).
Evaluation: frozen encoder features of the memory split (the training split with
eval preprocessing, `config.simclr.memory_split`) and of the eval split; a
weighted kNN at every eval, and a linear probe added at the final one.
A SimCLR projection head is never zeroed when `init_from` loads weights: its
output would be constant.
"""

from __future__ import annotations

import functools
from typing import Any

from vision_jax import models
from vision_jax.config_base import SIMCLR_DEFAULTS
from vision_jax.config_fields import FieldChecks
from vision_jax.config_util import ConfigError
from vision_jax.models.heads import ProjectionHead
from vision_jax.train import simclr as simclr_lib
from vision_jax.train.recipes import ssl_monitor
from vision_jax.train.recipes.base import Recipe, model_overrides, register_recipe
from vision_jax.train.recipes.supervised import eval_params


def build_model(config: Any, dtype: Any) -> simclr_lib.SimCLRModel:
  """`SimCLRModel` from config.model (the encoder, built with num_classes=0) and config.simclr.head."""
  encoder = models.create_model(config.model.name, num_classes=0, dtype=dtype,
                                **model_overrides(config))
  head = {**SIMCLR_DEFAULTS["head"], **dict(config.simclr.get("head", None) or {})}
  return simclr_lib.SimCLRModel(encoder=encoder, head=ProjectionHead(
      hidden_dim=head["hidden_dim"],
      out_dim=int(head["out_dim"]), num_layers=int(head["num_layers"]), dtype=dtype))


class SimCLR(Recipe):
  """Label-free contrastive pretraining with kNN and linear-probe monitors."""

  name = "simclr"
  zero_head_on_load = False
  checkpoint_tag = "simclr"

  def check(self, config: Any, dataset: Any = None) -> None:
    FieldChecks(config).number("simclr.temperature", 0.0, low_open=True, required=True)
    if int(config.grad_accum_steps) > 1:
      raise ConfigError("config.grad_accum_steps > 1 is not available with recipe='simclr': the "
                        "negatives and the BatchNorm batch would shrink to one micro-batch. Use "
                        "more devices or a smaller batch instead.")
    if config.data.get("mix"):
      raise ConfigError("config.data.mix does not apply to recipe='simclr' (no labels are used "
                        "in training); remove it.")
    if config.freeze_bn:
      raise ConfigError("config.freeze_bn does not apply to recipe='simclr': contrastive "
                        "pretraining needs BatchNorm's batch statistics; remove it.")
    if config.trainable_params:
      raise ConfigError("config.trainable_params is for supervised runs (e.g. a linear probe); "
                        "SimCLR pretraining trains encoder and head.")
    if dataset is not None and getattr(dataset, "views", 1) != 2:
      raise ConfigError(
          "recipe='simclr' needs two augmented views of every training image: set "
          "config.data.views=2 (digits, with augment='simclr'), or put 'two_views' in "
          "config.data.preprocess_train (e.g. 'decode|two_views|inception_crop(224)|flip_lr|"
          "color_jitter(1.0)|random_grayscale(0.2)|value_range(0,1)').")
    ssl_monitor.refuse_local_crops(dataset, self.name)

  def build_model(self, config: Any, dataset: Any, dtype: Any):
    del dataset  # no classifier: the number of classes does not matter
    return build_model(config, dtype)

  def train_step(self, config: Any, dataset: Any, model, tx, schedule):
    return functools.partial(
        simclr_lib.simclr_train_step, model=model, tx=tx, schedule=schedule,
        temperature=float(config.simclr.temperature), ema_decay=float(config.ema_decay or 0.0))

  def make_eval(self, config: Any, dataset: Any, model, mesh, batch_size: int):
    return ssl_monitor.make_representation_eval(config, config.simclr, dataset, model, mesh,
                                                batch_size, params_of=eval_params)


register_recipe(SimCLR())
