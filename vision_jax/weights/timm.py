"""Load timm checkpoints (numpy state dicts) into vision_jax models.

Each model family registers a `TimmFamily`: which timm names it covers, how a
timm name (and its state dict) maps to a registered vision_jax model, and how
each leaf of our variables is found in timm's state dict. The matching, the
error report and the assembly of the variables are shared here, so every family
gets the same checks: unknown name, missing keys, unexpected keys, wrong shapes.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vision_jax import models

Path = tuple[str, ...]
Transform = Callable[[np.ndarray], np.ndarray]


class WeightLoadError(ValueError):
  """A foreign checkpoint does not fit the vision_jax model it was loaded into."""


# Transforms from PyTorch layouts to flax layouts.
def identity(w: np.ndarray) -> np.ndarray:
  return w


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch conv weight (O, I, H, W) -> flax (H, W, I, O); depthwise too."""
  return np.transpose(w, (2, 3, 1, 0))


def dense_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch linear weight (out, in) -> flax (in, out)."""
  return np.transpose(w, (1, 0))


@dataclasses.dataclass(frozen=True)
class TimmFamily:
  """How one family of timm models maps onto vision_jax.

  Attributes:
    name: family name, used in messages.
    pattern: regex that a timm model name (without its '.tag') must fully match.
    resolve: (timm_name, state_dict) -> (registry name, create_model overrides),
      e.g. ("vit_base_patch16_224", {"img_size": 384}). `num_classes` is filled
      in from `classifier_key` and must not be returned here.
    classifier_key: timm key of the classifier weight; its first dimension is the
      number of classes (absent key: 0 classes, features only).
    leaf_key: (collection, path) -> (timm key, transform) for each leaf of our
      variables.
    ignore: regex of timm keys that have no counterpart and are dropped silently
      (BatchNorm's num_batches_tracked, say).
  """

  name: str
  pattern: str
  resolve: Callable[[str, Mapping[str, np.ndarray]], tuple[str, dict[str, Any]]]
  classifier_key: str | Callable[[str], str]
  leaf_key: Callable[[str, Path], tuple[str, Transform]]
  ignore: str = r".*num_batches_tracked$"


_FAMILIES: list[TimmFamily] = []


def register_timm_family(family: TimmFamily) -> None:
  _FAMILIES.append(family)


def timm_family(timm_name: str) -> TimmFamily:
  """The family that covers `timm_name` (its '.tag', if any, is ignored)."""
  _ensure_families_loaded()
  arch = timm_name.split(".")[0]
  for family in _FAMILIES:
    if re.fullmatch(family.pattern, arch):
      return family
  patterns = ", ".join(f"{f.name}: {f.pattern}" for f in _FAMILIES)
  raise WeightLoadError(
      f"from_timm: unknown timm model {timm_name!r}. Supported timm names match one of "
      f"these patterns: {patterns}.")


def _ensure_families_loaded() -> None:
  # Each family module registers its TimmFamily on import.
  from vision_jax.weights import timm_families  # pylint: disable=unused-import,import-outside-toplevel


def from_timm(timm_name: str, state_dict: Mapping[str, Any], dtype: Any = jnp.float32,
              **overrides: Any):
  """Builds the vision_jax model that matches a timm checkpoint, and its variables.

  Args:
    timm_name: timm model name, e.g. "resnet50", "vit_base_patch16_224.augreg_in21k"
      or "tf_efficientnet_b0"; a '.tag' suffix is allowed and ignored.
    state_dict: timm parameter names -> arrays (numpy, or anything np.asarray takes,
      e.g. what `safetensors.numpy.load_file` returns).
    dtype: compute dtype of the returned module.
    **overrides: extra `create_model` overrides (drop_path_rate=0.1, say).

  Returns:
    (module, variables): `module.apply(variables, images_nhwc, train=False)` gives
    the same logits as the timm model in eval mode on the NCHW version of the input.

  Raises:
    WeightLoadError: the name is unknown, or keys are missing, unexpected or of the
      wrong shape. The message names the model and lists every mismatch.
  """
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  family = timm_family(timm_name)
  model_name, num_classes, resolved = resolve(timm_name, sd)
  kwargs = {**resolved, **overrides}
  try:
    module = models.create_model(model_name, num_classes=num_classes, dtype=dtype, **kwargs)
  except (TypeError, ValueError) as e:
    raise WeightLoadError(f"from_timm({timm_name!r}): cannot build {model_name!r}: {e}") from e
  shapes = abstract_variables(module, model_name, kwargs)

  variables: dict[str, dict[Path, np.ndarray]] = {}
  used: set[str] = set()
  missing, mismatched = [], []
  for collection, tree in shapes.items():
    for path, leaf in traverse_util.flatten_dict(tree).items():
      key, transform = family.leaf_key(collection, path)
      if key not in sd:
        missing.append(f"{key}  (for {collection}/{'/'.join(path)})")
        continue
      used.add(key)
      value = transform(sd[key])
      if tuple(value.shape) != tuple(leaf.shape):
        mismatched.append(
            f"{key} {tuple(sd[key].shape)} -> {collection}/{'/'.join(path)}: "
            f"expected {tuple(leaf.shape)}, got {tuple(value.shape)} after layout transform")
        continue
      variables.setdefault(collection, {})[path] = value.astype(leaf.dtype)
  unexpected = sorted(k for k in sd if k not in used and not re.fullmatch(family.ignore, k))
  if missing or unexpected or mismatched:
    raise WeightLoadError(
        f"from_timm({timm_name!r}): the state dict does not fit vision_jax model "
        f"{model_name!r} (num_classes={num_classes}, overrides={kwargs}).\n"
        + listing("missing keys", sorted(missing)) + listing("unexpected keys", unexpected)
        + listing("shape mismatches", mismatched)
        + "Check that the checkpoint belongs to this timm model name.")
  return module, {c: traverse_util.unflatten_dict(
      {p: jnp.asarray(v) for p, v in leaves.items()}) for c, leaves in variables.items()}


def resolve(timm_name: str, state_dict: Mapping[str, Any]) -> tuple[str, int, dict[str, Any]]:
  """(registry name, num_classes, create_model overrides) for a timm checkpoint."""
  family = timm_family(timm_name)
  arch = timm_name.split(".")[0]
  model_name, overrides = family.resolve(arch, state_dict)
  classifier_key = (family.classifier_key(arch) if callable(family.classifier_key)
                    else family.classifier_key)
  num_classes = int(state_dict[classifier_key].shape[0]) if classifier_key in state_dict else 0
  return model_name, num_classes, dict(overrides)


def abstract_variables(module, model_name: str, overrides: Mapping[str, Any]):
  """Shapes and dtypes of a module's variables, computed without allocating them."""
  size = overrides.get("img_size") or models.model_info(model_name).input_size
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(
      lambda x: module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x,
                            train=False), x)


def listing(title: str, items: list[str], limit: int = 25) -> str:
  if not items:
    return ""
  shown = "\n".join(f"    {item}" for item in items[:limit])
  more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
  return f"  {title} ({len(items)}):\n{shown}{more}\n"
