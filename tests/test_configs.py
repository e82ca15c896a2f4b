"""Every file in configs/ is checked: `get_config('smoke')` is validated, reads its data (tfds
mock data for tfds datasets, a generated image folder for folder: datasets, or the embedded
digits) and traces its train step (`trainer.check_config`); one config per recipe and data
source also runs 2 real steps (FULL_RUNS).

A new config without a working smoke run fails this file: it is picked up by the glob below
and run; the only files not run are listed in NOT_RUNNABLE with the reason. Also: the
BiT-HyperRule arithmetic of configs/transfer.py, the recipe numbers of the paper configs, and
parse_arg's error for unknown arguments.
"""

import glob
import json
import math
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vision_jax import config_util
from vision_jax.config_util import ConfigError

from tests.test_data_pipeline import write_metadata  # shared mock-tfds split metadata

from tests.conftest import ROOT  # noqa: E402  (the repository root)
# configs/common.py holds the blocks the paper configs share: it is not a config itself.
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                      if os.path.basename(p) != "common.py")
NAMES = [os.path.splitext(os.path.basename(p))[0] for p in CONFIG_FILES]

# Config files that cannot run in the trainer yet, with the reason. Everything else must run.
NOT_RUNNABLE: dict[str, str] = {}
# The argument string of each config's smoke run; default "smoke". {folder} is a generated
# image folder (root/train/<class>/*.png, root/val/<class>/*.png).
SMOKE_ARGS = {
    "imagenet21k_vit_hybrid": "smoke,data=folder:{folder}",
    "bit_pretrain": "smoke,data=folder:{folder}",
}
# Further smoke runs of a config (its other stages), on top of the one above.
EXTRA_SMOKE_ARGS = {
    "simclr_digits": ["smoke,stage=linear"],
    "simclr_cifar10": ["smoke,stage=linear", "smoke,depth=50"],
    "simclr_imagenet": ["smoke,stage=linear"],
    # No maxvit_tiny_tf_224 run: its smoke model (SMOKE_OVERRIDES["maxvit"]) is the one
    # imagenet_maxvit's smoke run traces, and its AdamW + layer-decay + cosine step is the
    # convnext_atto run's.
    "transfer": ["smoke,model=vgg11_bn", "smoke,model=convnext_atto"],
    "dino_digits": ["smoke,backbone=vit"],
}
# Configs whose smoke run fails today because of a bug outside configs/, with the bug. The mark
# is a strict xfail: the run still happens, and once the bug is fixed the XPASS fails the suite
# so that the entry is removed.
KNOWN_BROKEN: dict[str, str] = {}  # config -> reason; strict xfail, so a fix is noticed
MOCK_EXAMPLES = 32  # 2 training steps of 16 per epoch; 2 evaluation batches


def load_config_module(name: str):
  return config_util.load_config_module(os.path.join(ROOT, "configs", f"{name}.py"))


def write_image_folder(root: str, splits=(("train", 8), ("val", 4)), classes: int = 3,
                       size: int = 40) -> str:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for split, per_class in splits:
    for c in range(classes):
      directory = os.path.join(root, split, f"class_{c}")
      os.makedirs(directory, exist_ok=True)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(directory, f"{i}.png"))
  return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  return write_image_folder(str(tmp_path_factory.mktemp("folder")))


def test_every_config_file_is_covered():
  assert NAMES, "no config files found"
  for name in list(NOT_RUNNABLE) + list(SMOKE_ARGS):
    assert name.isidentifier(), name
  # A listed entry must name a real file once the file exists; stale SMOKE_ARGS entries are errors.
  assert set(SMOKE_ARGS) <= set(NAMES), sorted(set(SMOKE_ARGS) - set(NAMES))
  assert set(EXTRA_SMOKE_ARGS) <= set(NAMES), sorted(set(EXTRA_SMOKE_ARGS) - set(NAMES))
  assert set(NOT_RUNNABLE) <= set(NAMES), sorted(set(NOT_RUNNABLE) - set(NAMES))
  assert not set(SMOKE_ARGS) & set(NOT_RUNNABLE)
  assert set(KNOWN_BROKEN) <= set(NAMES), sorted(set(KNOWN_BROKEN) - set(NAMES))


