r"""Fine-tuning pretrained weights on a new dataset with BiT-HyperRule.

Commands (weights from another run's workdir or from tools/convert_weights.py):

  python -m vision_jax.main \
      --config=configs/transfer.py:model=resnetv2_50x1_bit,dataset=cifar10,init_from=weights/bitm_r50x1 \
      --workdir=/tmp/transfer_cifar10 --config.data.data_dir=/data/tfds
  # your own images, root/train/<class>/*.jpg and root/val/<class>/*.jpg:
  python -m vision_jax.main \
      --config=configs/transfer.py:model=resnetv2_50x1_bit,dataset=folder:/data/mine,init_from=weights/bitm_r50x1 \
      --workdir=/tmp/transfer_mine

BiT-M weights: convert timm's `resnetv2_50x1_bit.goog_in21k` (ImageNet-21k, no
ImageNet-1k fine-tuning) with `python tools/convert_weights.py --from timm --model
resnetv2_50x1_bit --input <its .safetensors> --output weights/bitm_r50x1`, or
pretrain with configs/bit_pretrain.py. The head is not loaded (dont_load) and
starts at zero.

BiT-HyperRule (Kolesnikov et al. 2020, arXiv:1912.11370, section 3.3, and
bit_hyperrule.py of google-research/big_transfer), from the size of the training
split and of its images:
  - < 20k examples: 500 steps, 100 warmup steps, lr / 10 at steps 200, 300, 400,
    no Mixup;
  - 20k-500k examples: 10k steps, 500 warmup steps, lr / 10 at 30%, 60%, 90%,
    Mixup alpha 0.1;
  - > 500k examples: 20k steps, 500 warmup steps, lr / 10 at 30%, 60%, 90%,
    Mixup alpha 0.1;
  - images smaller than 96x96 pixels: resize to 160, random crop 128; larger
    ones: resize to 448, random crop 384 (the paper's figures; the repository's
    code uses 512 -> 480); evaluation resizes to the crop size;
  - SGD momentum 0.9, lr 0.003 at batch 512 (scaled linearly with the batch), no
    weight decay, flips.
The split size comes from a table of common tfds datasets, from tfds' metadata,
or, for folder:, from counting the image files (and their sizes, for the
resolution rule). `num_train=` and `resolution=small|large` override them.
Pixel normalisation follows the model's registered mean/std ([-1, 1] for BiT
and ViT). ViT models are built at the crop size (position embeddings are
resampled when loaded).

Backbones other than BiT keep the HyperRule's steps, warmup, resolution and Mixup:
  - VGG (`vgg11` ... `vgg19_bn`, e.g. torchvision's weights through
    `from_torchvision`): the HyperRule's SGD as above, with dropout 0.5 in the
    classifier as torchvision trained it;
  - ConvNeXt (`convnext_*`): AdamW (b1 0.9, b2 0.999), lr 5e-5 at batch 512,
    weight decay 1e-8, layer-wise lr decay 0.8 and a cosine decay, the settings
    of the paper's ImageNet-22k -> 1k fine-tuning (Liu et al. 2022,
    arXiv:2201.03545, appendix A, settings for B and L), with stochastic depth 0.1 (our choice for
    small datasets; the paper uses 0.2 and more for its larger models);
  - EfficientNetV2 (`efficientnetv2_*`): the fine-tuning of the EfficientNetV2
    paper (Tan & Le 2021, arXiv:2104.00298, section 5.3, which follows ViT and
    DeiT): lr 0.001 at batch 512 with a cosine decay, no weight decay. Quoted
    from memory, not checked against the paper here; the optimizer is our
    reading of "as ViT" (SGD, momentum 0.9), and the paper's 10k steps become
    the HyperRule's step count.
  - MaxViT (`maxvit_*_tf_*`) and CoAtNet (`coatnet_*`): ConvNeXt's AdamW, lr 5e-5 at
    batch 512, weight decay 1e-8 and cosine decay, the MaxViT paper's ImageNet-21k ->
    1k fine-tuning (Tu et al. 2022, arXiv:2204.01697, appendix), with layer-wise lr
    decay 0.8 and stochastic depth 0.1 as for ConvNeXt (our choices). They are built at
    the crop size; the relative position tables of weights trained at 224 are
    resampled to the new windows in the forward pass.

Hardware and time (an estimate, not measured on this code): CIFAR-10 with R50x1
at 128 px, 10k steps of 512 images: a few hours on one A100 / TPU v3-8; 384 px
datasets take about 9x more per step.

Targets: BiT-M R50x1 reaches CIFAR-10 97.3% and CIFAR-100 86.4% top-1 (medians
in the google-research/big_transfer README). R50+ViT-B/16 from ImageNet-21k
reaches about 98.9% on CIFAR-10 in the vision_transformer README, with that
repository's own fine-tuning recipe (cosine, 384 px), not with this HyperRule.

Arguments (`configs/transfer.py:key=value,...`):
  model: a registered model name (BiT, ViT, ResNet, EfficientNet, EfficientNetV2, VGG,
    ConvNeXt, MaxViT, CoAtNet).
  dataset: a tfds name or folder:/path (train/ and val/ or test/ split folders).
  init_from: a pretrained name (timm:TAG, torchvision:..., npz:...), converted weights or
    another run's workdir ('' trains from scratch).
  num_train: training-split size (0: look it up).
  resolution: 'auto', 'small' (<96x96 images) or 'large'.
  batch_size: global batch; lr = 0.003 x batch_size / 512.
  smoke: a tiny model on 32x32 for 2 steps (tests, tfds mock data).
"""

