r"""BiT-M upstream: ResNetV2 (GroupNorm + weight standardisation) pretrained on ImageNet-21k.

Command (ImageNet-21k as an image folder, as in configs/imagenet21k_vit_hybrid.py):

  python -m vision_jax.main --config=configs/bit_pretrain.py:data=folder:/data/imagenet21k \
      --workdir=/tmp/bitm_r50x1

then transfer with configs/transfer.py:model=resnetv2_50x1_bit,dataset=cifar10,init_from=/tmp/bitm_r50x1.

Data: root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG (tensorflow-datasets
has no ImageNet-21k builder; val is a held-out part of the training images).
Inception crop 224 + flip, values in [-1, 1] (the BiT convention).

Recipe (Kolesnikov et al. 2020, "Big Transfer (BiT)", arXiv:1912.11370, section
3.1, BiT-M): SGD momentum 0.9, lr 0.03 x B/256 (0.48 at batch 4096), 5,000 linear
warmup steps, 90 epochs with the learning rate divided by 10 at epochs 30, 60
and 80, weight decay 1e-4; GroupNorm and weight-standardised convolutions
(the resnetv2_*_bit models).

Hardware and time (an estimate, not measured on this code): 90 epochs of ~14M
images; R50x1 takes on the order of a week on a TPU v3-8 / 8 A100s in
bfloat16, the x3/x4 widths many times more (the BiT paper trains BiT-M on
Cloud TPU v3 pods).

Target: the upstream run is judged downstream. Transferred with BiT-HyperRule
(configs/transfer.py), BiT-M R50x1 reaches CIFAR-10 97.3% and CIFAR-100 86.4%
(medians in the google-research/big_transfer README).

Arguments (`configs/bit_pretrain.py:key=value,...`):
  data: 'folder:/path' with train/ and val/ split folders (or a tfds name).
  model: a registered resnetv2_*_bit (default resnetv2_50x1_bit).
  batch_size: global batch; lr = 0.03 x batch_size / 256.
  smoke: a one-block-per-stage ResNetV2 on 32x32 for 2 steps (tests).
"""

from vision_jax.config_base import base_config
from vision_jax.config_util import parse_arg, shrink_for_smoke, sibling_module

common = sibling_module(__file__, "common")


def get_config(arg=None):
  arg = parse_arg(arg, data="folder:/data/imagenet21k", model="resnetv2_50x1_bit",
                  batch_size=4096, epochs=90, smoke=False)
  size = 32 if arg.smoke else 224
  config = base_config()
  config.model.update({"name": arg.model, "overrides": {}})
  config.dtype = "bfloat16"
  config.data = common.data(
      arg.data, f"inception_crop({size})|flip_lr|value_range(-1, 1)",
      f"decode|resize_small({size})|central_crop({size})|value_range(-1, 1)", eval_split="val")
  if arg.data.startswith("folder:"):
    config.data.validate_files = "header"  # ~14M files: a full decode check is too slow
  config.batch_size = arg.batch_size
  config.eval_batch_size = 1024
  config.total_epochs = arg.epochs
  config.schedule.update({
      "base_lr": 0.03 * arg.batch_size / 256, "warmup_steps": 5000, "decay": "step",
      "boundaries": (30 / 90, 60 / 90, 80 / 90), "decay_factor": 0.1})
  config.optimizer.update(
      {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4})
  config.log_every_steps = 100
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 2000
  if arg.smoke:
    config.model.overrides = {"layers": (1, 1), "channels": (128, 128),
                              "stem_chs": 32}
    shrink_for_smoke(config)
    config.data.validate_files = "full"
    config.schedule.base_lr = 0.03 * 16 / 256
  return config
