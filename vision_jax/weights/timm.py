"""Load timm checkpoints (numpy state dicts) into vision_jax models.

Each model family registers a `TimmFamily`: which timm names it covers, how a
timm name (and its state dict) maps to a registered vision_jax model, and how
each leaf of our variables is found in timm's state dict. The matching, the
error report and the assembly of the variables are those of `weights.core`,
shared with the torchvision and .npz loaders, so every family gets the same
checks: unknown name, missing keys, unexpected keys, wrong shapes, leaves
without a timm counterpart.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np

# Re-exported: family modules and older callers import these from here.
from vision_jax.weights.core import (  # noqa: F401
    NoCounterpart, Path, Slot, Transform, WeightLoadError, abstract_variables, build_model,
    conv_kernel, dense_kernel, identity, infer_architecture, listing, match, shapes_of, to_numpy)


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
      variables; raises `NoCounterpart` for a leaf timm has no key for.
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
    state_dict: timm parameter names -> arrays (numpy, torch tensors, or anything
      np.asarray takes, e.g. what `safetensors.numpy.load_file` returns).
    dtype: compute dtype of the returned module.
    **overrides: extra `create_model` overrides (drop_path_rate=0.1, say).

  Returns:
    (module, variables): `module.apply(variables, images_nhwc, train=False)` gives
    the same logits as the timm model in eval mode on the NCHW version of the input.

  Raises:
    WeightLoadError: the name is unknown, or keys are missing, unexpected or of the
      wrong shape. The message names the model and lists every mismatch.
  """
  sd = to_numpy(state_dict)
  family = timm_family(timm_name)
  model_name, num_classes, resolved = resolve(timm_name, sd)
  return load_state_dict(f"from_timm({timm_name!r})", model_name, sd, family.leaf_key,
                         {"num_classes": num_classes, **resolved, **overrides}, dtype=dtype,
                         ignore=family.ignore,
                         footer="Check that the checkpoint belongs to this timm model name.")


def load_state_dict(caller: str, model_name: str, sd: Mapping[str, np.ndarray],
                    leaf_key: Callable[[str, Path], tuple[str, Transform]],
                    kwargs: Mapping[str, Any], dtype: Any = jnp.float32,
                    ignore: str | None = None, footer: str = ""):
  """Builds `model_name(**kwargs)` and fills it from a PyTorch-layout state dict.

  Shared by `from_timm` and `from_torchvision`: one key per leaf, found by `leaf_key`.

  Returns:
    (module, variables).

  Raises:
    WeightLoadError: the model cannot be built, or the state dict does not fit it.
  """
  kwargs = dict(kwargs)
  module = build_model(caller, model_name, dtype=dtype, **kwargs)
  shapes = abstract_variables(module, model_name, kwargs)

  def lookup(collection: str, path: Path, shape) -> Slot:
    del shape  # PyTorch layouts are checked after the transform
    return Slot.single(*leaf_key(collection, path))

  num_classes = kwargs.pop("num_classes", None)
  header = (f"{caller}: the state dict does not fit vision_jax model {model_name!r} "
            f"(num_classes={num_classes}, overrides={kwargs}).")
  variables, _ = match(shapes, lookup, sd, header=header, footer=footer, ignore=ignore)
  return module, variables


def resolve(timm_name: str, state_dict: Mapping[str, Any]) -> tuple[str, int, dict[str, Any]]:
  """(registry name, num_classes, create_model overrides) for a timm checkpoint."""
  family = timm_family(timm_name)
  arch = timm_name.split(".")[0]
  model_name, overrides = family.resolve(arch, state_dict)
  classifier_key = (family.classifier_key(arch) if callable(family.classifier_key)
                    else family.classifier_key)
  inferred = infer_architecture(shapes_of(state_dict), f"from_timm({timm_name!r})",
                                classifier=(classifier_key, 0))
  return model_name, inferred["num_classes"], dict(overrides)
