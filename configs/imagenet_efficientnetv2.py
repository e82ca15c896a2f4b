r"""EfficientNetV2-S/M/L on ImageNet-1k with progressive learning (Tan & Le 2021).

Commands (ImageNet prepared with tfds, see docs/data.md): the four stages of
progressive learning are four runs on ONE workdir, in order; each resumes from
the checkpoint the previous one left and trains on to its own end:

  for stage in 1 2 3 4; do
    python -m vision_jax.main --config=configs/imagenet_efficientnetv2.py:variant=s,stage=$stage \
        --workdir=/tmp/imagenet_efficientnetv2_s --config.data.data_dir=/data/tfds
  done

Progressive learning with adaptive regularisation (arXiv:2104.00298, section
4 and Algorithm 1): training is cut into M = 4 stages of equal length (350 / 4
= 87.5 epochs); stage i (from 0) trains at image size, RandAugment magnitude,
Mixup alpha and dropout interpolated linearly between the first and the last
stage's values, Phi_i = Phi_0 + (Phi_e - Phi_0) * i / (M - 1) (image sides
truncated to integers). The endpoints are the paper's Table 6:

  variant  image size   RandAugment  Mixup alpha  dropout
  S        128 -> 300   5 -> 15      0 -> 0       0.1 -> 0.3
  M        128 -> 380   5 -> 20      0 -> 0.2     0.1 -> 0.4
  L        128 -> 380   5 -> 25      0 -> 0.4     0.1 -> 0.5

How that runs here: the trainer reads one op string, one Mixup and one model
per run, so a stage is a run (`stage=` picks its settings). The trainer
resumes a workdir whatever the op strings and the dropout (only the model name
and the class count must match, train/checkpoint.py), the learning-rate
schedule below is a function of the global step only, and batch s is a
function of (seed, s) only (data/pipeline.py); so four stage runs train the
same steps, with the same optimizer and EMA state, as one run that switched
settings at the stage boundaries. Each stage compiles its own train step (new
image size). `tests/test_efficientnetv2.py` checks that the stages' batches
have the stages' image sizes.

Recipe (paper, section 5.1): RMSProp (decay 0.9, momentum 0.9), BatchNorm
momentum 0.99, weight decay 1e-5, batch 4096, lr warmed up from 0 to 0.256 (here
over 5 epochs; the paper does not say how long) then x0.97 every 2.4 epochs,
350 epochs, EMA of the weights with decay 0.9999, stochastic depth with
survival probability 0.8 (drop_path_rate 0.2). Not stated in the paper and
taken from the google/automl efficientnetv2 code as we remember it (unverified
here): 2 RandAugment layers, label smoothing 0.1, RMSProp epsilon 1e-3. Inputs
in [-1, 1] (timm's configuration of the TensorFlow weights); evaluation at
the paper's test size (S 384, M and L 480), resized and centre-cropped with
crop fraction 1.0.

Hardware and time (an estimate, not measured on this code): the paper trains
S in about 7 hours on 32 TPU v3 cores (Table 7, as we remember it); expect days
on 8 A100s.

Target, ImageNet top-1 (paper, Table 7): S 83.9, M 85.1, L 85.7 (timm's
ports: S 83.9, M 85.2, L 85.7).

Arguments (`configs/imagenet_efficientnetv2.py:key=value,...`):
  variant: s, m or l (the paper's Table 6 covers only these).
  stage: 1..4, the progressive-learning stage this run trains.
  batch_size: global batch; lr = 0.256 x batch_size / 4096.
  smoke: a tiny EfficientNetV2 on 16..32 px images (by stage) for 2 steps.
"""

from vision_jax.config_base import base_config
from vision_jax.config_util import ConfigError, parse_arg, shrink_for_smoke, sibling_module

common = sibling_module(__file__, "common")

