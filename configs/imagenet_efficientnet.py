r"""EfficientNet-B0..B7 on ImageNet-1k, the Tan & Le recipe.

Command (ImageNet prepared with tfds, see docs/data.md):

  python -m vision_jax.main --config=configs/imagenet_efficientnet.py:variant=b0 \
      --workdir=/tmp/imagenet_efficientnet_b0 --config.data.data_dir=/data/tfds

Recipe (Tan & Le 2019, arXiv:1905.11946, section 5.2, and the TPU reference
implementation it describes): RMSProp (decay 0.9, momentum 0.9, eps 1e-3 inside
the square root, TensorFlow style), BatchNorm momentum 0.99, weight decay 1e-5,
lr 0.016 x B/256 (0.256 at the default batch 4096) with 5 warmup epochs, then
x0.97 every 2.4 epochs (staircase; `decay_every` is 2.4 x 1,281,167 / B steps),
350 epochs, label smoothing 0.1, AutoAugment, stochastic depth with survival
probability 0.8 (drop_path_rate 0.2), dropout before the head rising from 0.2
(B0) to 0.5 (B7) (the registered variants carry it), EMA of the weights with
decay 0.9999 (evaluation uses the EMA). Input size per variant: B0 224, B1 240,
B2 260, B3 300, B4 380, B5 456, B6 528, B7 600 (bicubic inception crop + flip;
evaluation: resize the shorter side to size + 32, centre crop).

Hardware and time (an estimate, not measured on this code): B0 takes roughly a
day on a TPU v3-32 class slice at batch 4096 in bfloat16; B7 (600px) needs
several times that and a larger slice or FSDP (--config.fsdp=True).

Targets, ImageNet top-1 (Tan & Le, Table 2): B0 77.1, B1 79.1, B2 80.1, B3 81.6,
B4 82.9, B5 83.6, B6 84.0, B7 84.3.

Arguments (`configs/imagenet_efficientnet.py:key=value,...`):
  variant: b0 ... b7.
  batch_size: global batch; lr = 0.016 x batch_size / 256.
  smoke: a narrow, shallow B0-style net on 32x32 for 2 steps (tests, tfds mock data).
"""

from vision_jax.config_base import base_config
from vision_jax.config_util import ConfigError, parse_arg, shrink_for_smoke, sibling_module

common = sibling_module(__file__, "common")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_TRAIN = 1_281_167
RESOLUTION = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528,
              "b7": 600}
TARGET = {"b0": 77.1, "b1": 79.1, "b2": 80.1, "b3": 81.6, "b4": 82.9, "b5": 83.6, "b6": 84.0,
          "b7": 84.3}


def get_config(arg=None):
  arg = parse_arg(arg, variant="b0", batch_size=4096, epochs=350, smoke=False)
  if arg.variant not in RESOLUTION:
    raise ConfigError(f"variant={arg.variant!r}; choose one of {sorted(RESOLUTION)}.")
  size = 32 if arg.smoke else RESOLUTION[arg.variant]
  norm = f"value_range(0, 1)|normalize({IMAGENET_MEAN}, {IMAGENET_STD})"

  config = base_config()
  config.model.update({
      "name": f"efficientnet_{arg.variant}",
      "overrides": {"bn_momentum": 0.99, "drop_path_rate": 0.2}})
  config.dtype = "bfloat16"
  config.data = common.imagenet_data(
      f"inception_crop({size}, method='bicubic')|flip_lr|autoaugment|{norm}",
      f"decode|resize_small({size + 32}, method='bicubic')|central_crop({size})|{norm}")
  config.batch_size = arg.batch_size
  config.eval_batch_size = 1000
  config.total_epochs = arg.epochs
  config.schedule.update({
      "base_lr": 0.016 * arg.batch_size / 256,
      "warmup_epochs": 5,
      "decay": "exponential",
      "decay_factor": 0.97,
      "decay_every": max(1, round(2.4 * IMAGENET_TRAIN / arg.batch_size)),
  })
  config.optimizer.update({
      "name": "rmsprop", "decay": 0.9, "momentum": 0.9, "eps": 1e-3, "weight_decay": 1e-5})
  config.label_smoothing = 0.1
  config.ema_decay = 0.9999
  config.log_every_steps = 100
  config.eval_every_epochs = 10
  config.checkpoint_every_steps = 2000
  config.zero_init_head = False
  if arg.smoke:
    config.model.overrides = {"bn_momentum": 0.99, "drop_path_rate": 0.2, "width_mult": 0.25,
                              "depth_mult": 0.1, "head_width": 64}
    shrink_for_smoke(config)
    config.schedule.base_lr = 0.016 * 16 / 256
    config.schedule.decay_every = 1
  return config
