"""The trainer's fields and their defaults, written once.

Every config file starts from `base_config()` and sets only what differs (big_vision
keeps such a `configs/common.py`). The trainer calls `with_defaults(config)`, so a
config built by hand (a test, a notebook) gets the same defaults, and then reads
fields directly instead of `config.get(field, default)`.

Durations (`total`, `warmup`, `log_every`, `eval_every`, `checkpoint_every`) can be
given in steps, epochs or examples: `base_config()` declares the three units as
unset placeholders, so exactly one of them can be set from a config or the command
line, and `DURATION_DEFAULTS` says what an unset duration means.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  import ml_collections


class Unset:
  """An optional field of type `kind` that is unset (None) by default.

  Each config gets its own `ml_collections` placeholder for it (`fresh`): one
  shared placeholder object would let a value set in one config appear in all.
  """

  def __init__(self, kind: type):
    self.kind = kind

  def __repr__(self) -> str:
    return f"Unset({self.kind.__name__})"


placeholder = Unset


def _ml_collections():
  # Imported when a config is built: the constants below (DTYPES, the defaults) are read by
  # tools that run where ml_collections is not installed (tools/accelerator_report.py).
  return importlib.import_module("ml_collections")


DURATION_UNITS = ("steps", "epochs", "examples")

# The compute dtypes of config.dtype, by name (jnp.dtype(name) is the dtype). The
# benchmarks offer the same names plus 'auto'.
DTYPES = ("float32", "bfloat16", "float16")

# What an unset duration means, in steps; None: one of its units must be set.
# "run" stands for the total number of steps of the run.
DURATION_DEFAULTS: dict[str, int | str | None] = {
    "total": None,
    "warmup": 0,
    "log_every": 50,
    "eval_every": "run",
    "checkpoint_every": "run",
}

# Top-level trainer fields and their defaults. Fields set to None are optional.
TRAINER_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    # The recipe: what the model is trained on and how it is evaluated
    # (vision_jax.train.recipes lists them).
    "recipe": "supervised",
    "dtype": "float32",
    # Rematerialise the model's blocks in the backward pass: 'none', 'block' (keep matmul
    # and conv outputs) or 'full' (keep only block inputs); vision_jax/models/layers.py.
    "remat": "none",
    "batch_size": placeholder(int),
    "eval_batch_size": placeholder(int),  # None: batch_size
    "num_devices": placeholder(int),  # None: every device of every process
    "fsdp": False,
    "grad_accum_steps": 1,
    "label_smoothing": 0.0,
    "ema_decay": 0.0,
    "prefetch": 2,
    "keep_checkpoints": 2,
    # A checkpoint that cannot be read: 'stop', or 'restart' from init_from / scratch when no
    # readable one is left (damaged steps are moved aside either way).
    "on_corrupt_checkpoint": "stop",
    # Starting from pretrained weights: another run's workdir or converted weights.
    "init_from": placeholder(str),
    "dont_load": ("params/head/.*",),  # regexes kept at their fresh init
    "zero_init_head": True,
    "freeze_bn": False,
    "trainable_params": placeholder(str),  # regex of the only trained parameters
}

MODEL_DEFAULTS: dict[str, Any] = {"name": placeholder(str), "overrides": {}}
SCHEDULE_DEFAULTS: dict[str, Any] = {"base_lr": placeholder(float), "decay": "cosine"}
# Options every optimizer takes; the per-optimizer ones (momentum, b1, ...) have their
# defaults in vision_jax/train/optim.py.
OPTIMIZER_DEFAULTS: dict[str, Any] = {
    "name": "sgd", "weight_decay": 0.0,
    "grad_clip_norm": placeholder(float),  # None: no clipping
    "layer_decay": placeholder(float),  # None: no layer-wise lr decay
}
# The options of each optimizer (config.optimizer.NAME) and of each schedule decay
# (config.schedule.NAME), with their defaults. They differ between optimizers (eps is
# 1e-8 for AdamW, 1e-3 for TensorFlow's RMSProp), so `base_config()` does not declare
# them; `optim.make_optimizer` / `make_schedule` read an unset one from here.
OPTIMIZER_OPTIONS: dict[str, dict[str, Any]] = {
    "sgd": {"momentum": 0.9, "nesterov": False},
    "adamw": {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
    "rmsprop": {"decay": 0.9, "eps": 1e-3, "momentum": 0.9},
    "lars": {"momentum": 0.9, "nesterov": False, "trust_coefficient": 0.001},
}
SCHEDULE_OPTIONS: dict[str, dict[str, Any]] = {
    "cosine": {"end_lr_factor": 0.0},
    "linear": {"end_lr_factor": 0.0},
    "step": {"boundaries": (1 / 3, 2 / 3, 8 / 9), "decay_factor": 0.1},
    "exponential": {"decay_factor": 0.97},
    "constant": {},
}

# Optional fields of config.data that the sources and checks read, with what an unset
# one means. They are not filled into config.data (the in-memory sources warn about
# tf.data fields that a config sets); the command line adds one that an override
# names (main.OPTIONAL_FIELDS) and the readers take an unset one from here.
DATA_DEFAULTS: dict[str, Any] = {
    "max_bad_fraction": 0.1,  # share of a split that may become unreadable (data/folder.py)
    "data_dir": placeholder(str),
    "validate_files": "auto",  # file checks of the folder source (folder.VALIDATE_MODES)
    "shuffle_buffer": placeholder(int),
    "num_parallel_calls": placeholder(int),  # None: tf.data.AUTOTUNE
    "prefetch_batches": placeholder(int),  # None: tf.data.AUTOTUNE
    "cache": False,
    "train_split": placeholder(str),
    "eval_split": placeholder(str),
    "checks": "error",  # data/report.py CHECK_MODES
    "max_cross_split_duplicates": 0,
    "balance": "none",  # data/balance.py BALANCE_MODES
}

# The block of each recipe that has one (config.<recipe>), filled in by
# `with_defaults` when config.recipe names it.
SIMCLR_DEFAULTS: dict[str, Any] = {
    "temperature": placeholder(float),  # NT-Xent temperature; required
    "head": {"hidden_dim": None, "out_dim": 128, "num_layers": 2},  # projection MLP
    "knn": {"k": 200, "temperature": 0.1},  # weighted kNN monitor at every eval
    "linear": {"steps": 1000, "learning_rate": 1e-2, "weight_decay": 0.0, "batch_size": 4096},
    "memory_split": None,  # None: config.data.train_split
}
RECIPE_BLOCKS: dict[str, dict[str, Any]] = {"simclr": SIMCLR_DEFAULTS}


def fresh(value: Any) -> Any:
  """A default as a config stores it: a new placeholder for an `Unset`, copies of containers."""
  if isinstance(value, Unset):
    return _ml_collections().config_dict.placeholder(value.kind)
  if isinstance(value, dict):
    return {k: fresh(v) for k, v in value.items()}
  return value


def fresh_all(defaults: dict[str, Any]) -> dict[str, Any]:
  return {k: fresh(v) for k, v in defaults.items()}


def _duration_fields(prefix: str) -> dict[str, Any]:
  return {f"{prefix}_{unit}": _ml_collections().config_dict.placeholder(
      float if unit == "epochs" else int) for unit in DURATION_UNITS}


def base_config() -> ml_collections.ConfigDict:
  """Every trainer field with its default; a config file sets what differs.

  `config.model`, `config.schedule` and `config.optimizer` exist with their
  defaults; `config.data` is the config's own (see docs/data.md).
  """
  config = _ml_collections().ConfigDict(fresh_all(TRAINER_DEFAULTS))
  for prefix in DURATION_DEFAULTS:
    if prefix != "warmup":
      config.update(_duration_fields(prefix))
  config.model = _ml_collections().ConfigDict(fresh_all(MODEL_DEFAULTS))
  config.schedule = _ml_collections().ConfigDict(
      {**fresh_all(SCHEDULE_DEFAULTS), **_duration_fields("warmup")})
  config.optimizer = _ml_collections().ConfigDict(fresh_all(OPTIMIZER_DEFAULTS))
  return config


def set_duration(node: Any, prefix: str, **value: Any) -> None:
  """Sets one unit of a duration and clears the others: set_duration(config, 'total', epochs=30)."""
  if len(value) != 1 or next(iter(value)) not in DURATION_UNITS:
    raise ValueError(f"set_duration({prefix!r}): give exactly one of {DURATION_UNITS}.")
  for unit in DURATION_UNITS:
    if f"{prefix}_{unit}" in node:
      node[f"{prefix}_{unit}"] = None
  unit, amount = next(iter(value.items()))
  node[f"{prefix}_{unit}"] = amount


def with_defaults(config: Any) -> ml_collections.ConfigDict:
  """A copy of `config` with every trainer default filled in where the field is absent.

  Fields the config sets (None included) are kept; unknown fields are kept too, so
  a recipe can read its own block (`config.simclr`).
  """
  merged = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") \
      else _ml_collections().ConfigDict(config)
  with merged.unlocked():
    for key, value in TRAINER_DEFAULTS.items():
      if key not in merged:
        merged[key] = fresh(value)
    blocks = [("model", MODEL_DEFAULTS), ("schedule", SCHEDULE_DEFAULTS),
              ("optimizer", OPTIMIZER_DEFAULTS)]
    if merged.recipe in RECIPE_BLOCKS:
      blocks.append((merged.recipe, RECIPE_BLOCKS[merged.recipe]))
    for block, defaults in blocks:
      if block not in merged or merged[block] is None:
        merged[block] = _ml_collections().ConfigDict()
      _fill(merged[block], defaults)
  return merged


def _fill(node: Any, defaults: dict[str, Any]) -> None:
  """Adds each default that `node` lacks; a nested dict fills a sub-block the node has."""
  for key, value in defaults.items():
    if key not in node:
      node[key] = fresh(value)
    elif isinstance(value, dict) and hasattr(node[key], "keys"):
      with node[key].unlocked() if hasattr(node[key], "unlocked") else contextlib.nullcontext():
        _fill(node[key], value)
