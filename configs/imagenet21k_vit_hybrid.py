r"""R50+ViT-B/16 (ViT-hybrid) pretraining on ImageNet-21k at 224 (the upstream half).

Command (ImageNet-21k as an image folder, see below):

  python -m vision_jax.main --config=configs/imagenet21k_vit_hybrid.py:data=folder:/data/imagenet21k \
      --workdir=/tmp/in21k_r50_vitb16

then fine-tune on ImageNet-1k at 384 with configs/imagenet_vit.py:init_from=/tmp/in21k_r50_vitb16.

Data: tensorflow-datasets has no ImageNet-21k builder, so the 21k release
(fall11/winter21, ~14M images, 21,843 classes in the fall11 release) is read
as a folder: root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG, with val a
small held-out part of the training images (the ViT paper holds out a
fraction of the training set; there is no official validation split).
Inception crop 224 + flip, values in [-1, 1] (the ViT/timm convention).

Recipe (Dosovitskiy et al. 2021, arXiv:2010.11929, Table 3 and Appendix B.1,
ImageNet-21k row): Adam (b1 0.9, b2 0.999), batch 4096, base lr 1e-3 with 10k
warmup steps and linear decay, weight decay 0.03 (optax.adamw, scaled by the
learning rate as in the original Flax optimizer), gradient clipping at global
norm 1, dropout 0.1, 90 epochs, resolution 224.

Hardware and time (an estimate, not measured on this code): about 1.2 billion
images seen; on the order of a week on a TPU v3-8 / 8 A100s in bfloat16.

Target: the upstream run has no reported accuracy of its own. Its use is
downstream: fine-tuned on ImageNet-1k at 384 (configs/imagenet_vit.py) the ViT
paper (Table 6) and the google-research/vision_transformer README report
83.7-85.1% top-1 for the ImageNet-21k-pretrained R50+ViT-B/16 (range as
quoted in issue 5; check the table entry for the exact setting).

Arguments (`configs/imagenet21k_vit_hybrid.py:key=value,...`):
  data: 'folder:/path' with train/ and val/ split folders (or a tfds name).
  model: a registered ViT or ViT-hybrid at 224 (default vit_base_r50_s16_224).
  batch_size: global batch (lr is not rescaled: the paper uses 4096).
  smoke: a one-block hybrid on 32x32 for 2 steps (tests).
"""

from vision_jax.config_base import base_config
from vision_jax.config_util import parse_arg, shrink_for_smoke, sibling_module

common = sibling_module(__file__, "common")


def get_config(arg=None):
  arg = parse_arg(arg, data="folder:/data/imagenet21k", model="vit_base_r50_s16_224",
                  batch_size=4096, epochs=90, smoke=False)
  size = 32 if arg.smoke else 224
  config = base_config()
  config.model.update({
      "name": arg.model, "overrides": {"pos_drop_rate": 0.1, "proj_drop_rate": 0.1}})
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
      "base_lr": 1e-3, "warmup_steps": 10_000, "decay": "linear", "end_lr_factor": 0.0})
  config.optimizer.update({
      "name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 0.03, "grad_clip_norm": 1.0})
  config.log_every_steps = 100
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 2000
  if arg.smoke:
    config.model.overrides = {"img_size": 32, "backbone_layers": (), "patch_size": 4,
                              "width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2,
                              "pos_drop_rate": 0.1, "proj_drop_rate": 0.1}
    shrink_for_smoke(config)
    config.data.validate_files = "full"
  return config
