"""Helpers for config files: typed `key=value` arguments and durations in any unit."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  import ml_collections


class ConfigError(ValueError):
  """A config or its argument string is wrong; the message says what and how to fix it."""


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses "key=value,flag,..." against typed defaults.

  `get_config("depth=50,smoke")` style arguments: each key must be one of
  `defaults`; its value is converted to the default's type; a bare key sets a
  bool to True. An unknown key raises ConfigError listing the valid ones.
  """
  result = dict(defaults)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"Unknown config argument {key!r} in {arg!r}. Valid arguments: "
                        f"{', '.join(f'{k} (default {v!r})' for k, v in defaults.items())}.")
    default = defaults[key]
    if not _:  # bare key
      if not isinstance(default, bool):
        raise ConfigError(f"Config argument {key!r} needs a value ({key}=...).")
      result[key] = True
      continue
    result[key] = _convert(key, value.strip(), default)
  import ml_collections  # pylint: disable=import-outside-toplevel
  # (here: ConfigError and the duration helpers are used where ml_collections is absent)
  return ml_collections.ConfigDict(result)


def _convert(key: str, value: str, default: Any) -> Any:
  try:
    if isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(value)
      return value.lower() in ("true", "1", "yes")
    if isinstance(default, int):
      return int(value)
    if isinstance(default, float):
      return float(value)
  except ValueError:
    raise ConfigError(f"Config argument {key}={value!r} is not a {type(default).__name__}.") from None
  return value


def steps_from(config: Any, prefix: str, *, examples_per_epoch: int | None, batch_size: int,
               default: int | None = None) -> int:
  """The number of steps named by exactly one of `{prefix}_steps/_epochs/_examples`.

  Args:
    config: a ConfigDict (or mapping) holding at most one of the three keys.
    prefix: e.g. "total", "warmup", "log_every".
    examples_per_epoch: size of the training split (needed for epochs).
    batch_size: global batch size (needed for epochs and examples).
    default: returned when none of the keys is set; None makes that an error.
  """
  get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
  given = {unit: get(f"{prefix}_{unit}", None) for unit in ("steps", "epochs", "examples")}
  given = {unit: v for unit, v in given.items() if v is not None}
  if len(given) > 1:
    raise ConfigError(f"Set only one of {', '.join(f'{prefix}_{u}' for u in given)}.")
  if not given:
    if default is None:
      raise ConfigError(f"Set one of {prefix}_steps, {prefix}_epochs or {prefix}_examples.")
    return default
  unit, value = next(iter(given.items()))
  if unit == "steps":
    return int(value)
  if unit == "examples":
    return int(math.ceil(value / batch_size))
  if not examples_per_epoch:
    raise ConfigError(f"{prefix}_epochs needs the size of the training split, which is unknown.")
  return int(math.ceil(value * examples_per_epoch / batch_size))


def require_fields(config: Any, *fields: str) -> None:
  """Raises ConfigError naming the first dotted field that is absent or None."""
  for field in fields:
    node = config
    for part in field.split("."):
      if not hasattr(node, "keys") or part not in node.keys() or node[part] is None:
        raise ConfigError(f"The config has no {field!r}; set it in the config file or with "
                          f"--config.{field}=...")
      node = node[part]


def shrink_for_smoke(config: Any, steps: int = 2, batch_size: int = 16) -> None:
  """The common part of every config's `smoke` argument: a few float32 steps on tiny batches.

  Sets total_steps=`steps`, warmup_steps=1, a log line every step, a checkpoint
  at the end, no intermediate evaluation, batch_size (and eval_batch_size) =
  `batch_size`; every other unit of those durations (_epochs, _examples) is
  cleared so that exactly one stays set. The model and learning rate are the
  config's to shrink.
  """
  from vision_jax.config_base import set_duration  # pylint: disable=import-outside-toplevel
  set_duration(config, "total", steps=steps)
  set_duration(config.schedule, "warmup", steps=1)
  set_duration(config, "log_every", steps=1)
  set_duration(config, "checkpoint_every", steps=steps)
  set_duration(config, "eval_every", steps=steps)
  config.dtype = "float32"
  config.batch_size = batch_size
  config.eval_batch_size = batch_size


def load_config(path: str, arg: str | None = None, **changes: Any) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path`, then `set_fields(config, changes)`.

  For scripts and tests; the command line gets the same through
  `--config=path:arg --config.a.b=value`.
  """
  if not os.path.isfile(path):
    raise ConfigError(f"No config file at {path!r}.")
  config = load_config_module(path).get_config(arg)
  set_fields(config, changes)
  return config


def load_config_module(path: str) -> types.ModuleType:
  """The module of the config file at `path`, run from its path (config files are not a package).

  The one loader of config files: `load_config`, the command line
  (`main.load_config_file`) and the tests use it.
  """
  name = "config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling_module(config_path: str, name: str) -> types.ModuleType:
  """Module `name`.py next to a config file: `common = sibling_module(__file__, "common")`.

  Config files are loaded by path, from any working directory, so they cannot
  `import common`; this loads configs/common.py (the blocks the paper configs
  share) the same way, without touching sys.path.
  """
  return load_config_module(os.path.join(os.path.dirname(os.path.abspath(config_path)),
                                         f"{name}.py"))


def set_fields(config: Any, changes: dict[str, Any]) -> None:
  """Sets dotted fields in place: {'schedule.base_lr': 0.1} is config.schedule.base_lr = 0.1."""
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value


def durations(config: Any, examples_per_epoch: int) -> dict[str, int]:
  """Every duration of the run in steps (see config_base.DURATION_DEFAULTS)."""
  from vision_jax.config_base import DURATION_DEFAULTS  # pylint: disable=import-outside-toplevel
  batch_size = int(config.batch_size)
  total = steps_from(config, "total", examples_per_epoch=examples_per_epoch,
                     batch_size=batch_size)
  out = {"total": total}
  for prefix, default in DURATION_DEFAULTS.items():
    if prefix == "total":
      continue
    node = config.schedule if prefix == "warmup" else config
    out[prefix] = steps_from(node, prefix, examples_per_epoch=examples_per_epoch,
                             batch_size=batch_size, default=total if default == "run" else default)
  return out
