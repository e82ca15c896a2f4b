"""Optimizers and learning-rate schedules from config, built on optax.

config.schedule: base_lr, warmup_steps, decay ('cosine' | 'linear' | 'step' |
  'exponential' | 'constant'), end_lr_factor (cosine/linear floor as a fraction
  of base_lr), boundaries (fractions of training, for 'step'), decay_factor
  ('step' multiplies by it at each boundary; 'exponential' every decay_every steps).
config.optimizer: name ('sgd' | 'adamw' | 'rmsprop' | 'lars'), momentum,
  nesterov, b1, b2, eps, decay (rmsprop), weight_decay, grad_clip_norm,
  lr_mults: [(regex, multiplier), ...] over '/'-joined parameter paths
  ('head/kernel'); the first match scales that parameter's updates, 0 freezes it
  (a linear probe is [('head/.*', 1.0), ('.*', 0.0)]).
  layer_decay: layer-wise lr decay (BEiT, Bao et al. 2021; ConvNeXt fine-tuning), a
  factor d in (0, 1]: with L blocks, the updates of block i (from 1) are scaled by
  d ** (L + 1 - i), those of the embedding / stem (layer 0) by d ** (L + 1), and the
  final norm and head (layer L + 1) keep the full lr. Blocks are ViT `blocks_{i}` and
  ConvNeXt `stages_{s}_blocks_{b}` counted over all stages (a stage's downsample
  layer goes with its first block), as timm's `param_groups_layer_decay`. 1 or unset: off.
config.trainable_params (top level, read by the trainer): a regex over the same
  paths; everything else is frozen outright (`freeze_except`: zero updates and no
  optimizer state; the train step also stops its gradient, so a linear probe
  costs one forward pass of the backbone).

Weight decay skips biases and normalisation parameters (every parameter with
fewer than two dimensions), as Goyal et al., BiT, EfficientNet and SimCLR do.
"""

from __future__ import annotations

from typing import Any

import functools
import re

import jax
import optax
from flax import traverse_util

from vision_jax.config_base import OPTIMIZER_DEFAULTS, OPTIMIZER_OPTIONS, SCHEDULE_DEFAULTS
from vision_jax.config_base import SCHEDULE_OPTIONS
from vision_jax.config_util import ConfigError

OPTIMIZERS = tuple(OPTIMIZER_OPTIONS)
DECAYS = tuple(SCHEDULE_OPTIONS)


def _option(config: Any, key: str, table: dict[str, Any]) -> Any:
  """config[key], or its default in `table` (config_base) when the config leaves it unset."""
  value = config.get(key, None)
  return table[key] if value is None else value


