"""Using what was trained: load a run or converted weights, read images, classify them.

The command-line tools (tools/predict.py, tools/evaluate.py, tools/explain.py)
are thin over this module. A model comes from either
  * a training workdir: the latest checkpoint (EMA parameters when the run kept
    them) and WORKDIR/environment.json, which holds the run's config, hence the
    model, its overrides, the dataset (class names) and the eval preprocessing;
  * a converted-weights directory (tools/convert_weights.py): model.json gives
    the model and its "preprocess" metadata; 1000-class weights get the ImageNet-1k
    class names shipped in `vision_jax/data/labels/imagenet1k.txt`;
  * a pretrained name (`timm:resnet50.a1_in1k`, `hf-hub:ORG/REPO`, `local-dir:/path`,
    `torchvision:vgg16_bn.IMAGENET1K_V1`, `npz:ARCH@/path.npz`), resolved by
    `vision_jax.weights.hub.pretrained` through the Hugging Face hub cache: the
    checkpoint's config.json gives the preprocessing and the class names.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

# Image files and the eval forward live in leaf modules (weights/hub uses them too, and must not
# import this module); their names stay importable from here.
from vision_jax.data.image_files import (  # noqa: F401  pylint: disable=unused-import
    IMAGE_EXTENSIONS, imagenet_class_names, list_images, read_images)
from vision_jax.forward import eval_apply as _apply  # noqa: F401


class LoadError(RuntimeError):
  """The workdir or weights directory cannot be used; the message names it and says why."""


@dataclasses.dataclass
class LoadedModel:
  """A classifier ready to run on image files.

  Attributes:
    module: the flax module.
    variables: its variables (eval mode).
    class_names: one name per class.
    preprocess: op string that turns encoded image bytes into the model input.
    mean: per-channel mean of the input normalisation (for display), or None.
    std: per-channel std, or None.
    source: the directory it came from.
  """

  module: Any
  variables: Any
  class_names: list[str]
  preprocess: str
  mean: Sequence[float] | None
  std: Sequence[float] | None
  source: str

  def logits(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(_apply(self.module, self.variables, images))


WEIGHTS_HELP = ("a pretrained name (timm:TAG such as timm:resnet50.a1_in1k, hf-hub:ORG/REPO, "
                "local-dir:/path, torchvision:vgg16_bn.IMAGENET1K_V1, npz:ARCH@/path.npz) or a "
                "tools/convert_weights.py output directory")


def load_model(workdir: str | None = None, weights: str | None = None) -> LoadedModel:
  """Loads a training run (`workdir`) or weights (`weights`); exactly one is given.

  `weights` is a converted-weights directory or a pretrained name (see `WEIGHTS_HELP`).
  """
  if (workdir is None) == (weights is None):
    raise LoadError("Give exactly one of --workdir (a training run) or --weights (" +
                    WEIGHTS_HELP + ").")
  if workdir is not None:
    return _load_workdir(workdir)
  from vision_jax.weights.hub import is_pretrained_spec  # pylint: disable=import-outside-toplevel
  if is_pretrained_spec(weights) and not os.path.isdir(weights):
    return _load_pretrained(weights)
  if not os.path.exists(weights):
    raise LoadError(f"--weights {weights}: no such directory. A pretrained model is named with "
                    f"a prefix, e.g. --weights timm:{weights} (see --help).")
  return _load_weights(weights)


def _load_pretrained(spec: str) -> LoadedModel:
  """A model named by a tag: every failure becomes one LoadError line (the WeightLoadError
  table of a file that does not fit the architecture included)."""
  from vision_jax.weights import WeightLoadError, hub  # pylint: disable=import-outside-toplevel
  try:
    loaded = hub.pretrained(spec)
  except WeightLoadError as e:
    raise LoadError(f"--weights {e}") from None
  return LoadedModel(loaded.module, loaded.variables, loaded.class_names, loaded.preprocess,
                     loaded.preprocess_cfg.get("mean"), loaded.preprocess_cfg.get("std"),
                     loaded.source)


def _load_workdir(workdir: str) -> LoadedModel:
  from vision_jax import environment, models  # pylint: disable=import-outside-toplevel
  from vision_jax.train import checkpoint  # pylint: disable=import-outside-toplevel
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise LoadError(f"--workdir {workdir} does not exist.")
  ckpt_dir = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  state = checkpoint.open_latest(workdir)
  if state is None:
    raise LoadError(f"--workdir {workdir} holds no checkpoint (expected {ckpt_dir}/<step>); "
                    "train first, or point --workdir at the run's directory.")
  try:
    config = environment.read_environment(workdir)["config"]
  except (FileNotFoundError, KeyError) as e:
    raise LoadError(f"--workdir {workdir}: cannot read the run's config ({e}).") from None
  data = config.get("data", {})
  params = state.get("ema_params") or state["params"]
  variables = {"params": params}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  num_classes = _num_classes(params, config["model"]["name"])
  overrides = _hashable(config.get("model", {}).get("overrides"))
  module = models.create_model(config["model"]["name"], num_classes=num_classes, **overrides)
  names = dataset_class_names(data, num_classes)
  preprocess, mean, std = _workdir_preprocess(data)
  return LoadedModel(module, variables, names, preprocess, mean, std, workdir)


def _hashable(overrides: dict[str, Any] | None) -> dict[str, Any]:
  """Model overrides read back from JSON, lists turned back into tuples.

  A module's attributes must be hashable (jitted functions take the module as a
  static argument), and JSON has no tuples: stage_sizes=(1, 1, 1) comes back as
  a list.
  """
  def fix(value):
    return tuple(fix(v) for v in value) if isinstance(value, list) else value
  return {k: fix(v) for k, v in dict(overrides or {}).items()}


def _num_classes(params: Any, model_name: str) -> int:
  from vision_jax.weights.core import classifier_classes, classifier_path  # pylint: disable=import-outside-toplevel
  num_classes = classifier_classes(params if isinstance(params, dict) else {}, model_name)
  if num_classes is None:
    raise LoadError(f"The checkpoint has no classifier (params/{'/'.join(classifier_path(model_name))}): "
                    "it cannot classify.")
  return num_classes


def dataset_class_names(data: dict[str, Any], num_classes: int) -> list[str]:
  """Class names of a run's dataset: digits, folder class names, tfds label names."""
  name = str(data.get("name", ""))
  if name == "digits":
    classes = data.get("classes") or list(range(10))
    return [str(c) for c in classes]
  if name.startswith("folder:"):
    root = os.path.join(name[len("folder:"):], str(data.get("train_split") or "train"))
    if os.path.isdir(root):
      names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
      if len(names) == num_classes:
        return names
  elif name and name != "synthetic":
    try:
      import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
      builder = tfds.builder(name, data_dir=data.get("data_dir"))
      names = builder.info.features[data.get("label_key") or "label"].names
      if len(names) == num_classes:
        return list(names)
    except Exception:  # pylint: disable=broad-except
      pass  # not prepared here: fall back to numbers
  if num_classes == 1000:
    return imagenet_class_names()
  return [f"class_{i}" for i in range(num_classes)]