def _params():
  for name in NAMES:
    for arg in [SMOKE_ARGS.get(name, "smoke")] + EXTRA_SMOKE_ARGS.get(name, []):
      test_id = name if arg == SMOKE_ARGS.get(name, "smoke") else f"{name}:{arg}"
      if name in NOT_RUNNABLE:
        yield pytest.param(name, arg, id=test_id,
                           marks=pytest.mark.skip(reason=f"{name}: {NOT_RUNNABLE[name]}"))
      elif name in KNOWN_BROKEN:
        yield pytest.param(name, arg, id=test_id,
                           marks=pytest.mark.xfail(strict=True, reason=KNOWN_BROKEN[name]))
      else:
        yield pytest.param(name, arg, id=test_id)


def _with_data(config, tmp_path, fn):
  """fn() with config.data readable: tfds mock data for tfds names, else as it is."""
  data_name = config.data.name
  if data_name in ("digits", "synthetic") or data_name.startswith("folder:"):
    return fn()
  tfds_name = data_name.split(":")[0]
  eval_split = config.data.get("eval_split") or (
      "validation" if tfds_name == "imagenet2012" else "test")
  write_metadata(tmp_path / "tfds", tfds_name,
                 {config.data.get("train_split", "train"): MOCK_EXAMPLES,
                  eval_split: MOCK_EXAMPLES})
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, data_dir=str(tmp_path / "tfds")):
    return fn()


@pytest.mark.parametrize("name,arg", list(_params()))
def test_config_checks_and_traces_a_step(name, arg, tmp_path, image_folder):
  """Every config and stage: validated, its data read (one train and one eval batch through
  the real pipeline), its model built and its recipe's train step traced on those batches
  (trainer.check_config: everything but XLA compilation and execution)."""
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  module = load_config_module(name)
  config = module.get_config(arg.format(folder=image_folder))
  assert config.batch_size == 16 or name == "digits", config.batch_size
  report = _with_data(config, tmp_path, lambda: trainer.check_config(config))
  assert report["num_params"] > 0 and report["total_steps"] >= 1
  assert report["train_batch"][0] == config.batch_size
  # DINO's configs train on multi-crop: local crops reach the traced step (None elsewhere;
  # dino_digits turns them off, its docstring says why).
  local = report["local_batch"]
  assert (local is not None) == (name.startswith("dino") and name != "dino_digits"), (name, local)
  if local is not None:
    assert local[0] == config.batch_size and local[2] < report["train_batch"][2], local
  assert "loss" in report["metrics"] and "learning_rate" in report["metrics"]


def test_dino_digits_vit_backbone_takes_its_own_settings():
  """backbone=vit: the small ViT with the settings that kept DINO's teacher from collapsing
  on the digits (its docstring has the measurements); the ResNet default is unchanged."""
  module = load_config_module("dino_digits")
  resnet, vit = module.get_config(""), module.get_config("backbone=vit")
  assert (resnet.model.name, vit.model.name) == ("cifar_resnet20", "vit_tiny_patch16_224")
  assert vit.model.overrides.patch_size == 4 and vit.model.overrides.img_size == 16
  got = [(c.dino.head.use_bn, c.dino.teacher_temp, c.dino.warmup_teacher_temp, c.ema_decay,
          c.schedule.base_lr) for c in (resnet, vit)]
  assert got == [(False, 0.04, 0.04, 0.99, 5e-4), (True, 0.02, 0.02, 0.996, 2e-3)]
  assert module.get_config("backbone=vit,lr=1e-3").schedule.base_lr == 1e-3
  with pytest.raises(ConfigError, match="backbone='mlp': use backbone=resnet or backbone=vit"):
    module.get_config("backbone=mlp")
  with pytest.raises(ConfigError, match="backbone=vit picks its own ViT; drop model=resnet18"):
    module.get_config("backbone=vit,model=resnet18")


