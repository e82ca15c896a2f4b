"""Recipes: what a run trains and how it is evaluated (`config.recipe`).

`get_recipe(name)` returns a registered `Recipe`; `list_recipes()` names them.
The implementations live in one module each: `supervised.py` (classification,
also fine-tuning and linear probes), `simclr.py` (contrastive pretraining) and the
label-free `dino.py`, `mae.py` and `byol.py`, whose representation monitor is
`ssl_monitor.py`.
"""

from vision_jax.train.recipes.base import Recipe, get_recipe, list_recipes, register_recipe

# Importing a recipe module registers it.
from vision_jax.train.recipes import byol  # noqa: F401,E402
from vision_jax.train.recipes import dino  # noqa: F401,E402
from vision_jax.train.recipes import mae  # noqa: F401,E402
from vision_jax.train.recipes import simclr  # noqa: F401,E402
from vision_jax.train.recipes import supervised  # noqa: F401,E402

__all__ = ["Recipe", "get_recipe", "list_recipes", "register_recipe"]
