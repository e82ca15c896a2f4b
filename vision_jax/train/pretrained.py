"""The one door for starting from pretrained weights: merge, skip, resample, report.

`merge_pretrained` walks the freshly initialised variables of the model being
trained and takes each leaf from the pretrained ones when it can:
- a path matching one of `dont_load` (regexes over 'params/head/kernel'-style
  paths) keeps its fresh value; the classifier is then zeroed when `zero_head`;
- ViT position embeddings of another grid are resampled to the new resolution;
- any other shape mismatch is an error naming the parameter and both shapes.
It returns the merged variables and a `LoadReport` whose `table()` lists what
was loaded, skipped, resampled, missing and unexpected. `match_encoder_nesting`
first lines up a SimCLR checkpoint (encoder under 'encoder/') with a plain model,
and the other way round. `pretrained_variables` reads weights named by a tag
(`config.init_from='timm:convnext_tiny.fb_in22k'`) through `weights.hub`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from vision_jax.config_util import ConfigError


@dataclasses.dataclass
class LoadReport:
  loaded: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  resampled: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)

  def table(self, limit: int = 12) -> str:
    lines = [f"{'status':<11} {'count':>5}  parameters"]
    for status in ("loaded", "resampled", "skipped", "missing", "unexpected"):
      items = getattr(self, status)
      shown = ", ".join(items[:limit]) + (f", ... (+{len(items) - limit})" if len(items) > limit else "")
      lines.append(f"{status:<11} {len(items):>5}  {shown}")
    return "\n".join(lines)


def _flatten(variables: Mapping[str, Any]) -> dict[str, Any]:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(variables)).items()}


def resample_grid(pos_embed: np.ndarray, new_tokens: int, num_prefix_tokens: int = 1) -> np.ndarray:
  """Resizes the grid part of a (1, prefix + g*g, D) position embedding (bicubic, like timm)."""
  from vision_jax.models.vit import resample_pos_embed  # pylint: disable=import-outside-toplevel
  new_grid = int(round(math.sqrt(new_tokens - num_prefix_tokens)))
  if new_grid * new_grid + num_prefix_tokens != new_tokens:
    raise ConfigError(f"Cannot resample a position embedding to {new_tokens} tokens: not a square grid.")
  return np.asarray(resample_pos_embed(jnp.asarray(pos_embed), (new_grid, new_grid),
                                       num_prefix_tokens=num_prefix_tokens, method="bicubic"))


def merge_pretrained(target: Mapping[str, Any], source: Mapping[str, Any],
                     dont_load: Sequence[str] = ("params/head/.*",), zero_head: bool = True,
                     origin: str = "the pretrained weights") -> tuple[dict[str, Any], LoadReport]:
  """Merges `source` variables into `target` ({'params': ..., 'batch_stats': ...})."""
  flat_t, flat_s = _flatten(target), _flatten(source)
  patterns = [re.compile(p) for p in dont_load]
  report = LoadReport()
  merged = {}
  for path, fresh in flat_t.items():
    if any(p.fullmatch(path) for p in patterns):
      report.skipped.append(path)
      value = fresh
      if zero_head and path.startswith("params/head/"):
        value = jnp.zeros_like(fresh)
      merged[path] = value
      continue
    if path not in flat_s:
      report.missing.append(path)
      merged[path] = fresh
      continue
    value = np.asarray(flat_s[path])
    if value.shape != tuple(fresh.shape):
      if path.endswith("pos_embed") and value.ndim == 3 and value.shape[-1] == fresh.shape[-1]:
        value = resample_grid(value, fresh.shape[1])
        report.resampled.append(path)
      else:
        raise ConfigError(
            f"Cannot load {path} from {origin}: it has shape {value.shape}, the model expects "
            f"{tuple(fresh.shape)}. Add a regex matching it to config.dont_load to keep it "
            "freshly initialised instead.")
    else:
      report.loaded.append(path)
    merged[path] = jnp.asarray(value, fresh.dtype)
  report.unexpected = sorted(p for p in flat_s if p not in flat_t)
  if not report.loaded and not report.resampled:
    raise ConfigError(f"Nothing could be loaded from {origin}: none of its parameter paths match "
                      f"the model's (e.g. {sorted(flat_s)[:3]} vs {sorted(flat_t)[:3]}). Is it "
                      "a checkpoint of another architecture?")
  unflat = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in merged.items()})
  return unflat, report


def pretrained_variables(init_from: str, model_name: str,
                         model_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The variables of weights named by a tag (timm:, hf-hub:, local-dir:, torchvision:, npz:).

  Resolved, converted and cached by `vision_jax.weights.hub.pretrained`; the
  checkpoint's own classifier comes along and `merge_pretrained` then re-creates
  the head for the new classes (`config.dont_load`).

  Raises:
    ConfigError: the name cannot be resolved or fetched, the file does not fit its
      architecture, or the architecture is not `model_name`.
  """
  from vision_jax.weights import WeightLoadError, hub  # pylint: disable=import-outside-toplevel
  # The config's overrides shape the architecture the file is read into (reduced widths, say);
  # a ViT's img_size is not one of them: its position embeddings are resampled when merged.
  shape = {k: _tuples(v) for k, v in dict(model_overrides or {}).items() if k != "img_size"}
  try:
    loaded = hub.pretrained(init_from, **shape)
  except WeightLoadError as e:
    raise ConfigError(f"config.init_from={init_from!r}: {e}") from None
  if loaded.model_name != model_name:
    raise ConfigError(f"config.init_from={init_from!r} holds {loaded.model_name} weights, but "
                      f"config.model.name is {model_name!r}; set --config.model.name="
                      f"{loaded.model_name} or name weights of {model_name}.")
  differ = {k: v for k, v in loaded.overrides.items() if k != "img_size"
            and (model_overrides or {}).get(k) != v}
  if differ:
    logging.warning("init_from %s was built with model overrides %s that config.model.overrides "
                    "does not set; add them to compute the same function as the checkpoint.",
                    init_from, differ)
  logging.info("init_from %s: %s, %d classes, sha256 %s (%s).", init_from, loaded.source,
               loaded.num_classes, loaded.sha256[:12],
               "cached conversion" if loaded.from_cache else "converted now")
  variables = dict(loaded.variables)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}


def _tuples(value: Any) -> Any:
  """Lists (from a config) as tuples: module fields must be hashable."""
  return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def match_encoder_nesting(source: dict, target_params: Any, init_from: str) -> dict:
  """Bridges SimCLR and plain checkpoints: a SimCLR run keeps its encoder under 'encoder/'.

  Loading a SimCLR workdir into a plain model (linear evaluation, fine-tuning)
  takes the encoder and drops the projection head; loading plain weights into
  a SimCLR run (pretraining from a supervised start) puts them under 'encoder/'.
  """
  params = source.get("params") or {}
  src_nested = "encoder" in params and "head" in params and len(params) == 2
  dst_nested = "encoder" in target_params and "head" in target_params and len(target_params) == 2
  if src_nested and not dst_nested:
    logging.info("%s is a SimCLR checkpoint: loading its encoder; its projection head is "
                 "dropped.", init_from)
    return {key: (tree or {}).get("encoder", {}) for key, tree in source.items()}
  if dst_nested and not src_nested:
    logging.info("Loading %s as the SimCLR encoder.", init_from)
    return {key: {"encoder": tree} for key, tree in source.items() if tree}
  return source
