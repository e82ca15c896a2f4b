r"""ResNet v1.5 on ImageNet-1k, the Goyal et al. recipe (and a cosine / label-smoothing variant).

Command (ImageNet prepared with tfds, see docs/data.md):

  python -m vision_jax.main --config=configs/imagenet_resnet.py:depth=50 \
      --workdir=/tmp/imagenet_resnet50 --config.data.data_dir=/data/tfds

  variant=cosine: cosine decay and label smoothing 0.1 instead of the step schedule.

Recipe (Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1
Hour", arXiv:1706.02677): 90 epochs, SGD momentum 0.9, lr 0.1 x B/256 (0.4 at
the default batch 1024) with 5 epochs of linear warmup, divided by 10 at epochs
30, 60 and 80; weight decay 1e-4 on the weights only (the trainer skips biases
and BatchNorm parameters); the last BatchNorm gamma of every residual block
starts at zero (the resnet module's default, zero_init_last_bn=True). Data:
inception crop 224 + flip; evaluation resize 256, centre crop 224; ImageNet
mean/std normalisation.

Hardware and time (an estimate, not measured on this code): about 8 V100-class
GPUs (or a TPU v3-8) for one to two days for ResNet-50 in bfloat16; Goyal et al.
did it in one hour on 256 P100 GPUs at batch 8192 (set --config.batch_size=8192:
the learning rate follows the B/256 rule).

Target: ResNet-50 76.3% top-1 on the ImageNet validation set (Goyal et al.,
23.74 +- 0.09% top-1 error at batch 8k with gradual warmup; 23.60% at batch 256).
The cosine / label-smoothing variant has no number in that paper; He et al. 2019
("Bag of Tricks", arXiv:1812.01187, Table 6) report that cosine decay and label
smoothing each add a few tenths of a point on ResNet-50-D.

Arguments (`configs/imagenet_resnet.py:key=value,...`):
  depth: 18, 34, 50, 101, 152 or 200 (registered resnet{depth}).
  variant: 'step' (Goyal et al.) or 'cosine' (cosine decay + label smoothing 0.1).
  batch_size: global batch; the learning rate is 0.1 x batch_size / 256.
  smoke: a tiny ResNet for 2 steps on 32x32 crops (tests, on tfds.testing.mock_data).
"""

from vision_jax.config_base import base_config
from vision_jax.config_util import ConfigError, parse_arg, shrink_for_smoke, sibling_module

common = sibling_module(__file__, "common")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEPTHS = (18, 34, 50, 101, 152, 200)


def get_config(arg=None):
  arg = parse_arg(arg, depth=50, variant="step", batch_size=1024, smoke=False)
  if arg.depth not in DEPTHS:
    raise ConfigError(f"depth={arg.depth}; choose one of {DEPTHS}.")
  if arg.variant not in ("step", "cosine"):
    raise ConfigError(f"variant={arg.variant!r}; choose 'step' or 'cosine'.")
  size, resize = (32, 36) if arg.smoke else (224, 256)
  norm = f"value_range(0, 1)|normalize({IMAGENET_MEAN}, {IMAGENET_STD})"

  config = base_config()
  config.model.update({"name": f"resnet{arg.depth}", "overrides": {}})
  config.dtype = "bfloat16"
  config.data = common.imagenet_data(
      f"inception_crop({size})|flip_lr|{norm}",
      f"decode|resize_small({resize})|central_crop({size})|{norm}")
  config.batch_size = arg.batch_size
  config.eval_batch_size = 1000
  config.total_epochs = 90
  config.schedule.update({
      "base_lr": 0.1 * arg.batch_size / 256, "warmup_epochs": 5})
  if arg.variant == "step":
    config.schedule.decay = "step"
    config.schedule.boundaries = (30 / 90, 60 / 90, 80 / 90)
    config.schedule.decay_factor = 0.1
  else:
    config.schedule.decay = "cosine"
    config.schedule.end_lr_factor = 0.0
    config.label_smoothing = 0.1
  config.optimizer.update(
      {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4})
  config.log_every_steps = 100
  config.eval_every_epochs = 10
  config.checkpoint_every_steps = 2000
  config.zero_init_head = False
  if arg.smoke:
    config.model.overrides = {"stage_sizes": (1, 1, 1, 1), "widths": (8, 8, 16, 16),
                              "stem_width": 8}
    shrink_for_smoke(config)
    config.schedule.base_lr = 0.1 * 16 / 256
  return config