# Configs that also run for real (2 steps, then the final evaluation and checkpoint), one
# per recipe and data source: the tracing check above covers the rest. The default digits
# run is test_train.py's, with the same compiled programs.
FULL_RUNS = [("transfer", "smoke"), ("simclr_digits", "smoke"),
             ("transfer", "smoke,model=convnext_atto"),
             # The families of the hybrids issue (24): a transfer smoke run of each.
             ("transfer", "smoke,model=maxvit_tiny_tf_224"),
             ("transfer", "smoke,model=coatnet_0_rw_224"),
             ("transfer", "smoke,model=efficientnetv2_s"),
             ("transfer", "smoke,model=convnextv2_atto")]


@pytest.mark.slow  # whole runs; every config is validated and traced in the quick tier above
@pytest.mark.parametrize("name,arg", FULL_RUNS, ids=[f"{n}:{a}" for n, a in FULL_RUNS])
def test_config_smoke_run(name, arg, tmp_path):
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  module = load_config_module(name)
  config = module.get_config(arg)
  config.num_devices = 1  # sharding is test_train.py's subject; one device compiles faster
  workdir = str(tmp_path / "work")
  final = _with_data(config, tmp_path, lambda: trainer.train_and_evaluate(config, workdir))
  if config.get("recipe", "supervised") == "simclr":  # representation metrics, no classifier
    keys = ("knn_top1", "linear_top1", "eval_count")
  else:
    keys = ("eval_loss", "eval_top1", "eval_top5", "eval_count")
  for key in keys:
    assert key in final and math.isfinite(final[key]), (key, final)
  assert final["eval_count"] > 0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  losses = [r["loss"] for r in records if "loss" in r]
  assert losses and all(math.isfinite(x) for x in losses), records


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NOT_RUNNABLE])
def test_unknown_argument_is_a_clear_error(name):
  module = load_config_module(name)
  with pytest.raises(ConfigError, match=r"Unknown config argument 'no_such_arg'.*Valid arguments"):
    module.get_config("smoke,no_such_arg=1")


# ---------------------------------------------------------------------------
# configs/transfer.py: BiT-HyperRule.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("num_train, small, expected", [
    (1_020, False, dict(steps=500, warmup_steps=100, boundaries=(0.4, 0.6, 0.8), mixup=0.0,
                        resize=448, crop=384)),
    (19_999, True, dict(steps=500, warmup_steps=100, boundaries=(0.4, 0.6, 0.8), mixup=0.0,
                        resize=160, crop=128)),
    (20_000, True, dict(steps=10_000, warmup_steps=500, boundaries=(0.3, 0.6, 0.9), mixup=0.1,
                        resize=160, crop=128)),
    (499_999, False, dict(steps=10_000, warmup_steps=500, boundaries=(0.3, 0.6, 0.9), mixup=0.1,
                          resize=448, crop=384)),
    (1_281_167, False, dict(steps=20_000, warmup_steps=500, boundaries=(0.3, 0.6, 0.9),
                            mixup=0.1, resize=448, crop=384)),
])
def test_hyperrule_regimes(num_train, small, expected):
  assert load_config_module("transfer").hyperrule(num_train, small) == expected


def _schedule_steps(config):
  total = config.total_steps
  return [int(b * total) for b in config.schedule.boundaries]


