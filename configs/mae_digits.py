r"""MAE on the embedded digits: masked-autoencoder pretraining of a small ViT. CPU.

  python -m vision_jax.main --config=configs/mae_digits.py --workdir=/tmp/mae_digits

Pretraining never reads a label. Images: the 16x16 digits (one channel) with
the supervised shift augmentation (MAE uses only light augmentation). Encoder:
vit_tiny_patch16_224's architecture shrunk to the digits: 16x16 inputs, 4x4
patches (16 patches), width 64, depth 4, 4 heads, MLP 128 (~0.2M parameters);
decoder: width 32, depth 2, 2 heads. 75% of the patches masked per image,
normalised-pixel loss on the masked patches. AdamW (b2 0.95, weight decay
0.05), warmup + cosine, lr 1.5e-4 x batch / 256 x 10 (a small model learns at
a larger rate).

Evaluation (labels used only here): class-token features of the unmasked
encoder on the train split and the 360 test digits; weighted kNN every
`eval_every` and, at the end, a linear probe. The run reports knn_top1 and
linear_top1.

Fine-tuning the pretrained encoder with a classifier (stage=finetune: the
same ViT with a zero-initialised 10-way head, AdamW with layer decay 0.75, the
shift augmentation; the encoder loads from the MAE workdir, the decoder is
dropped):

  python -m vision_jax.main --config=configs/mae_digits.py:stage=finetune \
      --config.init_from=/tmp/mae_digits --workdir=/tmp/mae_digits_ft

Arguments: smoke, stage (pretrain|finetune), epochs, batch_size, lr, mask_ratio.
"""

import ml_collections

from vision_jax.config_base import base_config
from vision_jax.config_util import ConfigError, parse_arg, shrink_for_smoke

ENCODER = {"img_size": 16, "patch_size": 4, "width": 64, "depth": 4, "num_heads": 4,
           "mlp_dim": 128}


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False, stage="pretrain", epochs=0, batch_size=256, lr=0.0,
                  mask_ratio=0.75)
  if arg.stage not in ("pretrain", "finetune"):
    raise ConfigError(f"stage={arg.stage!r}: use stage=pretrain or stage=finetune.")
  config = base_config()
  config.model.update({"name": "vit_tiny_patch16_224", "overrides": dict(ENCODER)})
  config.data = ml_collections.ConfigDict({"name": "digits", "image_size": 16, "max_shift": 1})
  config.batch_size = arg.batch_size
  config.eval_batch_size = 360
  if arg.stage == "pretrain":
    config.recipe = "mae"
    config.total_epochs = arg.epochs or 100
    config.schedule.update({"base_lr": arg.lr or 1.5e-3 * arg.batch_size / 256,
                            "warmup_epochs": 10, "decay": "cosine"})
    config.optimizer.update({"name": "adamw", "b1": 0.9, "b2": 0.95, "weight_decay": 0.05})
    config.mae = ml_collections.ConfigDict({
        "mask_ratio": arg.mask_ratio, "norm_pix_loss": True, "channels": 1,
        "decoder": {"width": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64},
        "knn": {"k": 20, "temperature": 0.1},
        "linear": {"steps": 2000, "learning_rate": 1e-2, "weight_decay": 1e-4,
                   "batch_size": 4096},
        "memory_split": "train",
    })
    config.eval_every_epochs = 25
    config.checkpoint_every_epochs = 25
  else:
    config.data.max_shift = 2
    config.total_epochs = arg.epochs or 30
    config.schedule.update({"base_lr": arg.lr or 1e-3, "warmup_epochs": 2, "decay": "cosine"})
    config.optimizer.update({"name": "adamw", "weight_decay": 0.05, "layer_decay": 0.75})
    config.checkpoint_every_epochs = 10
  if arg.smoke:
    shrink_for_smoke(config)
    config.eval_batch_size = 64
    if arg.stage == "pretrain":
      config.mae.linear.steps = 20
  return config