IMAGENET_TRAIN = 1_281_167
EPOCHS = 350
NUM_STAGES = 4
# variant -> (first, last) stage values: image side, RandAugment magnitude, Mixup alpha,
# dropout (Table 6); and the evaluation size.
PROGRESSIVE = {
    "s": {"size": (128, 300), "randaugment": (5, 15), "mixup": (0.0, 0.0),
          "dropout": (0.1, 0.3)},
    "m": {"size": (128, 380), "randaugment": (5, 20), "mixup": (0.0, 0.2),
          "dropout": (0.1, 0.4)},
    "l": {"size": (128, 380), "randaugment": (5, 25), "mixup": (0.0, 0.4),
          "dropout": (0.1, 0.5)},
}
EVAL_SIZE = {"s": 384, "m": 480, "l": 480}
TARGET = {"s": 83.9, "m": 85.1, "l": 85.7}
# The smoke run's image sides per stage range (the model is tiny, fully convolutional).
SMOKE_SIZE = (16, 32)


def stage_settings(variant: str, stage: int, sizes: tuple[int, int] | None = None) -> dict:
  """Image size, RandAugment magnitude, Mixup alpha and dropout of stage 1..NUM_STAGES."""
  ratio = (stage - 1) / (NUM_STAGES - 1)
  table = dict(PROGRESSIVE[variant], **({"size": sizes} if sizes else {}))
  value = {k: lo + (hi - lo) * ratio for k, (lo, hi) in table.items()}
  return {"size": int(value["size"]), "randaugment": round(value["randaugment"], 4),
          "mixup": round(value["mixup"], 4), "dropout": round(value["dropout"], 4)}


def get_config(arg=None):
  arg = parse_arg(arg, variant="s", stage=1, batch_size=4096, smoke=False)
  if arg.variant not in PROGRESSIVE:
    raise ConfigError(f"variant={arg.variant!r}; choose one of {sorted(PROGRESSIVE)} (the "
                      "variants of the paper's progressive-learning Table 6).")
  if not 1 <= arg.stage <= NUM_STAGES:
    raise ConfigError(f"stage={arg.stage}; choose 1..{NUM_STAGES} and run them in order on "
                      "one workdir.")
  stage = stage_settings(arg.variant, arg.stage, SMOKE_SIZE if arg.smoke else None)
  size, eval_size = stage["size"], (SMOKE_SIZE[1] if arg.smoke else EVAL_SIZE[arg.variant])
  norm = "value_range(-1, 1)"

  config = base_config()
  config.model.update({
      "name": f"efficientnetv2_{arg.variant}",
      "overrides": {"bn_momentum": 0.99, "drop_path_rate": 0.2, "drop_rate": stage["dropout"]}})
  config.dtype = "bfloat16"
  config.data = common.imagenet_data(
      f"inception_crop({size}, method='bicubic')|flip_lr|"
      f"randaugment(2, {stage['randaugment']})|{norm}",
      f"decode|resize_small({eval_size}, method='bicubic')|central_crop({eval_size})|{norm}")
  if stage["mixup"]:
    config.data.mix = f"mixup({stage['mixup']})"
  config.batch_size = arg.batch_size
  config.eval_batch_size = 1000
  # Each stage ends at its share of the 350 epochs; the step count carries on across stages.
  config.total_epochs = EPOCHS * arg.stage / NUM_STAGES
  config.schedule.update({
      "base_lr": 0.256 * arg.batch_size / 4096,
      "warmup_epochs": 5,
      "decay": "exponential",
      "decay_factor": 0.97,
      "decay_every": max(1, round(2.4 * IMAGENET_TRAIN / arg.batch_size)),
  })
  config.optimizer.update({
      "name": "rmsprop", "decay": 0.9, "momentum": 0.9, "eps": 1e-3, "weight_decay": 1e-5})
  config.label_smoothing = 0.1
  config.ema_decay = 0.9999
  config.log_every_steps = 100
  config.eval_every_epochs = 10
  config.checkpoint_every_steps = 2000
  config.zero_init_head = False
  if arg.smoke:
    config.model.overrides.update({"width_mult": 0.25, "depth_mult": 0.1, "head_width": 64})
    shrink_for_smoke(config)
    config.schedule.base_lr = 0.256 * 16 / 4096
    config.schedule.decay_every = 1
  return config
