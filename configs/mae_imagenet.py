r"""MAE on ImageNet-1k: ViT-B/16 masked-autoencoder pretraining (1600 epochs), then fine-tuning.

Pretraining:

  python -m vision_jax.main --config=configs/mae_imagenet.py \
      --workdir=/tmp/mae_vitb16 --config.data.data_dir=/data/tfds

Fine-tuning (stage=finetune: the pretrained encoder loads into
vit_base_patch16_224 with a fresh zero classifier; the decoder is dropped):

  python -m vision_jax.main --config=configs/mae_imagenet.py:stage=finetune \
      --config.init_from=/tmp/mae_vitb16 --workdir=/tmp/mae_vitb16_ft \
      --config.data.data_dir=/data/tfds

Recipe (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners",
arXiv:2111.06377, appendix A.1 and A.2):
- Pretraining: encoder ViT-B/16 on the 25% visible patches; decoder width 512,
  8 blocks, 16 heads; mask ratio 0.75, per-sample random masking; loss: MSE on
  the masked patches of per-patch normalised pixels. AdamW (b1 0.9, b2 0.95),
  batch 4096, lr 1.5e-4 x B/256 = 2.4e-3, 40 warmup epochs, cosine; weight
  decay 0.05; random resized crop (20%-100%) + flip only.
- Fine-tuning: 100 epochs, batch 1024, AdamW (0.9, 0.999), lr 5e-4 x B/256 =
  2e-3, 5 warmup epochs, cosine, weight decay 0.05, layer-wise lr decay 0.65,
  stochastic depth 0.1, label smoothing 0.1, RandAugment (9, 0.5), mixup 0.8 /
  CutMix 1.0. The same recipe goes through configs/transfer.py's path (init_from
  + config.optimizer.layer_decay) for other datasets.
Differences: our ViT reads out the class token (the paper fine-tunes with
global average pooling) and learns its position embeddings (the paper fixes
them to 2-D sine-cosine); random erasing is not applied.

Hardware and time (the paper's appendix: 1600 epochs of ViT-L took 128 TPU v3
cores about 31 hours; an estimate for ViT-B on 8 A100s: the encoder runs on a
quarter of the tokens, ~17.6 x 0.25 x 3 + decoder ~ 16 GFLOPs per image and
step, 3.3e19 FLOPs for 1600 epochs, about 2 days at 30-40% of their bfloat16
peak; fine-tuning, 100 epochs at ~53 GFLOPs per image: 6.8e18 FLOPs, about 10 hours).

Target: 83.6% top-1 after fine-tuning (facebookresearch/mae README, ViT-B);
linear probing ViT-B/16: 68.0% (paper, Table 9 / README).

Arguments: stage (pretrain|finetune), epochs, batch_size, smoke.
"""

import ml_collections

from vision_jax.config_base import base_config
from vision_jax.config_util import ConfigError, parse_arg, shrink_for_smoke


def get_config(arg=None):
  arg = parse_arg(arg, stage="pretrain", epochs=0, batch_size=0, smoke=False)
  if arg.stage not in ("pretrain", "finetune"):
    raise ConfigError(f"stage={arg.stage!r}: use stage=pretrain or stage=finetune.")
  size, resize = (32, 36) if arg.smoke else (224, 256)
  config = base_config()
  config.model.update({"name": "vit_base_patch16_224", "overrides": {}})
  config.dtype = "bfloat16"
  eval_ops = f"decode|resize_small({resize})|central_crop({size})|value_range(-1, 1)"
  if arg.stage == "pretrain":
    batch = arg.batch_size or 4096
    config.recipe = "mae"
    config.data = ml_collections.ConfigDict({
        "name": "imagenet2012", "train_split": "train", "eval_split": "validation",
        "preprocess_train": (f"decode|inception_crop({size}, area_min=0.2)|flip_lr|"
                             "value_range(-1, 1)"),
        "preprocess_eval": eval_ops,
    })
    config.total_epochs = arg.epochs or 1600
    config.schedule.update({"base_lr": 1.5e-4 * batch / 256, "warmup_epochs": 40,
                            "decay": "cosine", "end_lr_factor": 0.0})
    config.optimizer.update({"name": "adamw", "b1": 0.9, "b2": 0.95, "weight_decay": 0.05})
    config.mae = ml_collections.ConfigDict({
        "mask_ratio": 0.75, "norm_pix_loss": True, "channels": 3,
        "decoder": {"width": 512, "depth": 8, "num_heads": 16, "mlp_dim": 2048},
        "knn": {"k": 20, "temperature": 0.07},
        "linear": {"steps": 5000, "learning_rate": 1e-3, "weight_decay": 0.0,
                   "batch_size": 4096},
        "memory_split": "train[:50000]",
    })
    config.eval_every_epochs = config.total_epochs / 10
  else:
    batch = arg.batch_size or 1024
    config.model.overrides = {"drop_path_rate": 0.1}
    config.data = ml_collections.ConfigDict({
        "name": "imagenet2012", "train_split": "train", "eval_split": "validation",
        "preprocess_train": (f"decode|inception_crop({size})|flip_lr|randaugment(2, 9)|"
                             "value_range(-1, 1)"),
        "preprocess_eval": eval_ops,
        "mix": "mixup_or_cutmix(0.8, 1.0)",
    })
    config.total_epochs = arg.epochs or 100
    config.label_smoothing = 0.1
    config.schedule.update({"base_lr": 5e-4 * batch / 256, "warmup_epochs": 5,
                            "decay": "cosine", "end_lr_factor": 0.0})
    config.optimizer.update({"name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 0.05,
                             "layer_decay": 0.65})
    config.eval_every_epochs = 10
  config.batch_size = batch
  config.eval_batch_size = 1000
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  if arg.smoke:
    config.model.overrides = {"img_size": 32, "patch_size": 8, "width": 32, "depth": 2,
                              "num_heads": 2, "mlp_dim": 64}
    shrink_for_smoke(config)
    if arg.stage == "pretrain":
      config.mae.decoder = {"width": 16, "depth": 1, "num_heads": 2, "mlp_dim": 32}
      config.mae.knn.k = 5
      config.mae.linear.steps = 20
      config.mae.memory_split = "train[:50%]"
  return config
