r"""The embedded default experiment: a small ResNet on scikit-learn's digits.

Runs offline from a fresh install on a laptop CPU:

  python -m vision_jax.main --config=configs/digits.py --workdir=/tmp/digits

Data: the 1,797 real 8x8 handwritten digits shipped in the package, split
80/20 (stratified, fixed; 1,437 train / 360 test), upscaled to 16x16, random
shifts of up to 2 pixels for training.
Model: cifar_resnet20 (He et al. 2016, 0.27M parameters): 3x3 stem, no max-pool.
Hardware and time: 2 CPU cores, about 2 minutes for the whole process.
Target: test top-1 >= 98.5% (an RBF SVM reaches about 99.1% on such a split).

Arguments (`configs/digits.py:key=value,...`):
  smoke: a few steps on a tiny batch, for tests.
  epochs: training length.
  model: any registered model that accepts small inputs.
  classes: the digits to keep, e.g. "01234" (relabelled 0..k-1).
  shots: keep only this many training images per class (0: all).
  lr: peak learning rate.

Transfer check (experiments/digits_transfer.py): pretrain on classes=01234, then
fine-tune with classes=56789,shots=10 and --config.init_from=<pretrain workdir>,
against the same run from scratch.
"""

import ml_collections

from vision_jax.config_base import base_config
from vision_jax.config_util import parse_arg, shrink_for_smoke


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False, epochs=30, model="cifar_resnet20", image_size=16,
                  classes="0123456789", shots=0, lr=0.1)
  config = base_config()
  config.model.update({"name": arg.model, "overrides": {}})
  config.data = ml_collections.ConfigDict(
      {"name": "digits", "image_size": arg.image_size, "max_shift": 2,
       "classes": tuple(int(c) for c in arg.classes),
       "train_per_class": arg.shots or None})
  # Few-shot runs hold shots x classes images: the largest batch (multiple of 8) that fits.
  config.batch_size = 64 if not arg.shots else (arg.shots * len(arg.classes)) // 8 * 8
  config.eval_batch_size = 360
  config.total_epochs = arg.epochs
  config.schedule.update(
      {"base_lr": arg.lr, "warmup_epochs": 1, "decay": "cosine"})
  config.optimizer.update(
      {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4})
  config.checkpoint_every_steps = 200
  # init_from: another run's workdir or a tools/convert_weights.py directory; the
  # classifier (dont_load) keeps its fresh, zeroed init.
  if arg.smoke:
    shrink_for_smoke(config, steps=4, batch_size=16)
    # Two checkpoints in the 4 steps, so that resume tests can stop half-way.
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_batch_size = 64
  return config
