r"""SimCLR on ImageNet-1k: ResNet-50 pretraining without labels, then linear evaluation.

Pretraining (ImageNet prepared with tfds, see docs/data.md):

  python -m vision_jax.main --config=configs/simclr_imagenet.py:epochs=1000 \
      --workdir=/tmp/simclr_r50 --config.data.data_dir=/data/tfds

Linear evaluation (the paper's protocol: a linear classifier on the frozen
encoder, trained with crop + flip augmentation; the projection head is dropped):

  python -m vision_jax.main --config=configs/simclr_imagenet.py:stage=linear \
      --config.init_from=/tmp/simclr_r50 --workdir=/tmp/simclr_r50_linear \
      --config.data.data_dir=/data/tfds

Recipe (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", arXiv:2002.05709, sections 2-4 and Appendix B):
- Encoder ResNet-50 (features 2048), projection head 2048-2048-128 with
  BatchNorm; NT-Xent with temperature 0.1; negatives are the whole global batch
  and BatchNorm is global (both follow from jit over the 'data' mesh).
- Batch 4096, LARS with momentum 0.9, lr 0.3 x B/256 = 4.8, 10 epochs of linear
  warmup then cosine decay, weight decay 1e-6 on kernels only (biases and
  BatchNorm parameters get neither weight decay nor LARS adaptation).
- Views: inception crop 224 (area 8%-100%), flip, colour distortion of strength
  1.0 (jitter with p 0.8, greyscale with p 0.2), Gaussian blur with p 0.5;
  pixels in [0, 1].
- 100 or 1000 epochs (epochs=...).
- Monitor: weighted kNN (k 200) on the first 50,000 training images every 10%
  of training; the final eval adds a linear probe on those frozen features.
- Linear stage (paper Appendix B.6; weight decay from the authors' README command):
  90 epochs, batch 4096, Nesterov SGD momentum 0.9 (the README command uses plain
  momentum), lr 0.1 x B/256 = 1.6, weight decay 1e-6, no warmup; only the new,
  zero-initialised `head` trains (config.trainable_params) and the BatchNorm
  statistics are frozen.

Hardware and time: the paper reports about 1.5 hours per 100 epochs at batch 4096
on 128 TPU v3 cores, the authors' README about 6 hours per 100 epochs on 32 TPU
v3s (so 15 to 60 hours for 1000 epochs); 8 A100/H100-class GPUs need days. Memory: batch 4096 holds 8192 views per step; on fewer devices lower
--config.batch_size (the lr follows 0.3 x B/256; the paper shows that smaller
batches need more epochs).

Target (linear evaluation top-1 on the ImageNet validation set): 69.3% after
1000 epochs (SimCLR paper, Table 6, ResNet-50 1x); about 64.5% after 100 epochs
(google-research/simclr README, for its 100-epoch command).

Arguments: stage (pretrain|linear), epochs, batch_size, temperature, smoke.
"""

from vision_jax.config_base import base_config
from vision_jax.config_util import ConfigError, parse_arg, sibling_module

common = sibling_module(__file__, "common")


def get_config(arg=None):
  arg = parse_arg(arg, stage="pretrain", epochs=1000, batch_size=4096, temperature=0.1,
                  smoke=False)
  if arg.stage not in ("pretrain", "linear"):
    raise ConfigError(f"stage={arg.stage!r}: use stage=pretrain or stage=linear.")
  size, resize = (32, 36) if arg.smoke else (224, 256)
  eval_ops = f"decode|resize_small({resize})|central_crop({size})|value_range(0, 1)"

  config = base_config()
  config.model.update({"name": "resnet50", "overrides": {}})
  config.dtype = "bfloat16"
  config.batch_size = arg.batch_size
  config.eval_batch_size = 1000
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  if arg.stage == "pretrain":
    config.data = common.imagenet_data(
        (f"decode|two_views|inception_crop({size})|flip_lr|color_jitter(1.0)|"
         "random_grayscale(0.2)|gaussian_blur(0.5)|value_range(0, 1)"), eval_ops)
    common.simclr_pretraining(config, base_lr=0.3 * arg.batch_size / 256, epochs=arg.epochs)
    config.simclr = common.simclr(arg.temperature, hidden_dim=2048,
                                  memory_split="train[:50000]")
    config.eval_every_epochs = arg.epochs / 10
  else:
    config.data = common.imagenet_data(f"inception_crop({size})|flip_lr|value_range(0, 1)",
                                       eval_ops)
    common.linear_probe(config, base_lr=0.1 * arg.batch_size / 256, epochs=90,
                        weight_decay=1e-6)
  if arg.smoke:
    config.model.overrides = {"stage_sizes": (1, 1, 1, 1), "widths": (8, 8, 16, 16),
                              "stem_width": 8}
    common.simclr_smoke(config, arg.stage)
    if arg.stage == "pretrain":
      config.simclr.head.hidden_dim = 32
      config.simclr.head.out_dim = 16
      config.simclr.memory_split = "train[:50%]"  # a slice, as the full config
  return config