import os

import ml_collections

from vision_jax import models
from vision_jax.config_base import base_config
from vision_jax.config_util import ConfigError, parse_arg, shrink_for_smoke

# tfds name -> (training examples, images smaller than 96x96, evaluation split).
KNOWN_DATASETS = {
    "cifar10": (50_000, True, "test"),
    "cifar100": (50_000, True, "test"),
    "svhn_cropped": (73_257, True, "test"),
    "oxford_iiit_pet": (3_680, False, "test"),
    "oxford_flowers102": (1_020, False, "test"),
    "caltech101": (3_060, False, "test"),
    "dtd": (1_880, False, "test"),
    "stanford_dogs": (12_000, False, "test"),
    "imagenet2012": (1_281_167, False, "validation"),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def hyperrule(num_train: int, small_images: bool) -> dict:
  """BiT-HyperRule: schedule, resolution and Mixup from the dataset's size."""
  if num_train < 20_000:
    steps, warmup, boundaries, mixup = 500, 100, (0.4, 0.6, 0.8), 0.0
  elif num_train < 500_000:
    steps, warmup, boundaries, mixup = 10_000, 500, (0.3, 0.6, 0.9), 0.1
  else:
    steps, warmup, boundaries, mixup = 20_000, 500, (0.3, 0.6, 0.9), 0.1
  resize, crop = (160, 128) if small_images else (448, 384)
  return {"steps": steps, "warmup_steps": warmup, "boundaries": boundaries, "mixup": mixup,
          "resize": resize, "crop": crop}


def _folder_stats(root: str, split: str) -> tuple[int, bool]:
  """(number of image files, whether a sample of them is smaller than 96x96) of root/split."""
  directory = os.path.join(root, split)
  if not os.path.isdir(directory):
    raise ConfigError(f"dataset=folder:{root} has no {split!r} folder ({directory}).")
  files = sorted(os.path.join(d, f) for d, _, names in os.walk(directory) for f in names
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise ConfigError(f"No .jpg/.jpeg/.png files under {directory}.")
  areas = []
  try:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    for path in files[:: max(1, len(files) // 16)][:16]:
      with Image.open(path) as image:
        areas.append(image.size[0] * image.size[1])
  except (ImportError, OSError):
    areas = []
  small = bool(areas) and sorted(areas)[len(areas) // 2] < 96 * 96
  return len(files), small


def _dataset_stats(dataset: str, num_train: int, resolution: str) -> tuple[int, bool, str | None]:
  if dataset.startswith("folder:"):
    count, small = _folder_stats(dataset[len("folder:"):], "train")
    eval_split = None
  elif dataset.split(":")[0] in KNOWN_DATASETS:
    count, small, eval_split = KNOWN_DATASETS[dataset.split(":")[0]]
  else:
    count, small, eval_split = 0, False, None
    if not num_train or resolution == "auto":
      raise ConfigError(f"dataset={dataset!r} is not in the table of configs/transfer.py "
                        f"({', '.join(sorted(KNOWN_DATASETS))}): pass num_train=<training "
                        "examples> and resolution=small|large (small: images under 96x96).")
  if num_train:
    count = num_train
  if resolution not in ("auto", "small", "large"):
    raise ConfigError(f"resolution={resolution!r}; choose 'auto', 'small' or 'large'.")
  if resolution != "auto":
    small = resolution == "small"
  return count, small, eval_split


def _normalize(model: str) -> str:
  info = models.model_info(model)
  if tuple(info.mean) == (0.5, 0.5, 0.5) and tuple(info.std) == (0.5, 0.5, 0.5):
    return "value_range(-1, 1)"
  return f"value_range(0, 1)|normalize({tuple(info.mean)}, {tuple(info.std)})"


SMOKE_OVERRIDES = {
    "resnet": {"stage_sizes": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 8},
    "resnet_v2": {"layers": (1, 1), "channels": (128, 128), "stem_chs": 32},
    "vit": {"backbone_layers": (), "patch_size": 4, "width": 32, "depth": 1, "mlp_dim": 64,
            "num_heads": 2},
    "efficientnet": {"width_mult": 0.25, "depth_mult": 0.1, "head_width": 64},
    "vgg": {"layers": (8, "M", 16, "M", 16, "M", 32, "M", 32, "M"), "hidden_width": 32,
            "pre_logits_width": 32},
    "convnext": {"depths": (1, 1, 1, 1), "widths": (8, 8, 16, 16)},
    "efficientnetv2": {"width_mult": 0.25, "depth_mult": 0.1, "head_width": 64},
    # MBConv stages, then one MaxViT (or CoAtNet transformer) stage of each kind.
    "maxvit": {"depths": (1, 1, 1, 1), "embed_dims": (8, 8, 16, 16), "stem_width": (8, 8),
               "dim_head": 8, "head_hidden_size": 16, "block_types": ("C", "C", "M", "M")},
    "coatnet": {"depths": (1, 1, 1, 1), "embed_dims": (8, 8, 16, 16), "stem_width": (8, 8),
                "dim_head": 8},
}
# The hybrids fine-tune as the MaxViT paper does from ImageNet-21k (Tu et al. 2022,
# arXiv:2204.01697, appendix: AdamW, lr 5e-5 at batch 512, weight decay 1e-8, cosine);
# layer-wise lr decay 0.8 as for ConvNeXt (a choice of ours: the paper uses none).
_HYBRID_RECIPE = {"lr": 5e-5, "decay": "cosine",
                  "optimizer": {"name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 1e-8,
                                "layer_decay": 0.8},
                  "overrides": {"drop_path_rate": 0.1}}
# Families whose model is built at the crop size (position / relative-position tables
# are resampled when the weights are for another size).
_BUILT_AT_CROP = ("vit", "maxvit", "coatnet")
# Per-family optimizer (lr is at batch 512, scaled linearly) and model overrides.
FAMILY_RECIPES = {
    "vgg": {"lr": 0.003, "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": False,
                                       "weight_decay": 0.0},
            "overrides": {"drop_rate": 0.5}},
    "convnext": {"lr": 5e-5, "decay": "cosine",
                 "optimizer": {"name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 1e-8,
                               "layer_decay": 0.8},
                 "overrides": {"drop_path_rate": 0.1}},
    "efficientnetv2": {"lr": 0.001, "decay": "cosine",
                       "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": False,
                                     "weight_decay": 0.0},
                       "overrides": {}},
    "maxvit": _HYBRID_RECIPE,
    "coatnet": _HYBRID_RECIPE,
}
BIT_RECIPE = {"lr": 0.003, "optimizer": {"name": "sgd", "momentum": 0.9, "nesterov": False,
                                         "weight_decay": 0.0}, "overrides": {}}


def get_config(arg=None):
  arg = parse_arg(arg, model="resnetv2_50x1_bit", dataset="cifar10", init_from="", num_train=0,
                  resolution="auto", batch_size=512, smoke=False)
  num_train, small, eval_split = _dataset_stats(arg.dataset, arg.num_train, arg.resolution)
  rule = hyperrule(num_train, small)
  resize, crop = (40, 32) if arg.smoke else (rule["resize"], rule["crop"])
  family = models.model_info(arg.model).family
  norm = _normalize(arg.model)

  config = base_config()
  config.hyperrule = ml_collections.ConfigDict(
      {"num_train": num_train, "small_images": small, **rule})
  config.model.update({"name": arg.model, "overrides": {}})
  if family in _BUILT_AT_CROP:
    config.model.overrides = {"img_size": crop}
  if family in ("maxvit", "coatnet"):
    # Tables stay at the pretrained size, so the weights load; they are resampled in use.
    config.model.overrides["rel_pos_img_size"] = models.model_info(arg.model).input_size
  config.dtype = "bfloat16"
  config.data = ml_collections.ConfigDict({
      "name": arg.dataset,
      "train_split": "train",
      "preprocess_train": f"decode|resize({resize})|random_crop({crop})|flip_lr|{norm}",
      "preprocess_eval": f"decode|resize({crop})|{norm}",
  })
  if eval_split:
    config.data.eval_split = eval_split
  if rule["mixup"]:
    config.data.mix = f"mixup({rule['mixup']})"
  config.batch_size = arg.batch_size
  config.eval_batch_size = 512
  config.total_steps = rule["steps"]
  recipe = FAMILY_RECIPES.get(family, BIT_RECIPE)
  if recipe.get("decay", "step") == "step":
    config.schedule.update({"decay": "step", "boundaries": rule["boundaries"],
                            "decay_factor": 0.1})
  else:
    config.schedule.decay = recipe["decay"]
  config.schedule.update({"base_lr": recipe["lr"] * arg.batch_size / 512,
                          "warmup_steps": rule["warmup_steps"]})
  config.optimizer.update(recipe["optimizer"])
  config.model.overrides.update(recipe["overrides"])
  config.eval_every_steps = max(rule["steps"] // 10, 1)
  config.checkpoint_every_steps = 1000
  if arg.init_from:
    config.init_from = arg.init_from
  if arg.smoke:
    config.model.overrides = {**SMOKE_OVERRIDES.get(family, {}), **recipe["overrides"]}
    if family in _BUILT_AT_CROP:
      config.model.overrides["img_size"] = crop
    shrink_for_smoke(config)
    config.schedule.base_lr = recipe["lr"] * 16 / 512
  return config
