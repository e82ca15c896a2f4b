"""Checks a training config before any work: `validate(config)` raises ConfigError.

A value that would otherwise fail deep inside JAX or tf.data (a zero batch, a
regex that does not compile, a negative learning rate), or train nonsense
without failing (a warmup longer than the run, label smoothing of 1, an EMA
decay of 1), is reported when the config is read, naming the field, its value
and the valid range. Fields a config does not set (absent or None) are not
checked here; the trainer's defaults apply to them.

It works on a config built from `config_base.base_config()` and on any plain
ConfigDict (or mapping) with the trainer's field names. What needs the dataset
(a warmup in epochs against a run in steps) is checked by `check_lengths` once
the trainer knows the step counts.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable

from vision_jax.config_base import DTYPES, DURATION_DEFAULTS, DURATION_UNITS
from vision_jax.config_fields import FieldChecks, get_field, is_int, is_number
from vision_jax.config_util import ConfigError

DURATIONS = tuple(DURATION_DEFAULTS)
UNITS = DURATION_UNITS
_REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*://")  # gs://, s3://: not checked on this machine


# ---------------------------------------------------------------------------
# The checks, one function per part of the config.
# ---------------------------------------------------------------------------
def _check_top_level(c: FieldChecks) -> None:
  c.positive_int("batch_size", required=True, what=" (the global batch size)")
  c.positive_int("eval_batch_size", what=" (unset: batch_size)")
  c.positive_int("num_devices", what=" (unset: every device)")
  c.positive_int("grad_accum_steps", what=" (1: no accumulation)")
  batch, accum = c.value("batch_size"), c.value("grad_accum_steps")
  if is_int(accum) and accum > 1 and batch % accum:
    raise ConfigError(f"config.batch_size={batch} does not split into config.grad_accum_steps="
                      f"{accum} micro-batches; use a batch size that is a multiple of {accum}.")
  c.positive_int("prefetch", what=" (batches put on the devices ahead of the step)")
  c.positive_int("keep_checkpoints", what=" (checkpoints kept in the workdir)")
  seed = c.value("seed")
  if seed is not None and not is_int(seed):
    c.fail("seed", seed, "must be an integer")
  c.choice("dtype", DTYPES)
  from vision_jax.models.layers import REMAT_CHOICES  # pylint: disable=import-outside-toplevel
  c.choice("remat", REMAT_CHOICES)
  c.number("label_smoothing", 0.0, 1.0, high_open=True)
  c.number("ema_decay", 0.0, 1.0, high_open=True, what=" (0: no EMA; typical 0.9999)")
  for flag in ("fsdp", "zero_init_head", "freeze_bn"):
    c.boolean(flag)
  c.regexes("dont_load")
  c.regex("trainable_params")
  from vision_jax.train.checkpoint import ON_CORRUPT  # pylint: disable=import-outside-toplevel
  c.choice("on_corrupt_checkpoint", ON_CORRUPT)
  if c.value("recipe") is not None:
    from vision_jax.train.recipes import list_recipes  # pylint: disable=import-outside-toplevel
    c.choice("recipe", tuple(list_recipes()))


def _check_init_from(c: FieldChecks) -> None:
  init_from = c.value("init_from")
  if init_from in (None, ""):
    return
  if not isinstance(init_from, str):
    c.fail("init_from", init_from, "must be a path (another run's workdir or a "
           "tools/convert_weights.py directory) or a pretrained name such as timm:TAG")
  if _REMOTE.match(init_from):
    return
  from vision_jax.weights import hub  # pylint: disable=import-outside-toplevel
  if hub.is_pretrained_spec(init_from) and not os.path.isdir(init_from):
    try:  # no network here: fetching and converting happen when training starts
      hub.precheck(init_from)
    except hub.PretrainedError as e:
      raise ConfigError(f"config.init_from={init_from!r}: {e}") from None
    return
  if not os.path.exists(init_from):
    raise ConfigError(f"config.init_from={init_from!r} does not exist, so it is neither a workdir "
                      "with checkpoints/ nor a directory written by tools/convert_weights.py; fix "
                      "the path, or unset it to train from scratch.")
  if not os.path.isdir(init_from):
    raise ConfigError(f"config.init_from={init_from!r} is a file; give the directory around it "
                      "(another run's workdir, or a tools/convert_weights.py output directory).")


def _duration_units(c: FieldChecks, node_path: str, prefix: str) -> dict[str, Any]:
  base = f"{node_path}." if node_path else ""
  node = c.value(node_path) if node_path else c.config
  return {unit: get_field(node, f"{prefix}_{unit}") for unit in UNITS
          if get_field(node, f"{prefix}_{unit}") is not None} | {"_path": base}


def _check_durations(c: FieldChecks) -> None:
  given = {}
  for prefix in DURATIONS:
    node_path = "schedule" if prefix == "warmup" else ""
    units = _duration_units(c, node_path, prefix)
    base = units.pop("_path")
    if len(units) > 1:
      raise ConfigError(f"Set only one of {', '.join(f'config.{base}{prefix}_{u}' for u in units)} "
                        f"(they are {units}); unset the others with --config.{base}{prefix}_UNIT=None.")
    for unit, value in units.items():
      path = f"{base}{prefix}_{unit}"
      if prefix == "warmup":
        if unit == "epochs":
          c.number(path, 0.0)
        else:
          c.non_negative_int(path)
      elif unit == "epochs":
        c.number(path, 0.0, low_open=True)
      else:
        c.positive_int(path)
    given[prefix] = units
  if not given["total"]:
    raise ConfigError("The run has no length: set one of config.total_steps, config.total_epochs "
                      "or config.total_examples.")
  (total_unit, total), = given["total"].items()
  if given["warmup"]:
    (warm_unit, warmup), = given["warmup"].items()
    batch = c.value("batch_size")
    as_steps = {"steps": lambda v: v, "examples": lambda v: math.ceil(v / batch)}
    if warm_unit == total_unit:
      total_n, warm_n = total, warmup
    elif warm_unit in as_steps and total_unit in as_steps:
      total_n, warm_n = as_steps[total_unit](total), as_steps[warm_unit](warmup)
    else:
      return  # epochs against steps: needs the dataset size (check_lengths)
    if warm_n > total_n:
      raise ConfigError(
          f"config.schedule.warmup_{warm_unit}={warmup} is longer than the run "
          f"(config.total_{total_unit}={total}); shorten the warmup or lengthen the run.")


def check_lengths(total_steps: int, warmup_steps: int) -> None:
  """The step counts once the dataset size is known (durations in epochs)."""
  if total_steps <= 0:
    raise ConfigError(f"The run is {total_steps} steps long; set a positive config.total_steps "
                      "(or _epochs/_examples).")
  if warmup_steps > total_steps:
    raise ConfigError(f"The warmup ({warmup_steps} steps) is longer than the run "
                      f"({total_steps} steps); shorten config.schedule.warmup_* or lengthen the run.")


def _check_model(c: FieldChecks) -> None:
  name = c.value("model.name")
  if name is None:
    raise ConfigError("config.model.name is not set; name a registered model "
                      "(vision_jax.models.list_models()), e.g. --config.model.name=resnet50.")
  overrides = c.value("model.overrides") or {}
  if not hasattr(overrides, "items"):
    c.fail("model.overrides", overrides, "must be a dict of the model's fields, e.g. "
           "{'drop_path_rate': 0.1}")
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  try:
    # Building the module only binds its fields: no parameters, no device.
    module = models.create_model(name, num_classes=0, **dict(overrides))
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.model: {e}") from None
  remat = c.value("remat")
  if remat not in (None, "none") and not hasattr(module, "remat"):
    raise ConfigError(f"config.remat={remat!r}: {name} has no blocks to rematerialise (only "
                      "ResNet, ResNetV2, EfficientNet, ConvNeXt and ViT models do); set "
                      "config.remat='none'.")


def _check_schedule(c: FieldChecks) -> None:
  c.number("schedule.base_lr", 0.0, low_open=True, required=True, what=" (the peak learning rate)")
  from vision_jax.train.optim import DECAYS  # pylint: disable=import-outside-toplevel
  decay = c.value("schedule.decay")
  if decay is not None and decay not in DECAYS:  # the words of optim.make_schedule
    raise ConfigError(f"Unknown config.schedule.decay {decay!r}; choose one of {DECAYS}.")
  c.number("schedule.end_lr_factor", 0.0, 1.0)
  c.number("schedule.decay_factor", 0.0, low_open=True)
  if c.value("schedule.decay") == "exponential":
    c.positive_int("schedule.decay_every", required=True, what=" (steps between decays)")
  boundaries = c.value("schedule.boundaries")
  if boundaries is not None:
    values = list(boundaries) if isinstance(boundaries, (tuple, list)) else None
    if (values is None or not all(is_number(b) and 0 < b < 1 for b in values)
        or values != sorted(values)):
      c.fail("schedule.boundaries", boundaries, "must be increasing fractions of the run in "
             "(0, 1), e.g. (0.3, 0.6, 0.9)")


def _check_optimizer(c: FieldChecks) -> None:
  from vision_jax.train.optim import OPTIMIZERS  # pylint: disable=import-outside-toplevel
  name = c.value("optimizer.name")
  if name is not None and name not in OPTIMIZERS:  # the words of optim.make_optimizer
    raise ConfigError(f"Unknown optimizer {name!r} in config.optimizer.name; choose one of "
                      f"{OPTIMIZERS}.")
  c.number("optimizer.weight_decay", 0.0)
  c.number("optimizer.momentum", 0.0, 1.0, high_open=True)
  c.boolean("optimizer.nesterov")
  c.number("optimizer.b1", 0.0, 1.0, high_open=True)
  c.number("optimizer.b2", 0.0, 1.0, high_open=True)
  c.number("optimizer.eps", 0.0, low_open=True)
  c.number("optimizer.grad_clip_norm", 0.0, low_open=True, what=" (unset: no clipping)")
  c.number("optimizer.trust_coefficient", 0.0, low_open=True)
  if c.value("optimizer.name") == "rmsprop":
    c.number("optimizer.decay", 0.0, 1.0, high_open=True)
  rules = c.value("optimizer.lr_mults")
  if rules:
    for i, rule in enumerate(rules):
      if (not isinstance(rule, (tuple, list)) or len(rule) != 2 or not is_number(rule[1])
          or rule[1] < 0):
        c.fail(f"optimizer.lr_mults[{i}]", rule, "must be a pair (regex, multiplier >= 0), e.g. "
               "('head/.*', 1.0)")
      c.regex("optimizer.lr_mults", rule[0], where=f"optimizer.lr_mults[{i}][0]")


def _check_data(c: FieldChecks) -> None:
  if c.value("data") is None:
    raise ConfigError("config.data is not set; give at least config.data.name ('digits', "
                      "'folder:/path' or a tfds name).")
  name = c.value("data.name")
  if not isinstance(name, str) or not name.strip():
    c.fail("data.name", name, "must name a dataset: 'digits', 'synthetic', 'folder:/path/to/root' "
           "or a tensorflow-datasets builder such as 'cifar10'")
  if name.startswith("folder:"):
    root = os.path.expanduser(name[len("folder:"):])
    if not root:
      c.fail("data.name", name, "needs a path: 'folder:/path/to/root'")
    if not _REMOTE.match(root) and not os.path.isdir(root):
      raise ConfigError(f"config.data.name={name!r}: the folder {root} does not exist; give the "
                        "root of root/<split>/<class>/<image>.")
  c.positive_int("data.image_size")
  c.non_negative_int("data.max_shift")
  c.positive_int("data.train_per_class")
  c.positive_int("data.shuffle_buffer")
  c.positive_int("data.num_parallel_calls", what=" (examples preprocessed at once; unset: "
                 "tf.data.AUTOTUNE, sized to the host's cores)")
  c.positive_int("data.prefetch_batches", what=" (batches kept ready on the host; unset: "
                 "tf.data.AUTOTUNE)")
  c.positive_int("data.num_classes")
  c.positive_int("data.num_train")
  c.positive_int("data.num_eval")
  c.choice("data.views", (1, 2))
  c.non_negative_int("data.local_crops", what=" (DINO's local crops per image, digits; "
                     "op strings use local_crops(n))")
  c.positive_int("data.local_image_size")
  scale = c.value("data.local_scale")
  if scale is not None and (not isinstance(scale, (tuple, list)) or len(scale) != 2
                            or not all(is_number(v) for v in scale)
                            or not 0 < scale[0] <= scale[1] <= 1):
    c.fail("data.local_scale", scale, "must be a pair (low, high) with 0 < low <= high <= 1, the "
           "share of the image's area a local crop covers")
  c.number("data.max_bad_fraction", 0.0, 1.0, what=" (the share of a split that may become "
           "unreadable before the run stops)")
  # pylint: disable=import-outside-toplevel
  from vision_jax.data.folder import VALIDATE_MODES
  c.choice("data.validate_files", VALIDATE_MODES)
  from vision_jax.data.balance import BALANCE_MODES
  from vision_jax.data.report import CHECK_MODES
  c.choice("data.balance", BALANCE_MODES)
  c.choice("data.checks", CHECK_MODES)
  c.non_negative_int("data.max_cross_split_duplicates", what=" (training images that may also "
                     "be in the eval split, exactly or nearly)")
  for field in ("preprocess_train", "preprocess_eval", "mix", "train_split", "eval_split"):
    value = c.value(f"data.{field}")
    if value is not None and not isinstance(value, str):
      c.fail(f"data.{field}", value, "must be a string")
  # Op strings are parsed and their arguments checked now, not inside tf.data.
  # pylint: disable=import-outside-toplevel
  from vision_jax.data.errors import PreprocessError
  fields = ("preprocess_train", "preprocess_eval", "mix") if name not in ("digits", "synthetic") \
      else ("mix",)
  for field in fields:
    spec = c.value(f"data.{field}")
    if not spec:
      continue
    try:
      if field == "mix":
        from vision_jax.data import mix as mix_lib
        mix_lib.get_batch_op(spec)
      else:
        from vision_jax.data import ops as ops_lib
        ops_lib.get_preprocess_fn(spec)
    except PreprocessError as e:
      message = str(e) if f"config.data.{field}" in str(e) else f"config.data.{field}={spec!r}: {e}"
      raise ConfigError(message) from None


def _check_recipe(c: FieldChecks) -> None:
  """The recipe's own checks of the config (its block, the fields it cannot train with)."""
  from vision_jax.config_base import with_defaults  # pylint: disable=import-outside-toplevel
  from vision_jax.train import recipes  # pylint: disable=import-outside-toplevel
  config = with_defaults(c.config)
  recipes.get_recipe(config.recipe).check(config)


CHECKS: tuple[Callable[[FieldChecks], None], ...] = (
    _check_top_level, _check_durations, _check_init_from, _check_schedule, _check_optimizer,
    _check_data, _check_recipe, _check_model)


def validate(config: Any) -> None:
  """Raises ConfigError naming the first field whose value cannot work.

  Args:
    config: a ConfigDict (from `config_base.base_config()` or built by hand) or a mapping.
  """
  checks = FieldChecks(config)
  for check in CHECKS:
    check(checks)