def _workdir_preprocess(data: dict[str, Any]) -> tuple[str, Any, Any]:
  if data.get("name") == "digits":
    # The digits source upscales 0..16 greyscale to image_size with values in [-1, 1].
    size = int(data.get("image_size", 32))
    return f"decode(1)|resize({size}, antialias=True)|value_range(-1, 1)", [0.5], [0.5]
  spec = data.get("preprocess_eval")
  if not spec:
    raise LoadError("The run's config.data has no preprocess_eval op string to read images with.")
  return spec, None, None


def _load_weights(directory: str) -> LoadedModel:
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.data.eval_preprocess import eval_preprocess  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import io  # pylint: disable=import-outside-toplevel
  try:
    meta, variables = io.load_converted(directory)
  except (FileNotFoundError, ValueError) as e:
    raise LoadError(f"--weights: {e}") from None
  module = models.create_model(meta["model"], num_classes=int(meta["num_classes"]),
                               **_hashable(meta.get("overrides")))
  info = meta.get("info", {})
  preprocess = meta.get("preprocess") or {
      "input_size": info.get("input_size", 224), "crop_pct": info.get("crop_pct", 0.875),
      "interpolation": info.get("interpolation", "bicubic"), "mean": info.get("mean"),
      "std": info.get("std")}
  n = int(meta["num_classes"])
  names = meta.get("class_names")  # written by convert_weights.py --weights (config.json)
  if not names or len(names) != n:
    names = imagenet_class_names() if n == 1000 else [f"class_{i}" for i in range(n)]
  return LoadedModel(module, variables, names, eval_preprocess(preprocess),
                     preprocess.get("mean"), preprocess.get("std"), os.path.abspath(directory))