def test_transfer_configs_follow_the_hyperrule():
  transfer = load_config_module("transfer")
  cifar = transfer.get_config("dataset=cifar10")  # 50k small images
  assert (cifar.total_steps, cifar.schedule.warmup_steps) == (10_000, 500)
  assert _schedule_steps(cifar) == [3_000, 6_000, 9_000]
  assert cifar.data.mix == "mixup(0.1)"
  assert "resize(160)|random_crop(128)" in cifar.data.preprocess_train
  assert cifar.data.preprocess_eval.startswith("decode|resize(128)|")
  assert cifar.schedule.base_lr == pytest.approx(0.003) and cifar.batch_size == 512
  assert cifar.optimizer.name == "sgd" and cifar.optimizer.momentum == 0.9
  assert cifar.schedule.decay == "step" and cifar.schedule.decay_factor == 0.1

  pets = transfer.get_config("dataset=oxford_iiit_pet")  # 3,680 large images
  assert (pets.total_steps, pets.schedule.warmup_steps) == (500, 100)
  assert _schedule_steps(pets) == [200, 300, 400]
  assert "mix" not in pets.data
  assert "resize(448)|random_crop(384)" in pets.data.preprocess_train

  vit = transfer.get_config("dataset=imagenet2012,model=vit_base_r50_s16_384,batch_size=1024")
  assert vit.total_steps == 20_000 and vit.data.mix == "mixup(0.1)"
  assert vit.model.overrides.img_size == 384
  assert vit.schedule.base_lr == pytest.approx(0.006)

  resnet = transfer.get_config("model=resnet50,dataset=cifar10")  # ImageNet mean/std
  assert "normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))" in resnet.data.preprocess_train
  assert transfer.get_config("init_from=/w").init_from == "/w"


def test_transfer_on_an_image_folder(tmp_path):
  transfer = load_config_module("transfer")
  small = write_image_folder(str(tmp_path / "small"), splits=(("train", 5), ("val", 2)), size=40)
  config = transfer.get_config(f"dataset=folder:{small}")
  assert config.hyperrule.num_train == 15 and config.hyperrule.small_images
  assert config.total_steps == 500 and "resize(160)|random_crop(128)" in config.data.preprocess_train
  large = write_image_folder(str(tmp_path / "large"), splits=(("train", 2),), classes=2, size=100)
  config = transfer.get_config(f"dataset=folder:{large},num_train=30000")
  assert not config.hyperrule.small_images and config.total_steps == 10_000
  assert config.data.mix == "mixup(0.1)" and "random_crop(384)" in config.data.preprocess_train
  config = transfer.get_config(f"dataset=folder:{large},resolution=small")
  assert "random_crop(128)" in config.data.preprocess_train
  with pytest.raises(ConfigError, match="has no 'train' folder"):
    transfer.get_config(f"dataset=folder:{tmp_path / 'missing'}")


def test_transfer_unknown_dataset_needs_its_size():
  transfer = load_config_module("transfer")
  with pytest.raises(ConfigError, match="num_train=.*resolution=small|large"):
    transfer.get_config("dataset=not_in_table")
  config = transfer.get_config("dataset=not_in_table,num_train=100000,resolution=large")
  assert config.total_steps == 10_000
  with pytest.raises(ConfigError, match="needs a value"):
    transfer.get_config("dataset")
  with pytest.raises(ConfigError, match="is not a int"):
    transfer.get_config("num_train=many")


# ---------------------------------------------------------------------------
# The recipe numbers of the paper configs.
# ---------------------------------------------------------------------------
def test_imagenet_resnet_recipe():
  module = load_config_module("imagenet_resnet")
  config = module.get_config("depth=50")
  assert config.model.name == "resnet50" and config.total_epochs == 90
  assert config.batch_size == 1024 and config.schedule.base_lr == pytest.approx(0.4)
  assert config.schedule.warmup_epochs == 5 and config.schedule.decay == "step"
  assert [round(b * 90) for b in config.schedule.boundaries] == [30, 60, 80]
  assert config.optimizer.weight_decay == 1e-4 and config.label_smoothing == 0.0
  cosine = module.get_config("depth=101,variant=cosine,batch_size=256")
  assert cosine.model.name == "resnet101" and cosine.schedule.decay == "cosine"
  assert cosine.label_smoothing == 0.1 and cosine.schedule.base_lr == pytest.approx(0.1)
  with pytest.raises(ConfigError, match="depth=49"):
    module.get_config("depth=49")


