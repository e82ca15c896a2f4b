"""Converted weights on disk: an orbax checkpoint of the variables plus a JSON of metadata.

Layout of a converted-weights directory:
  DIR/variables/   orbax (PyTree) checkpoint of {'params': ..., 'batch_stats': ...}
  DIR/model.json   {"model": registry name, "num_classes": N, "overrides": {...},
                    "source": ..., "info": ModelInfo fields}
Training configs point `init_from` at DIR.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from vision_jax import models

METADATA_FILE = "model.json"
VARIABLES_DIR = "variables"


def save_converted(directory: str, variables: Mapping[str, Any], model_name: str,
                   num_classes: int, overrides: Mapping[str, Any] | None = None,
                   source: str = "") -> str:
  """Writes variables and metadata; refuses to overwrite an existing conversion."""
  directory = os.path.abspath(directory)
  target = os.path.join(directory, VARIABLES_DIR)
  if os.path.exists(target):
    raise FileExistsError(f"{target} already exists; choose another --output or remove it.")
  os.makedirs(directory, exist_ok=True)
  host = jax.tree_util.tree_map(np.asarray, dict(variables))
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(target, host)
  meta = {
      "model": model_name,
      "num_classes": int(num_classes),
      "overrides": dict(overrides or {}),
      "source": source,
      "info": dataclasses.asdict(models.model_info(model_name)),
      "num_params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(host.get("params", {})))),
  }
  with open(os.path.join(directory, METADATA_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  return directory


def load_converted(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a directory written by `save_converted`: returns (metadata, variables)."""
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, METADATA_FILE)
  var_path = os.path.join(directory, VARIABLES_DIR)
  if not os.path.isfile(meta_path) or not os.path.isdir(var_path):
    raise FileNotFoundError(
        f"{directory} is not a converted-weights directory: expected {METADATA_FILE} and "
        f"{VARIABLES_DIR}/ written by tools/convert_weights.py.")
  with open(meta_path) as f:
    meta = json.load(f)
  with ocp.PyTreeCheckpointer() as checkpointer:
    try:
      variables = checkpointer.restore(var_path)
    except Exception as e:  # orbax raises many types for damaged files
      raise ValueError(f"Cannot read the checkpoint in {var_path}: it is damaged or "
                       f"incomplete ({type(e).__name__}: {e}). Convert the weights again.") from e
  return meta, variables
