"""The DINO recipe (Caron et al. 2021): self-distillation from an EMA teacher on multi-crop views.

The model is `dino.DINOModel`: the registered `config.model.name` built with
`num_classes=0` as the encoder (a ViT or a ResNet), plus `dino.DINOHead`
(`config.dino.head`). The teacher is the train state's `ema_params` and
`config.ema_decay` is its base momentum (0.996), raised to 1 along a cosine
(`dino.cosine_momentum`), so the teacher, the center and every schedule are in
the checkpoint and a resumed run continues bit for bit.
Step: `dino.dino_train_step`. Data: two global crops per image
(batch['image'], config.data.views=2 or `two_views` in preprocess_train) and,
when the data gives them, multi-crop's local crops (batch['local']:
config.data.local_crops=n on the digits, `local_crops(n)` in an op string).
Evaluation: the teacher's encoder features, kNN at every eval and a linear
probe at the final one (`ssl_monitor`).

config.dino fields: student_temp (0.1), teacher_temp (0.04), warmup_teacher_temp
(0.04), warmup_teacher_temp_epochs (0), center_momentum (0.9),
freeze_last_layer_epochs (1), head {out_dim, hidden_dim, bottleneck_dim,
num_layers, use_bn}, knn {k, temperature}, linear {steps, learning_rate,
weight_decay, batch_size}, memory_split.
"""

from __future__ import annotations

import functools
from typing import Any

from vision_jax import models
from vision_jax.config_util import ConfigError, durations, require_fields
from vision_jax.train import dino as dino_lib
from vision_jax.train.recipes import ssl_monitor
from vision_jax.train.recipes.base import Recipe, model_overrides, register_recipe


def build_model(config: Any, dtype: Any) -> dino_lib.DINOModel:
  """`DINOModel` from config.model (encoder, num_classes=0) and config.dino.head."""
  encoder = models.create_model(config.model.name, num_classes=0, dtype=dtype,
                                **model_overrides(config))
  head = dict(config.dino.get("head", None) or {})
  return dino_lib.DINOModel(encoder=encoder, head=dino_lib.DINOHead(
      out_dim=int(head.get("out_dim", 65536)), hidden_dim=int(head.get("hidden_dim", 2048)),
      bottleneck_dim=int(head.get("bottleneck_dim", 256)),
      num_layers=int(head.get("num_layers", 3)), use_bn=bool(head.get("use_bn", False)),
      dtype=dtype))


def steps_per_epoch(config: Any, dataset: Any) -> int:
  return max(1, int(dataset.num_train) // int(config.batch_size))


def total_steps(config: Any, dataset: Any) -> int:
  return durations(config, dataset.num_train)["total"]


class DINO(Recipe):
  """Label-free self-distillation with an EMA teacher; kNN and linear-probe monitors."""

  name = "dino"
  zero_head_on_load = False
  checkpoint_tag = "dino"

  def check(self, config: Any, dataset: Any = None) -> None:
    require_fields(config, "dino.student_temp", "dino.teacher_temp")
    block = config.dino
    for field in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
      value = block.get(field, 1.0)
      if not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"config.dino.{field}={value!r}: must be a number > 0.")
    momentum = block.get("center_momentum", 0.9)
    if not 0.0 <= float(momentum) < 1.0:
      raise ConfigError(f"config.dino.center_momentum={momentum!r}: must be in [0, 1).")
    ssl_monitor.check_ema_teacher(config, self.name, "teacher")
    ssl_monitor.check_pretraining(config, self.name)
    ssl_monitor.check_two_views(dataset, self.name, "two global crops", local_crops=True)

  def build_model(self, config: Any, dataset: Any, dtype: Any):
    del dataset  # no classifier
    return build_model(config, dtype)

  def train_step(self, config: Any, dataset: Any, model, tx, schedule):
    block = config.dino
    per_epoch = steps_per_epoch(config, dataset)
    return functools.partial(
        dino_lib.dino_train_step, model=model, tx=tx, schedule=schedule,
        total_steps=total_steps(config, dataset), momentum_base=float(config.ema_decay),
        student_temp=float(block.student_temp), teacher_temp=float(block.teacher_temp),
        warmup_teacher_temp=float(block.get("warmup_teacher_temp", block.teacher_temp)),
        warmup_teacher_temp_steps=int(round(
            float(block.get("warmup_teacher_temp_epochs", 0)) * per_epoch)),
        center_momentum=float(block.get("center_momentum", 0.9)),
        freeze_last_layer_steps=int(round(
            float(block.get("freeze_last_layer_epochs", 1)) * per_epoch)))

  def make_eval(self, config: Any, dataset: Any, model, mesh, batch_size: int):
    # DINO evaluates the teacher (the paper's choice: it is the better network).
    return ssl_monitor.make_representation_eval(config, config.dino, dataset, model, mesh,
                                                batch_size, lambda state: state.ema_params)


register_recipe(DINO())