def test_imagenet_efficientnet_recipe():
  module = load_config_module("imagenet_efficientnet")
  config = module.get_config("variant=b0")
  assert config.schedule.base_lr == pytest.approx(0.256) and config.batch_size == 4096
  # x0.97 every 2.4 epochs of 1,281,167 images at batch 4096.
  assert config.schedule.decay == "exponential" and config.schedule.decay_every == 751
  assert config.optimizer.to_dict() == {"name": "rmsprop", "decay": 0.9, "momentum": 0.9,
                                        "eps": 1e-3, "weight_decay": 1e-5,
                                        "grad_clip_norm": None, "layer_decay": None}
  assert config.model.overrides.bn_momentum == 0.99 and config.model.overrides.drop_path_rate == 0.2
  assert config.ema_decay == 0.9999 and "autoaugment" in config.data.preprocess_train
  b7 = module.get_config("variant=b7")
  assert b7.model.name == "efficientnet_b7" and "inception_crop(600" in b7.data.preprocess_train
  with pytest.raises(ConfigError, match="variant='b8'"):
    module.get_config("variant=b8")


def test_imagenet_convnext_recipe():
  module = load_config_module("imagenet_convnext")
  config = module.get_config("")
  assert config.model.name == "convnext_tiny" and config.total_epochs == 300
  assert config.batch_size == 4096 and config.schedule.base_lr == pytest.approx(4e-3)
  assert config.schedule.warmup_epochs == 20 and config.schedule.decay == "cosine"
  assert config.optimizer.name == "adamw" and config.optimizer.weight_decay == 0.05
  assert config.model.overrides.drop_path_rate == 0.1 and config.label_smoothing == 0.1
  assert config.ema_decay == 0.9999 and "randaugment(2, 9)" in config.data.preprocess_train
  assert config.data.mix == "mixup_or_cutmix(0.8, 1.0)"
  assert "resize_small(256" in config.data.preprocess_eval
  assert "82.1%" in module.__doc__ and "Table 1" in module.__doc__
  base = module.get_config("variant=base,batch_size=1024")
  assert base.model.overrides.drop_path_rate == 0.5
  assert base.schedule.base_lr == pytest.approx(1e-3)
  with pytest.raises(ConfigError, match="variant='huge'"):
    module.get_config("variant=huge")


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NOT_RUNNABLE])
def test_full_size_configs_name_valid_models_and_overrides(name):
  """The non-smoke configs build their models (constructing the module checks every override);
  ViTs are built at the size of their evaluation crop."""
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  config = load_config_module(name).get_config("")
  overrides = dict(config.model.get("overrides", None) or {})
  module = models.create_model(config.model.name, num_classes=10, **overrides)
  # (The embedded digits have no preprocess_eval: their size is config.data.image_size.)
  if models.model_info(config.model.name).family == "vit" and config.data.name != "digits":
    assert str(module.img_size) in config.data.preprocess_eval, (module.img_size, config.data)


def test_imagenet_maxvit_recipe():
  module = load_config_module("imagenet_maxvit")
  config = module.get_config("")
  assert config.model.name == "maxvit_tiny_tf_224" and config.total_epochs == 300
  assert config.batch_size == 4096 and config.schedule.base_lr == pytest.approx(3e-3)
  assert config.schedule.warmup_steps == 10_000 and config.schedule.decay == "cosine"
  assert config.optimizer.name == "adamw" and config.optimizer.weight_decay == 0.05
  assert config.model.overrides.drop_path_rate == 0.2 and config.label_smoothing == 0.1
  assert config.grad_clip_norm == 1.0 and "randaugment(2, 10)" in config.data.preprocess_train
  assert config.data.mix == "mixup(0.8)" and "resize_small(236" in config.data.preprocess_eval
  assert "83.62%" in module.__doc__ and "2204.01697" in module.__doc__
  base = module.get_config("variant=base,batch_size=1024")
  assert base.model.name == "maxvit_base_tf_224" and base.model.overrides.drop_path_rate == 0.4
  assert base.schedule.base_lr == pytest.approx(7.5e-4)
  with pytest.raises(ConfigError, match="variant='large'"):
    module.get_config("variant=large")
