"""The eval-mode forward of a module, jitted once per module and reused across batches."""

from __future__ import annotations

from typing import Any, Callable

_JITTED: dict[Any, Callable] = {}


def eval_apply(module, variables, images):
  import jax  # pylint: disable=import-outside-toplevel
  fn = _JITTED.get(module)
  if fn is None:
    fn = _JITTED[module] = jax.jit(lambda v, x: module.apply(v, x, train=False))
  return fn(variables, images)
