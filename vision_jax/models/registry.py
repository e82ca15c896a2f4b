"""One registry for every model variant: names -> constructors and pretrained metadata.

A variant is data (a table of block counts, a ViT size, EfficientNet's compound
coefficients) bound to one module class of its family. `register_model` records
the constructor with its `ModelInfo`; `create_model` builds it by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


class ModelError(ValueError):
  """An unknown model name, or arguments the model cannot be built with; says how to fix it."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """Pretrained metadata carried by each registered name.

  Attributes:
    name: registry name.
    family: module family ("resnet", "resnet_v2", "efficientnet", "vit", "vgg", "convnext").
    input_size: side of the square input the variant (and its weights) expects.
    crop_pct: centre-crop fraction used at evaluation (resize to size/crop_pct, crop size).
    interpolation: resize filter of that evaluation ('bicubic' or 'bilinear'), as the
      reference weights were evaluated.
    mean: per-channel mean of the input normalisation, for values in [0, 1].
    std: per-channel std of the input normalisation.
    classifier: '/'-joined path of the classifier inside `params`.
    paper: the paper the architecture comes from.
    timm_name: the timm model that has the same architecture, if any.
    license: license of the reference pretrained weights.
    source: where the reference weights come from.
  """

  name: str
  family: str
  input_size: int
  crop_pct: float
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  classifier: str
  paper: str
  timm_name: str | None = None
  license: str = "apache-2.0"
  source: str = ""
  interpolation: str = "bicubic"


@dataclasses.dataclass(frozen=True)
class _Entry:
  constructor: Callable[..., nn.Module]
  info: ModelInfo


_REGISTRY: dict[str, _Entry] = {}


def register_model(constructor: Callable[..., nn.Module], info: ModelInfo) -> None:
  """Registers `constructor(num_classes=..., dtype=..., **overrides)` as `info.name`."""
  if info.name in _REGISTRY:
    raise ValueError(f"Model {info.name!r} is registered twice.")
  _REGISTRY[info.name] = _Entry(constructor, info)


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
  """Sorted registered names that match a shell-style `pattern` (and `family`)."""
  return sorted(
      name for name, entry in _REGISTRY.items()
      if fnmatch.fnmatch(name, pattern) and (family is None or entry.info.family == family))


def _entry(name: str) -> _Entry:
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
    hint = f" Did you mean one of {close}?" if close else ""
    raise ModelError(
        f"Unknown model {name!r}.{hint} `vision_jax.models.list_models()` lists all "
        f"{len(_REGISTRY)} registered names.")
  return _REGISTRY[name]


def model_info(name: str) -> ModelInfo:
  """The pretrained metadata of a registered model."""
  return _entry(name).info


def create_model(name: str, num_classes: int = 1000, dtype: Any = jnp.float32,
                 **overrides: Any) -> nn.Module:
  """Builds a registered model.

  Args:
    name: a name from `list_models()`.
    num_classes: size of the classifier; 0 returns the pooled features.
    dtype: compute dtype (parameters always stay float32).
    **overrides: fields of the family's module to change, e.g. `drop_path_rate=0.1`
      or `img_size=384` for a ViT.

  Returns:
    A flax module, called as `module.apply(variables, images_nhwc, train=False)`.
  """
  entry = _entry(name)
  if num_classes < 0:
    raise ModelError(f"create_model({name!r}): num_classes must be >= 0, got {num_classes}.")
  try:
    return entry.constructor(num_classes=num_classes, dtype=dtype, **overrides)
  except TypeError as e:
    module_cls = _module_class(entry.constructor)
    fields = sorted(
        f.name for f in dataclasses.fields(module_cls)
        if f.name not in ("parent", "name") and f.init) if module_cls else []
    unknown = sorted(set(overrides) - set(fields)) if fields else []
    if unknown:
      raise ModelError(
          f"create_model({name!r}): unknown override(s) {unknown}. "
          f"Valid fields of {module_cls.__name__}: {fields}.") from None
    raise


def _module_class(constructor: Callable[..., Any]) -> type | None:
  """The linen class behind a constructor (a class or a functools.partial of one)."""
  target = getattr(constructor, "func", constructor)
  return target if inspect.isclass(target) and dataclasses.is_dataclass(target) else None
