r"""ConvNeXt-T trained from scratch on ImageNet-1k, the paper's recipe.

Command:

  python -m vision_jax.main --config=configs/imagenet_convnext.py \
      --workdir=/tmp/imagenet_convnext_tiny --config.data.data_dir=/data/tfds

Recipe (Liu et al. 2022, "A ConvNet for the 2020s", arXiv:2201.03545, appendix A.1,
ImageNet-1K training settings): 300 epochs, AdamW (b1 0.9, b2 0.999), lr 4e-3 at
batch 4096 (scaled linearly with the batch), weight decay 0.05 (not on biases and
norms), 20 warmup epochs then cosine decay, RandAugment (2 layers, magnitude 9),
Mixup 0.8 / CutMix 1.0 (one of the two per batch, as timm), label smoothing 0.1,
stochastic depth 0.1 for T (0.4 / 0.5 for S / B), layer scale 1e-6, EMA of the
weights with decay 0.9999, random erasing 0.25 (timm's per-pixel noise, after
normalisation); inception crop 224 + flip for training, evaluation resizes the
short side to 256 (bicubic) and crops 224.

Difference from the paper, because the pipeline lacks it: RandAugment without
timm's magnitude noise (mstd 0.5).

Hardware and time (an estimate, not measured on this code): 384M images at 224
for ConvNeXt-T (4.5 GMACs per image); about 2-3 days on 8 A100s in bfloat16.

Target: 82.1% ImageNet-1k top-1 for ConvNeXt-T at 224 (paper, Table 1).

Arguments (`configs/imagenet_convnext.py:key=value,...`):
  variant: 'tiny', 'small' or 'base' (drop-path 0.1 / 0.4 / 0.5).
  batch_size: global batch; lr = 4e-3 x batch_size / 4096.
  epochs: training epochs.
  smoke: a one-block-per-stage ConvNeXt on 32x32 for 2 steps (tests, tfds mock data).
"""

from vision_jax.config_base import base_config
from vision_jax.config_util import ConfigError, parse_arg, shrink_for_smoke, sibling_module

common = sibling_module(__file__, "common")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DROP_PATH = {"tiny": 0.1, "small": 0.4, "base": 0.5}
TARGET = {"tiny": 82.1, "small": 83.1, "base": 83.8}  # paper, Table 1 (ImageNet-1k, 224)


def get_config(arg=None):
  arg = parse_arg(arg, variant="tiny", batch_size=4096, epochs=300, smoke=False)
  if arg.variant not in DROP_PATH:
    raise ConfigError(f"variant={arg.variant!r}; choose one of {sorted(DROP_PATH)}.")
  size = 32 if arg.smoke else 224
  norm = f"value_range(0, 1)|normalize({IMAGENET_MEAN}, {IMAGENET_STD})"

  config = base_config()
  config.model.update({
      "name": f"convnext_{arg.variant}",
      "overrides": {"drop_path_rate": DROP_PATH[arg.variant], "layer_scale_init": 1e-6}})
  config.dtype = "bfloat16"
  config.data = common.imagenet_data(
      f"inception_crop({size}, method='bicubic')|flip_lr|randaugment(2, 9)|{norm}"
      "|random_erasing(0.25)",
      f"decode|resize_small({size * 8 // 7}, method='bicubic')|central_crop({size})|{norm}")
  config.data.mix = "mixup_or_cutmix(0.8, 1.0)"
  config.batch_size = arg.batch_size
  config.eval_batch_size = 1000
  config.total_epochs = arg.epochs
  config.schedule.update({
      "base_lr": 4e-3 * arg.batch_size / 4096, "warmup_epochs": 20, "decay": "cosine",
      "end_lr_factor": 0.0})
  config.optimizer.update({"name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 0.05})
  config.label_smoothing = 0.1
  config.ema_decay = 0.9999
  config.log_every_steps = 100
  config.eval_every_epochs = 10
  config.checkpoint_every_steps = 2000
  config.zero_init_head = False
  if arg.smoke:
    config.model.overrides = {"drop_path_rate": 0.1, "depths": (1, 1, 1, 1),
                              "widths": (8, 8, 16, 16)}
    shrink_for_smoke(config)
    config.schedule.base_lr = 4e-3 * 16 / 4096
  return config
