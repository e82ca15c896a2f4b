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
config.trainable_params (top level, read by the trainer): a regex over the same
  paths; everything else is frozen outright (`freeze_except`: zero updates and no
  optimizer state; the train step also stops its gradient, so a linear probe
  costs one forward pass of the backbone).

Weight decay skips biases and normalisation parameters (every parameter with
fewer than two dimensions), as Goyal et al., BiT, EfficientNet and SimCLR do.
"""

from __future__ import annotations

from typing import Any

import re

import jax
import optax
from flax import traverse_util

from vision_jax.config_util import ConfigError

OPTIMIZERS = ("sgd", "adamw", "rmsprop", "lars")
DECAYS = ("cosine", "linear", "step", "exponential", "constant")


def make_schedule(config: Any, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to base_lr over `warmup_steps`, then the named decay."""
  base = float(config.base_lr)
  decay = config.get("decay", "cosine")
  remaining = max(total_steps - warmup_steps, 1)
  end = base * config.get("end_lr_factor", 0.0)
  if decay == "cosine":
    main = optax.cosine_decay_schedule(base, remaining, alpha=end / base if base else 0.0)
  elif decay == "linear":
    main = optax.linear_schedule(base, end, remaining)
  elif decay == "constant":
    main = optax.constant_schedule(base)
  elif decay == "step":
    boundaries = config.get("boundaries", (1 / 3, 2 / 3, 8 / 9))
    factor = config.get("decay_factor", 0.1)
    main = optax.piecewise_constant_schedule(
        base, {int(b * total_steps) - warmup_steps: factor for b in boundaries})
  elif decay == "exponential":
    main = optax.exponential_decay(base, transition_steps=int(config.decay_every),
                                   decay_rate=config.get("decay_factor", 0.97), staircase=True)
  else:
    raise ConfigError(f"Unknown config.schedule.decay {decay!r}; choose one of {DECAYS}.")
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, base, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def decay_mask(params: Any) -> Any:
  """True for the parameters that get weight decay: kernels, not biases or norm scales."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(config: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optax chain named by config.optimizer, with clipping and masked weight decay."""
  name = config.get("name", "sgd")
  wd = config.get("weight_decay", 0.0)
  parts = []
  if config.get("grad_clip_norm"):
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if name == "sgd":
    # Coupled L2 decay, as torch.optim.SGD(weight_decay=...) and the Goyal et al. recipe.
    if wd:
      parts.append(optax.add_decayed_weights(wd, decay_mask))
    parts.append(optax.sgd(schedule, momentum=config.get("momentum", 0.9),
                           nesterov=config.get("nesterov", False)))
  elif name == "adamw":
    parts.append(optax.adamw(schedule, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999),
                             eps=config.get("eps", 1e-8), weight_decay=wd, mask=decay_mask))
  elif name == "rmsprop":
    # TensorFlow's RMSProp (EfficientNet): eps inside the square root, momentum 0.9.
    if wd:
      parts.append(optax.add_decayed_weights(wd, decay_mask))
    parts.append(optax.rmsprop(schedule, decay=config.get("decay", 0.9),
                               eps=config.get("eps", 1e-3), eps_in_sqrt=True,
                               momentum=config.get("momentum", 0.9), initial_scale=0.0))
  elif name == "lars":
    # SimCLR: biases and norms get neither weight decay nor the trust-ratio adaptation.
    parts.append(optax.lars(schedule, weight_decay=wd, weight_decay_mask=decay_mask,
                            trust_ratio_mask=decay_mask, trust_coefficient=config.get("trust_coefficient", 0.001),
                            momentum=config.get("momentum", 0.9), nesterov=config.get("nesterov", False)))
  else:
    raise ConfigError(f"Unknown optimizer {name!r} in config.optimizer.name; choose one of {OPTIMIZERS}.")
  if config.get("lr_mults"):
    parts.append(scale_by_path(config.lr_mults))
  return optax.chain(*parts)


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
