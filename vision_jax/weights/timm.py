"""Load timm checkpoints (numpy state dicts) into vision_jax models.

Each model family's module (`timm_<family>.py`) defines `FAMILIES`, its
`TimmFamily` descriptions: which timm names it covers, how a timm name (and its
state dict) maps to a registered vision_jax model, and how each leaf of our
variables is found in timm's state dict. `timm_families.FAMILIES` lists them all
in one explicit tuple, searched in order. The matching, the
error report and the assembly of the variables are those of `weights.core`,
shared with the torchvision and .npz loaders, so every family gets the same
checks: unknown name, missing keys, unexpected keys, wrong shapes, leaves
without a timm counterpart.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax.numpy as jnp

# Re-exported: older callers import these from here.
from vision_jax.weights.core import (  # noqa: F401
    NoCounterpart, Path, Slot, TimmFamily, Transform, WeightLoadError, abstract_variables,
    build_model, conv_kernel, dense_kernel, identity, infer_architecture, listing,
    load_state_dict, match, shapes_of, to_numpy)
from vision_jax.weights.timm_families import FAMILIES


def timm_family(timm_name: str) -> TimmFamily:
  """The family that covers `timm_name` (its '.tag', if any, is ignored)."""
  arch = timm_name.split(".")[0]
  for family in FAMILIES:
    if re.fullmatch(family.pattern, arch):
      return family
  patterns = ", ".join(f"{f.name}: {f.pattern}" for f in FAMILIES)
  raise WeightLoadError(
      f"from_timm: unknown timm model {timm_name!r}. Supported timm names match one of "
      f"these patterns: {patterns}.")


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
