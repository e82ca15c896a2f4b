"""The `Recipe` interface and its registry.

A recipe is everything that differs between kinds of training run; the trainer
(`vision_jax/train/trainer.py`) owns everything they share: the mesh, the
data iterators, the optimizer, the state and its sharding, checkpoints, the
loop, metrics. To add a recipe (distillation, BYOL, ...), write a module with a
`Recipe` subclass, register an instance, and import the module in
`recipes/__init__.py`; the loop does not change.

What the trainer asks of a recipe, in the order it asks:
1. `check(config, dataset)`: refuse what the recipe cannot train, as ConfigError,
   before anything is written to the workdir.
2. `build_model(config, dataset, dtype)`: the flax module whose variables the
   train state holds.
3. `train_step(config, dataset, model, tx, schedule)`: a pure
   `(state, batch) -> (state, metrics)` function, which the trainer jits with
   the state donated and the shardings pinned.
4. `make_eval(config, dataset, model, mesh, batch_size)`: `run_eval(state, final)
   -> metrics`, called at every eval and once at the end (`final=True`).
5. When loading `config.init_from`: `zero_head_on_load` says whether the
   classifier that `config.dont_load` keeps at its fresh init is then zeroed.
6. `checkpoint_tag`: written into every checkpoint's metadata (None: untagged,
   as checkpoints from before recipes existed), so that a workdir of one recipe
   is not resumed by another.
"""

from __future__ import annotations

import abc
from typing import Any, Callable

import flax.linen as nn

from vision_jax.config_util import ConfigError

StepFn = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]
EvalFn = Callable[..., dict[str, float]]


class Recipe(abc.ABC):
  """What one kind of training run contributes to the trainer (see the module docstring)."""

  #: Name used in `config.recipe`.
  name: str = ""
  #: Whether `init_from` zeroes the freshly initialised classifier (with config.zero_init_head).
  zero_head_on_load: bool = True
  #: Recipe name stored in checkpoint metadata; None leaves it out.
  checkpoint_tag: str | None = None

  @abc.abstractmethod
  def check(self, config: Any, dataset: Any = None) -> None:
    """Raises ConfigError for settings or data this recipe cannot train on.

    The only place for a recipe's checks. `config_check.validate` calls it with
    the config alone (dataset None: the checks of the config's fields, before any
    data is read); the trainer calls it again with the built dataset, for the
    checks that need the data (views per image, ...).
    """

  @abc.abstractmethod
  def build_model(self, config: Any, dataset: Any, dtype: Any) -> nn.Module:
    """The module the train state holds the variables of."""

  @abc.abstractmethod
  def train_step(self, config: Any, dataset: Any, model: nn.Module, tx: Any,
                 schedule: Callable[[Any], Any]) -> StepFn:
    """A pure `(state, batch) -> (state, metrics)` function (not jitted yet)."""

  @abc.abstractmethod
  def make_eval(self, config: Any, dataset: Any, model: nn.Module, mesh: Any,
                batch_size: int) -> EvalFn:
    """`run_eval(state, final=False) -> {name: value}`, over eval batches of `batch_size`."""


def model_overrides(config: Any) -> dict[str, Any]:
  """The `create_model` overrides of a run: config.model.overrides, and config.remat.

  `config.remat` other than 'none' becomes the model's `remat` field; setting
  both it and config.model.overrides.remat to different values is an error.
  """
  overrides = dict(config.model.get("overrides", None) or {})
  remat = config.get("remat", None) or "none"
  if remat != "none":
    if overrides.get("remat", remat) != remat:
      raise ConfigError(f"config.remat={remat!r} and config.model.overrides.remat="
                        f"{overrides['remat']!r} disagree; set only config.remat.")
    overrides["remat"] = remat
  return overrides


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
  """Makes `recipe` available as `config.recipe = recipe.name`."""
  if not recipe.name:
    raise ValueError(f"{type(recipe).__name__} has no name.")
  if recipe.name in _RECIPES:
    raise ValueError(f"Recipe {recipe.name!r} is registered twice.")
  _RECIPES[recipe.name] = recipe
  return recipe


def list_recipes() -> list[str]:
  """Sorted names of the registered recipes."""
  return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
  """The recipe registered as `name`; an unknown name is a ConfigError listing the known ones."""
  if name not in _RECIPES:
    raise ConfigError(f"config.recipe={name!r} is not a recipe; choose one of {list_recipes()}.")
  return _RECIPES[name]