def make_schedule(config: Any, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to base_lr over `warmup_steps`, then the named decay."""
  base = float(config.base_lr)
  decay = config.get("decay", None) or SCHEDULE_DEFAULTS["decay"]
  if decay not in SCHEDULE_OPTIONS:
    raise ConfigError(f"Unknown config.schedule.decay {decay!r}; choose one of {DECAYS}.")
  options = SCHEDULE_OPTIONS[decay]
  remaining = max(total_steps - warmup_steps, 1)
  end = base * _option(config, "end_lr_factor", options) if "end_lr_factor" in options else 0.0
  if decay == "cosine":
    main = optax.cosine_decay_schedule(base, remaining, alpha=end / base if base else 0.0)
  elif decay == "linear":
    main = optax.linear_schedule(base, end, remaining)
  elif decay == "constant":
    main = optax.constant_schedule(base)
  elif decay == "step":
    boundaries = _option(config, "boundaries", options)
    factor = _option(config, "decay_factor", options)
    main = optax.piecewise_constant_schedule(
        base, {int(b * total_steps) - warmup_steps: factor for b in boundaries})
  elif decay == "exponential":
    main = optax.exponential_decay(base, transition_steps=int(config.decay_every),
                                   decay_rate=_option(config, "decay_factor", options),
                                   staircase=True)
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, base, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def decay_mask(params: Any) -> Any:
  """True for the parameters that get weight decay: kernels, not biases or norm scales."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(config: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optax chain named by config.optimizer, with clipping and masked weight decay."""
  name = config.get("name", None) or OPTIMIZER_DEFAULTS["name"]
  wd = config.get("weight_decay", None) or OPTIMIZER_DEFAULTS["weight_decay"]
  if name not in OPTIMIZER_OPTIONS:
    raise ConfigError(f"Unknown optimizer {name!r} in config.optimizer.name; choose one of {OPTIMIZERS}.")
  opt = functools.partial(_option, config, table=OPTIMIZER_OPTIONS[name])
  parts = []
  if config.get("grad_clip_norm"):
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if name == "sgd":
    # Coupled L2 decay, as torch.optim.SGD(weight_decay=...) and the Goyal et al. recipe.
    if wd:
      parts.append(optax.add_decayed_weights(wd, decay_mask))
    parts.append(optax.sgd(schedule, momentum=opt("momentum"), nesterov=opt("nesterov")))
  elif name == "adamw":
    parts.append(optax.adamw(schedule, b1=opt("b1"), b2=opt("b2"), eps=opt("eps"),
                             weight_decay=wd, mask=decay_mask))
  elif name == "rmsprop":
    # TensorFlow's RMSProp (EfficientNet): eps inside the square root, momentum 0.9.
    if wd:
      parts.append(optax.add_decayed_weights(wd, decay_mask))
    parts.append(optax.rmsprop(schedule, decay=opt("decay"), eps=opt("eps"), eps_in_sqrt=True,
                               momentum=opt("momentum"), initial_scale=0.0))
  elif name == "lars":
    # SimCLR: biases and norms get neither weight decay nor the trust-ratio adaptation.
    parts.append(optax.lars(schedule, weight_decay=wd, weight_decay_mask=decay_mask,
                            trust_ratio_mask=decay_mask, trust_coefficient=opt("trust_coefficient"),
                            momentum=opt("momentum"), nesterov=opt("nesterov")))
  if config.get("lr_mults"):
    parts.append(scale_by_path(config.lr_mults))
  decay = config.get("layer_decay")
  if decay is not None and decay != 1.0:
    if not 0.0 < float(decay) <= 1.0:
      raise ConfigError(f"config.optimizer.layer_decay must be in (0, 1], got {decay}.")
    parts.append(scale_by_layer_decay(float(decay)))
  return optax.chain(*parts)


_VIT_BLOCK = re.compile(r"blocks_(\d+)")
_CONVNEXT_BLOCK = re.compile(r"stages_(\d+)_blocks_(\d+)")
_CONVNEXT_DOWNSAMPLE = re.compile(r"stages_(\d+)_downsample.*")
_EMBEDDING = re.compile(r"patch_embed|cls_token|pos_embed|stem.*")


def layer_ids(params: Any) -> tuple[dict[tuple[str, ...], int], int]:
  """The layer of every parameter for layer-wise lr decay, and the number of blocks L.

  Embedding / stem parameters are layer 0, block i (in forward order) is layer i + 1,
  everything else (final norm, head) is layer L + 1.

  Raises:
    ConfigError: the parameters have neither ViT nor ConvNeXt blocks.
  """
  flat = traverse_util.flatten_dict(params)
  vit_blocks = {int(m[1]) for path in flat for part in path if (m := _VIT_BLOCK.fullmatch(part))}
  # A ViT hybrid's ResNetV2 backbone also has 'stages_{s}_blocks_{b}': it is all layer 0.
  convnext = [] if vit_blocks else sorted(
      {(int(m[1]), int(m[2])) for path in flat for part in path
       if (m := _CONVNEXT_BLOCK.fullmatch(part))})
  if not vit_blocks and not convnext:
    raise ConfigError(
        "config.optimizer.layer_decay needs a model with numbered blocks (ViT 'blocks_{i}' or "
        f"ConvNeXt 'stages_{{s}}_blocks_{{b}}'); parameters look like {_example_paths(params)}.")
  order = {block: i + 1 for i, block in enumerate(convnext)}
  first_of_stage = {}
  for (stage, block), layer in order.items():
    first_of_stage.setdefault(stage, layer)
  num_layers = len(order) if convnext else max(vit_blocks) + 1

  def layer_of(path: tuple[str, ...]) -> int:
    for part in path:
      if _EMBEDDING.fullmatch(part):
        return 0
      if (m := _VIT_BLOCK.fullmatch(part)):
        return int(m[1]) + 1
      if convnext and (m := _CONVNEXT_BLOCK.fullmatch(part)):
        return order[(int(m[1]), int(m[2]))]
      if convnext and (m := _CONVNEXT_DOWNSAMPLE.fullmatch(part)):
        return first_of_stage.get(int(m[1]), num_layers + 1)
    return num_layers + 1

  return {path: layer_of(path) for path in flat}, num_layers


def layer_decay_scales(params: Any, decay: float) -> Any:
  """The lr multiplier of every parameter: decay ** (L + 1 - layer), as a tree like `params`."""
  ids, num_layers = layer_ids(params)
  return traverse_util.unflatten_dict(
      {path: decay ** (num_layers + 1 - layer) for path, layer in ids.items()})


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its `layer_decay_scales` multiplier."""

  def update(updates, state, params=None):
    del params
    ids, num_layers = layer_ids(updates)

    def scale(path, update):  # leaves only: frozen parameters (freeze_except) are skipped
      return update * decay ** (num_layers + 1 - ids[tuple(k.key for k in path)])

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_path(rules) -> optax.GradientTransformation:
  """Multiplies each parameter's update by the multiplier of the first matching regex."""
  compiled = [(re.compile(pattern), float(mult)) for pattern, mult in rules]

  def multiplier(path: str) -> float:
    for pattern, mult in compiled:
      if pattern.fullmatch(path):
        return mult
    return 1.0

  def update(updates, state, params=None):
    del params
    flat = traverse_util.flatten_dict(updates)
    scaled = {k: v * multiplier("/".join(k)) for k, v in flat.items()}
    return traverse_util.unflatten_dict(scaled), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def freeze_except(tx: optax.GradientTransformation, trainable: str) -> optax.GradientTransformation:
  """`tx` for the parameters whose '/'-joined path fully matches `trainable`; zero updates
  (no weight decay, no optimizer state) for all others: a frozen backbone stays bit-exact."""
  from vision_jax.train.steps import trainable_mask  # pylint: disable=import-outside-toplevel

  def labels(params):
    mask = trainable_mask(params, trainable)
    if not any(jax.tree_util.tree_leaves(mask)):
      raise ConfigError(f"config.trainable_params={trainable!r} matches no parameter; paths look "
                        f"like {_example_paths(params)}.")
    return jax.tree_util.tree_map(lambda t: "train" if t else "frozen", mask)

  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _example_paths(params, limit: int = 3) -> list[str]:
  flat = traverse_util.flatten_dict(params)
  return ["/".join(k) for k in list(flat)[:limit]] + ["/".join(k) for k in list(flat)[-1:]]
