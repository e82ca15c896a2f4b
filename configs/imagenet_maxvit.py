r"""MaxViT-T trained from scratch on ImageNet-1k at 224, the paper's recipe.

Command:

  python -m vision_jax.main --config=configs/imagenet_maxvit.py \
      --workdir=/tmp/imagenet_maxvit_tiny --config.data.data_dir=/data/tfds

Recipe (Tu et al. 2022, "MaxViT: Multi-Axis Vision Transformer", arXiv:2204.01697,
section 4.1 and the appendix's ImageNet-1K training table): 300 epochs at batch
4096, AdamW (b1 0.9, b2 0.999), peak lr 3e-3 (scaled linearly with the batch),
weight decay 0.05 (not on biases and norms), 10k linear warmup steps then cosine
decay, RandAugment (2 layers, magnitude 15), Mixup 0.8, label smoothing 0.1,
stochastic depth 0.2 for T (0.3 / 0.4 for S / B), gradient clipping at norm 1.0;
inception crop 224 + flip for training, evaluation resizes the short side to
224 / 0.95 (bicubic) and crops 224, as timm evaluates maxvit_tiny_tf_224.
The model is the TF port's layout (`maxvit_tiny_tf_224`: 30.9M parameters).

Differences from the paper, because the pipeline lacks them: no random erasing,
RandAugment without magnitude noise, and at magnitude 10 instead of 15: the TF
RandAugment the paper uses extrapolates its ops past their level-10 range, which
ours does not (its posterize fails above 10). EMA is off (the paper reports none for
ImageNet-1k training).

Hardware and time (an estimate, not measured on this code): 384M images at 224
for MaxViT-T (5.6 GFLOPs per image as timm counts MACs, about 11 as XLA counts
FLOPs); about 3-4 days on 8 A100s in bfloat16.

Target: 83.62% ImageNet-1k top-1 for MaxViT-T at 224 (paper, Table 2; timm's port
of the released weights evaluates at 83.4%).

Arguments (`configs/imagenet_maxvit.py:key=value,...`):
  variant: 'tiny', 'small' or 'base' (drop-path 0.2 / 0.3 / 0.4).
  batch_size: global batch; lr = 3e-3 x batch_size / 4096.
  epochs: training epochs.
  smoke: MBConv stages and two one-block MaxViT stages on 32x32 for 2 steps (tests).
"""

from vision_jax.config_base import base_config, set_duration
from vision_jax.config_util import ConfigError, parse_arg, shrink_for_smoke, sibling_module

common = sibling_module(__file__, "common")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DROP_PATH = {"tiny": 0.2, "small": 0.3, "base": 0.4}
TARGET = {"tiny": 83.62, "small": 84.45, "base": 84.95}  # paper, Table 2 (ImageNet-1k, 224)


def get_config(arg=None):
  arg = parse_arg(arg, variant="tiny", batch_size=4096, epochs=300, smoke=False)
  if arg.variant not in DROP_PATH:
    raise ConfigError(f"variant={arg.variant!r}; choose one of {sorted(DROP_PATH)}.")
  size = 32 if arg.smoke else 224
  norm = f"value_range(0, 1)|normalize({IMAGENET_MEAN}, {IMAGENET_STD})"

  config = base_config()
  config.model.update({"name": f"maxvit_{arg.variant}_tf_224",
                       "overrides": {"drop_path_rate": DROP_PATH[arg.variant]}})
  config.dtype = "bfloat16"
  config.data = common.imagenet_data(
      f"inception_crop({size}, method='bicubic')|flip_lr|randaugment(2, 10)|{norm}",
      f"decode|resize_small({round(size / 0.95)}, method='bicubic')|central_crop({size})|{norm}")
  config.data.mix = "mixup(0.8)"
  config.batch_size = arg.batch_size
  config.eval_batch_size = 1000
  config.total_epochs = arg.epochs
  config.schedule.update({
      "base_lr": 3e-3 * arg.batch_size / 4096, "decay": "cosine", "end_lr_factor": 0.0})
  set_duration(config.schedule, "warmup", steps=10_000)
  config.optimizer.update({"name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 0.05})
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.1
  config.log_every_steps = 100
  config.eval_every_epochs = 10
  config.checkpoint_every_steps = 2000
  config.zero_init_head = False
  if arg.smoke:
    config.model.overrides = {
        "drop_path_rate": 0.1, "img_size": size, "depths": (1, 1, 1, 1),
        "embed_dims": (8, 8, 16, 16), "stem_width": (8, 8), "dim_head": 8,
        "head_hidden_size": 16, "block_types": ("C", "C", "M", "M")}
    shrink_for_smoke(config)
    config.schedule.base_lr = 3e-3 * 16 / 4096
  return config
