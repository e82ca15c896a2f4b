r"""DINO on ImageNet-1k: ViT-S/16 self-distillation without labels, 300 epochs.

  python -m vision_jax.main --config=configs/dino_imagenet.py \
      --workdir=/tmp/dino_vits16 --config.data.data_dir=/data/tfds

Recipe (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers", arXiv:2104.14294, section 4 / appendix, and the facebookresearch/dino
README command for ViT-S/16):
- Student and teacher ViT-S/16 (vit_small_patch16_224 with num_classes=0,
  stochastic depth 0.1), DINO head 384 -> 2048 -> 2048 -> 256, l2-normalised,
  weight-normalised last layer to 65536 prototypes (norm fixed at 1), no BN.
- Teacher = EMA of the student, momentum 0.996 -> 1 along a cosine
  (config.ema_decay is the base momentum); center momentum 0.9; student
  temperature 0.1; teacher temperature 0.04 -> 0.07 over the first 30 epochs;
  last layer frozen during the first epoch.
- AdamW, batch 1024, lr 0.0005 x B/256 = 0.002 after 10 warmup epochs, cosine
  to 1e-6; weight decay 0.04; gradient clipping at global norm 3.0.
- Views: two global crops (inception crop 224, area 25%-100%), flip, colour
  jitter 0.4/0.4/0.2/0.1 with p 0.8 (our `color_jitter(0.5)`), greyscale p 0.2,
  Gaussian blur, solarisation p 0.2.
- Monitor: the teacher's features, weighted kNN (k 20, T 0.07, DINO's
  protocol) on the first 50,000 training images every 10% of training, plus a
  linear probe at the end.

Multi-crop: ten local crops of 96 px covering 5%-25% of the image
(`local_crops(10)` in the op string: the ops after it run ten times on the
decoded image), flip, the same colour jitter and greyscale, blur p 0.5, no
solarisation; they go through the student only. The ViT takes them at their
own size with the position embedding resampled (`dynamic_img_size=True`).

Differences from the paper, to know before comparing: (1) the weight decay
stays at 0.04 (the paper raises it to 0.4 along a cosine). (2) The blur and
solarisation probabilities are the same for both global views (the paper: blur
1.0 / 0.1, solarise 0 / 0.2), because `two_views` runs one op chain twice.

Hardware and time (an estimate, not measured on this code): a ViT-S/16 forward
pass is about 4.6 GFLOPs at 224 and 0.85 at 96 (36 tokens); per image and step
the student runs two global and ten local crops forward and backward (~3x) and
the teacher the two global ones forward: ~62 GFLOPs, 2.4e19 FLOPs for 300
epochs, about 20-35 hours on 8 A100s at 30-40% of their bfloat16 peak.
Memory: batch 1024 should fit 8 x 80 GB in bfloat16 (the local crops add about
a third to the activations); halve the batch per device with 40 GB.

Targets (facebookresearch/dino README, ViT-S/16, 300 epochs with multi-crop):
77.0% linear, 74.5% k-NN (ImageNet validation top-1).

Arguments: epochs, batch_size, smoke.
"""

import ml_collections

from vision_jax.config_base import base_config
from vision_jax.config_util import parse_arg, shrink_for_smoke


def get_config(arg=None):
  arg = parse_arg(arg, epochs=300, batch_size=1024, smoke=False)
  size, resize, local = (32, 36, 16) if arg.smoke else (224, 256, 96)
  local_crops = 2 if arg.smoke else 10
  config = base_config()
  config.recipe = "dino"
  # dynamic_img_size: the local crops (96 px) resample the 224-px position embedding.
  config.model.update({"name": "vit_small_patch16_224",
                       "overrides": {"drop_path_rate": 0.1, "dynamic_img_size": True}})
  config.dtype = "bfloat16"
  config.data = ml_collections.ConfigDict({
      "name": "imagenet2012", "train_split": "train", "eval_split": "validation",
      "preprocess_train": (f"decode|two_views|inception_crop({size}, area_min=0.25)|flip_lr|"
                           "color_jitter(0.5)|random_grayscale(0.2)|gaussian_blur(0.5)|"
                           f"solarize(0.2)|value_range(-1, 1)|local_crops({local_crops})|"
                           f"inception_crop({local}, area_min=0.05, area_max=0.25)|flip_lr|"
                           "color_jitter(0.5)|random_grayscale(0.2)|gaussian_blur(0.5)|"
                           "value_range(-1, 1)"),
      "preprocess_eval": f"decode|resize_small({resize})|central_crop({size})|value_range(-1, 1)",
  })
  config.batch_size = arg.batch_size
  config.eval_batch_size = 1000
  config.total_epochs = arg.epochs
  config.ema_decay = 0.996  # the teacher's base momentum
  config.schedule.update({"base_lr": 0.0005 * arg.batch_size / 256, "warmup_epochs": 10,
                          "decay": "cosine", "end_lr_factor": 1e-6 / (0.0005 * 4)})
  config.optimizer.update({"name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 0.04,
                           "grad_clip_norm": 3.0})
  config.dino = ml_collections.ConfigDict({
      "student_temp": 0.1, "teacher_temp": 0.07, "warmup_teacher_temp": 0.04,
      "warmup_teacher_temp_epochs": 30, "center_momentum": 0.9, "freeze_last_layer_epochs": 1,
      "head": {"out_dim": 65536, "hidden_dim": 2048, "bottleneck_dim": 256, "num_layers": 3,
               "use_bn": False},
      "knn": {"k": 20, "temperature": 0.07},
      "linear": {"steps": 5000, "learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": 4096},
      "memory_split": "train[:50000]",
  })
  config.log_every_steps = 100
  config.eval_every_epochs = arg.epochs / 10
  config.checkpoint_every_steps = 2000
  if arg.smoke:
    config.model.overrides = {"img_size": 32, "patch_size": 8, "width": 32, "depth": 1,
                              "num_heads": 2, "mlp_dim": 64, "dynamic_img_size": True}
    shrink_for_smoke(config)
    config.dino.head = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "num_layers": 3}
    config.dino.knn.k = 5
    config.dino.linear.steps = 20
    config.dino.memory_split = "train[:50%]"
  return config
