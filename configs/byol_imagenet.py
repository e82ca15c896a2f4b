r"""BYOL on ImageNet-1k: ResNet-50 pretraining without labels, 1000 epochs, then linear evaluation.

  python -m vision_jax.main --config=configs/byol_imagenet.py \
      --workdir=/tmp/byol_r50 --config.data.data_dir=/data/tfds

Linear evaluation: the SimCLR linear stage on the BYOL workdir (the encoder
loads, projector and predictor are dropped):

  python -m vision_jax.main --config=configs/simclr_imagenet.py:stage=linear \
      --config.init_from=/tmp/byol_r50 --workdir=/tmp/byol_r50_linear \
      --config.data.data_dir=/data/tfds

Recipe (Grill et al. 2020, "Bootstrap your own latent", arXiv:2006.07733,
section 3.3 and appendix B/C):
- Encoder ResNet-50 (2048 features); projector and predictor Dense 4096,
  BatchNorm, ReLU, Dense 256.
- Target = EMA of the online network, tau 0.996 -> 1 along a cosine
  (config.ema_decay is tau_base); symmetric loss 2 - 2cos(q(z1), sg(z2')) both ways.
- LARS (biases and BatchNorm parameters excluded from weight decay and
  adaptation), batch 4096, lr 0.2 x B/256 = 3.2, 10 warmup epochs, cosine
  decay, weight decay 1.5e-6, trust coefficient 0.001.
- Views: inception crop 224 (8%-100%), flip, colour jitter (0.4/0.4/0.2/0.1 with
  p 0.8, our `color_jitter(0.5)`), greyscale p 0.2, Gaussian blur, solarisation
  p 0.2; the paper's views are asymmetric (blur 1.0 / 0.1, solarise 0 / 0.2),
  here both views share one op chain (`two_views`) and use blur 0.5, solarise 0.2.
- Monitor: online encoder features, kNN on the first 50,000 training images
  every 10% of training, a linear probe on them at the end.

Hardware and time (the paper, appendix: 512 TPU v3 cores, about 8 hours for
300 epochs at batch 4096; an estimate for 1000 epochs on 8 A100s: 4 GFLOPs x
(2 views x 3 online + 2 target) ~ 33 GFLOPs per image and step, 4.2e19 FLOPs,
about 2-3 days at 30-40% of their bfloat16 peak).

Target (linear evaluation top-1, ImageNet validation): 74.3% (paper Table 1,
ResNet-50 1x, 1000 epochs).

Arguments: epochs, batch_size, smoke.
"""

import ml_collections

from vision_jax.config_base import base_config
from vision_jax.config_util import parse_arg, shrink_for_smoke


def get_config(arg=None):
  arg = parse_arg(arg, epochs=1000, batch_size=4096, smoke=False)
  size, resize = (32, 36) if arg.smoke else (224, 256)
  config = base_config()
  config.recipe = "byol"
  config.model.update({"name": "resnet50", "overrides": {}})
  config.dtype = "bfloat16"
  config.data = ml_collections.ConfigDict({
      "name": "imagenet2012", "train_split": "train", "eval_split": "validation",
      "preprocess_train": (f"decode|two_views|inception_crop({size})|flip_lr|color_jitter(0.5)|"
                           "random_grayscale(0.2)|gaussian_blur(0.5)|solarize(0.2)|"
                           "value_range(0, 1)"),
      "preprocess_eval": f"decode|resize_small({resize})|central_crop({size})|value_range(0, 1)",
  })
  config.batch_size = arg.batch_size
  config.eval_batch_size = 1000
  config.total_epochs = arg.epochs
  config.ema_decay = 0.996  # tau_base
  config.schedule.update({"base_lr": 0.2 * arg.batch_size / 256, "warmup_epochs": 10,
                          "decay": "cosine", "end_lr_factor": 0.0})
  config.optimizer.update(
      {"name": "lars", "momentum": 0.9, "weight_decay": 1.5e-6, "trust_coefficient": 0.001})
  config.byol = ml_collections.ConfigDict({
      "head": {"hidden_dim": 4096, "out_dim": 256},
      "knn": {"k": 200, "temperature": 0.1},
      "linear": {"steps": 5000, "learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": 4096},
      "memory_split": "train[:50000]",
  })
  config.log_every_steps = 100
  config.eval_every_epochs = arg.epochs / 10
  config.checkpoint_every_steps = 2000
  if arg.smoke:
    config.model.overrides = {"stage_sizes": (1, 1, 1, 1), "widths": (8, 8, 16, 16),
                              "stem_width": 8}
    shrink_for_smoke(config)
    config.byol.head = {"hidden_dim": 32, "out_dim": 16}
    config.byol.knn.k = 5
    config.byol.linear.steps = 20
    config.byol.memory_split = "train[:50%]"
  return config
