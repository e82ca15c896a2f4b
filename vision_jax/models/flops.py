"""FLOPs of a model's forward pass, from XLA's cost analysis of the lowered program.

XLA counts a multiply-add as two FLOPs, so ResNet-50 at 224x224 comes out near
8.2 GFLOPs per image (the "4.1 GMACs" of papers). Nothing is allocated or
compiled: parameters are abstract shapes and only the lowered HLO is analysed,
so this works for the largest variants on a laptop.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models import registry


def count_flops(model: str | nn.Module, image_size: int | None = None, batch_size: int = 1,
                dtype: Any = jnp.float32, train: bool = False, num_classes: int = 1000,
                **overrides: Any) -> float:
  """FLOPs per image of a forward pass (or forward + backward with `train=True`).

  Args:
    model: a registered name or a module.
    image_size: input side; defaults to the registered input size.
    batch_size: batch the program is lowered for (the result is divided by it).
    dtype: compute dtype when `model` is a name.
    train: count a training step's forward and backward pass instead.
    num_classes: classifier size when `model` is a name.
    **overrides: create_model overrides when `model` is a name.

  Returns:
    FLOPs per image as XLA counts them.
  """
  if isinstance(model, str):
    if image_size is None:
      image_size = overrides.get("img_size") or registry.model_info(model).input_size
    model = registry.create_model(model, num_classes=num_classes, dtype=dtype, **overrides)
  if image_size is None:
    raise ValueError("count_flops: image_size is required when a module is passed.")
  x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)),
                         train=False))
  if train:
    def step(variables, x):
      def loss(params):
        out, _ = model.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return jnp.mean(out.astype(jnp.float32))
      return jax.grad(loss)(variables["params"])
  else:
    def step(variables, x):
      return model.apply(variables, x, train=False)
  cost = jax.jit(step).lower(variables, x).cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per device
    cost = cost[0]
  return float(cost["flops"]) / batch_size
