r"""BYOL on the embedded digits: label-free pretraining, then kNN and linear probes. CPU.

  python -m vision_jax.main --config=configs/byol_digits.py --workdir=/tmp/byol_digits

Pretraining never reads a label. Each training digit gives two views
(`digits.simclr_view`, 16x16, as the SimCLR digits config). Encoder:
cifar_resnet20 (64 features); projector and predictor: Dense 256, BatchNorm,
ReLU, Dense 64. Target = EMA of the online network, tau 0.99 -> 1 (cosine).
LARS (biases and norms excluded from weight decay and adaptation), warmup +
cosine, lr 0.2 x batch / 256 (the paper's base rate), weight decay 1.5e-6.

Evaluation (labels used only here): the online encoder's features of the
train split and of the 360 test digits; weighted kNN every `eval_every` and,
at the end, a linear probe (`train/simclr.linear_eval`). The run reports
knn_top1 and linear_top1.

Arguments: smoke, epochs, model, batch_size, lr.
"""

import ml_collections

from vision_jax.config_base import base_config
from vision_jax.config_util import parse_arg, shrink_for_smoke


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False, epochs=0, model="cifar_resnet20", batch_size=256, lr=0.0)
  config = base_config()
  config.recipe = "byol"
  config.model.update({"name": arg.model, "overrides": {}})
  config.data = ml_collections.ConfigDict(
      {"name": "digits", "image_size": 16, "augment": "simclr", "views": 2})
  config.batch_size = arg.batch_size
  config.eval_batch_size = 360
  config.total_epochs = arg.epochs or 100
  config.ema_decay = 0.99  # the target's base momentum tau_base
  config.schedule.update({"base_lr": arg.lr or 0.2 * arg.batch_size / 256, "warmup_epochs": 10,
                          "decay": "cosine"})
  config.optimizer.update(
      {"name": "lars", "momentum": 0.9, "weight_decay": 1.5e-6, "trust_coefficient": 0.001})
  config.byol = ml_collections.ConfigDict({
      "head": {"hidden_dim": 256, "out_dim": 64},
      "knn": {"k": 20, "temperature": 0.1},
      "linear": {"steps": 2000, "learning_rate": 1e-2, "weight_decay": 1e-4, "batch_size": 4096},
      "memory_split": "train",
  })
  config.eval_every_epochs = 25
  config.checkpoint_every_epochs = 25
  if arg.smoke:
    shrink_for_smoke(config)
    config.eval_batch_size = 64
    config.byol.linear.steps = 20
  return config
