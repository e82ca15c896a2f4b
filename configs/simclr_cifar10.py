r"""SimCLR on CIFAR-10: CIFAR-style ResNet-18/50 pretraining without labels, then linear evaluation.

Pretraining (CIFAR-10 prepared with tfds, see docs/data.md):

  python -m vision_jax.main --config=configs/simclr_cifar10.py:depth=18 \
      --workdir=/tmp/simclr_c10_r18 --config.data.data_dir=/data/tfds

Linear evaluation through the frozen encoder (projection head dropped):

  python -m vision_jax.main --config=configs/simclr_cifar10.py:depth=18,stage=linear \
      --config.init_from=/tmp/simclr_c10_r18 --workdir=/tmp/simclr_c10_r18_linear \
      --config.data.data_dir=/data/tfds

Recipe (Chen et al. 2020, arXiv:2002.05709, Appendix B.9, and the CIFAR-10 command
of the google-research/simclr README):
- Encoder: resnet18 / resnet50 with the CIFAR stem (a 3x3 stride-1 convolution
  and no max-pool: model override stem='cifar'); projection head 2 layers to 128,
  hidden width = feature width, BatchNorm; global BN and global negatives.
- Views: inception crop 32 (area 8%-100%), flip, colour distortion of strength
  0.5, greyscale with p 0.2, no blur; pixels in [0, 1].
- Batch 512, 1000 epochs, LARS momentum 0.9, lr 1.0 x B/256, 10 warmup epochs then
  cosine, weight decay 1e-6 on kernels only, temperature 0.5.
- Monitor: weighted kNN (k 200) on the 50,000 training images every 100 epochs;
  the final eval adds a linear probe on the frozen features.
- Linear stage (README command; Nesterov as in the paper's Appendix B.6, where the
  README uses plain momentum): 100 epochs, batch 512, SGD momentum 0.9, lr
  0.1 x B/256, no weight decay, crop + flip, frozen BN statistics; only the new
  zero-initialised `head` trains.

Hardware and time (an estimate, not measured on this code): one A100/H100-class GPU
pretrains ResNet-18 for 1000 epochs in about a day in bfloat16; ResNet-50 takes
about three times as long.

Target (linear evaluation top-1 on the CIFAR-10 test set): about 91% for
ResNet-18 (the README's reference for its command); 94.0% for ResNet-50 (SimCLR
paper, Appendix B.9).

Arguments: depth (18|50), stage (pretrain|linear), epochs, batch_size,
temperature, smoke.
"""

from vision_jax.config_base import base_config
from vision_jax.config_util import ConfigError, parse_arg, sibling_module

common = sibling_module(__file__, "common")


def get_config(arg=None):
  arg = parse_arg(arg, depth=18, stage="pretrain", epochs=1000, batch_size=512, temperature=0.5,
                  smoke=False)
  if arg.depth not in (18, 50):
    raise ConfigError(f"depth={arg.depth}; choose 18 or 50.")
  if arg.stage not in ("pretrain", "linear"):
    raise ConfigError(f"stage={arg.stage!r}: use stage=pretrain or stage=linear.")
  eval_ops = "decode|value_range(0, 1)"

  config = base_config()
  config.model.update(
      {"name": f"resnet{arg.depth}", "overrides": {"stem": "cifar"}})
  config.dtype = "bfloat16"
  config.batch_size = arg.batch_size
  config.eval_batch_size = 1000
  config.checkpoint_every_steps = 2000
  if arg.stage == "pretrain":
    config.data = common.data(
        "cifar10", ("decode|two_views|inception_crop(32)|flip_lr|color_jitter(0.5)|"
                    "random_grayscale(0.2)|value_range(0, 1)"), eval_ops, eval_split="test",
        cache=True)
    common.simclr_pretraining(config, base_lr=1.0 * arg.batch_size / 256, epochs=arg.epochs)
    config.simclr = common.simclr(arg.temperature)
    config.eval_every_epochs = arg.epochs / 10
  else:
    config.data = common.data("cifar10", "decode|inception_crop(32)|flip_lr|value_range(0, 1)",
                              eval_ops, eval_split="test", cache=True)
    common.linear_probe(config, base_lr=0.1 * arg.batch_size / 256, epochs=100)
  if arg.smoke:
    config.model.overrides = {"stem": "cifar", "stage_sizes": (1, 1, 1, 1),
                              "widths": (8, 8, 16, 16), "stem_width": 8}
    common.simclr_smoke(config, arg.stage)
  return config
