"""Blocks the paper configs share (big_vision keeps such a configs/common.py).

A config file loads it with `common = sibling_module(__file__, "common")`
(vision_jax.config_util): config files are run from their path, so they cannot
`import common`. Each function returns a new ConfigDict, or sets fields of the
config it is given; what a paper changes stays in its own file.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from vision_jax.config_util import shrink_for_smoke

IMAGENET = "imagenet2012"


def data(name: str, preprocess_train: str, preprocess_eval: str, *, train_split: str = "train",
         eval_split: str = "validation", **extra: Any) -> ml_collections.ConfigDict:
  """config.data of a tf.data source (tfds builder or 'folder:/path') with its two op strings."""
  return ml_collections.ConfigDict({
      "name": name, "train_split": train_split, "eval_split": eval_split, **extra,
      "preprocess_train": preprocess_train, "preprocess_eval": preprocess_eval})


def imagenet_data(preprocess_train: str, preprocess_eval: str) -> ml_collections.ConfigDict:
  """ImageNet-1k from tfds: train and validation splits."""
  return data(IMAGENET, preprocess_train, preprocess_eval)


def simclr(temperature: float, *, hidden_dim: int | None = None, out_dim: int = 128,
           knn_k: int = 200, linear_steps: int = 5000, linear_learning_rate: float = 1e-3,
           linear_weight_decay: float = 0.0, memory_split: str = "train") -> ml_collections.ConfigDict:
  """config.simclr: NT-Xent temperature, projection head, kNN and linear-probe monitors."""
  return ml_collections.ConfigDict({
      "temperature": temperature,
      "head": {"hidden_dim": hidden_dim, "out_dim": out_dim, "num_layers": 2},
      # Weighted kNN on cosine similarity, over the memory split (the train split).
      "knn": {"k": knn_k, "temperature": 0.1},
      "linear": {"steps": linear_steps, "learning_rate": linear_learning_rate,
                 "weight_decay": linear_weight_decay, "batch_size": 4096},
      "memory_split": memory_split,
  })


def simclr_pretraining(config: Any, *, base_lr: float, epochs: int, warmup_epochs: int = 10,
                       weight_decay: float = 1e-6) -> None:
  """The SimCLR recipe of Chen et al. (2020): LARS with warmup and cosine decay."""
  config.recipe = "simclr"
  config.total_epochs = epochs
  config.schedule.update({"base_lr": base_lr, "warmup_epochs": warmup_epochs, "decay": "cosine",
                          "end_lr_factor": 0.0})
  config.optimizer.update({"name": "lars", "momentum": 0.9, "weight_decay": weight_decay,
                           "trust_coefficient": 0.001})


def linear_probe(config: Any, *, base_lr: float, epochs: int, weight_decay: float = 0.0) -> None:
  """Linear evaluation through the frozen encoder: only the new classifier trains."""
  config.total_epochs = epochs
  config.schedule.update({"base_lr": base_lr, "warmup_epochs": 0, "decay": "cosine",
                          "end_lr_factor": 0.0})
  config.optimizer.update({"name": "sgd", "momentum": 0.9, "nesterov": True,
                           "weight_decay": weight_decay})
  config.trainable_params = "head/.*"
  config.freeze_bn = True
  config.eval_every_epochs = 10


def simclr_smoke(config: Any, stage: str) -> None:
  """The shared part of a SimCLR config's `smoke` argument (the model is the config's)."""
  shrink_for_smoke(config)
  if stage == "pretrain":
    config.simclr.knn.k = 5
    config.simclr.linear.steps = 20
