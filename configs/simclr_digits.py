r"""SimCLR on the embedded digits: label-free pretraining, then linear evaluation. Offline, CPU.

  python -m vision_jax.main --config=configs/simclr_digits.py --workdir=/tmp/simclr_digits

Pretraining never reads a label. Each of the 1,437 training digits gives two
views (`digits.simclr_view`: random resized crop of the 8x8 original to 16x16,
brightness/contrast jitter, pixel noise, random erasing; no flips, a flipped
digit is another symbol). Encoder: cifar_resnet20 (0.27M parameters, 64
features); projection head: 2-layer MLP with BatchNorm to 64 dimensions.
NT-Xent at temperature 0.5 over the global batch of 512 views; LARS, warmup +
cosine, weight decay 1e-6 on kernels only (the paper's settings, lr scaled as
0.075 x sqrt(batch), the paper's rule for small batches).

Evaluation (labels used only here): frozen encoder features of the train split
(eval preprocessing) and the 360 test digits; a weighted kNN every
`eval_every` and, at the end, a linear softmax classifier trained on the
standardised features (`train/simclr.linear_eval`). The run reports knn_top1
and linear_top1.

Hardware and time: 2 CPU cores, about 8 minutes for the whole process.
Target: linear_top1 above both baselines of experiments/simclr_digits.py, which
runs the same linear evaluation on a randomly initialised encoder and on raw
pixels. Measured (seeds 0, 1, 2): linear_top1 98.9 / 99.7 / 98.6%, knn_top1
98.1 / 99.2 / 98.6%; random encoder 77.5% (mean, same probe); raw pixels 95.6%
(same probe), 96.7% with scikit-learn's logistic regression on the 8x8 pixels.
stage=linear from the seed-0 run: 97.8% eval_top1.

Second stage (`stage=linear`): the paper's protocol instead of frozen features:
a linear head trained through the frozen encoder (config.trainable_params, frozen
BN statistics) with the digits' shift augmentation, started from the pretraining
workdir:

  python -m vision_jax.main --config=configs/simclr_digits.py:stage=linear \
      --config.init_from=/tmp/simclr_digits --workdir=/tmp/simclr_digits_linear

Arguments: smoke, stage (pretrain|linear), epochs, model, batch_size, lr (None:
0.075 x sqrt(batch)), temperature.
"""

import math

import ml_collections

from vision_jax.config_base import base_config
from vision_jax.config_util import ConfigError, parse_arg, shrink_for_smoke


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False, stage="pretrain", epochs=0, model="cifar_resnet20",
                  batch_size=256, lr=0.0, temperature=0.5)
  if arg.stage not in ("pretrain", "linear"):
    raise ConfigError(f"stage={arg.stage!r}: use stage=pretrain or stage=linear.")
  config = base_config()
  config.model.update({"name": arg.model, "overrides": {}})
  config.eval_batch_size = 360
  if arg.stage == "pretrain":
    config.recipe = "simclr"
    config.data = ml_collections.ConfigDict(
        {"name": "digits", "image_size": 16, "augment": "simclr", "views": 2})
    config.batch_size = arg.batch_size
    config.total_epochs = arg.epochs or 100
    config.schedule.update(
        {"base_lr": arg.lr or 0.075 * math.sqrt(arg.batch_size), "warmup_epochs": 10,
         "decay": "cosine"})
    config.optimizer.update(
        {"name": "lars", "momentum": 0.9, "weight_decay": 1e-6, "trust_coefficient": 0.001})
    config.simclr = ml_collections.ConfigDict({
        "temperature": arg.temperature,
        "head": {"hidden_dim": None, "out_dim": 64, "num_layers": 2},
        # Weighted kNN on cosine similarity, over the memory split (the train split).
        "knn": {"k": 20, "temperature": 0.1},
        "linear": {"steps": 2000, "learning_rate": 1e-2, "weight_decay": 1e-4,
                   "batch_size": 4096},
        "memory_split": "train",
    })
    config.eval_every_epochs = 25
    config.checkpoint_every_epochs = 25
  else:
    # Linear evaluation through the frozen encoder: only the new classifier trains.
    config.data = ml_collections.ConfigDict({"name": "digits", "image_size": 16, "max_shift": 2})
    config.batch_size = 128
    config.total_epochs = arg.epochs or 30
    config.schedule.update(
        {"base_lr": arg.lr or 0.1, "warmup_epochs": 0, "decay": "cosine"})
    config.optimizer.update(
        {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.0})
    config.trainable_params = "head/.*"
    config.freeze_bn = True
    config.checkpoint_every_epochs = 10
  if arg.smoke:
    shrink_for_smoke(config)
    config.eval_batch_size = 64
    if arg.stage == "pretrain":
      config.simclr.linear.steps = 20
  return config
