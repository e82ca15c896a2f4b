"""What a model costs, from XLA: FLOPs of a forward (or training) pass, memory of a training pass.

XLA counts a multiply-add as two FLOPs, so ResNet-50 at 224x224 comes out near
8.2 GFLOPs per image (the "4.1 GMACs" of papers). Nothing is allocated: parameters
are abstract shapes. `count_flops` only lowers the program, so it works for the
largest variants on a laptop; `train_memory` compiles it (seconds to a minute on a
CPU) for the compiler's buffer assignment, which is where peak memory is decided.
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
  step, args = _program(model, image_size, batch_size, dtype, train, num_classes, overrides,
                        "count_flops")
  cost = step.lower(*args).cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per device
    cost = cost[0]
  return float(cost["flops"]) / batch_size


def train_memory(model: str | nn.Module, image_size: int | None = None, batch_size: int = 1,
                 dtype: Any = jnp.float32, num_classes: int = 1000,
                 **overrides: Any) -> dict[str, int]:
  """Bytes of the compiled gradient computation of a training step (forward + backward).

  Compiles, without running, the function that maps parameters and a batch to the
  gradients, and reads XLA's buffer assignment (`compiled.memory_analysis()`). The
  optimizer update is not included. The figures are for the backend that compiles:
  XLA:CPU, for one, removes rematerialisation unless the process runs with
  XLA_FLAGS=--xla_disable_hlo_passes=cse_barrier_expander (see README, "Memory").

  Args:
    model: a registered name or a module.
    image_size: input side; defaults to the registered input size.
    batch_size: images per step.
    dtype: compute dtype when `model` is a name.
    num_classes: classifier size when `model` is a name.
    **overrides: create_model overrides when `model` is a name, e.g. remat='full'.

  Returns:
    {'temp': activations and scratch, 'arguments': parameters and batch, 'output':
    the gradients, 'peak': temp + arguments + output - aliased} in bytes.
  """
  step, args = _program(model, image_size, batch_size, dtype, True, num_classes, overrides,
                        "train_memory")
  stats = step.lower(*args).compile().memory_analysis()
  if stats is None:
    raise ValueError(f"train_memory: the {jax.default_backend()} backend reports no memory "
                     "analysis.")
  out = {"temp": int(stats.temp_size_in_bytes), "arguments": int(stats.argument_size_in_bytes),
         "output": int(stats.output_size_in_bytes)}
  out["peak"] = (out["temp"] + out["arguments"] + out["output"]
                 - int(stats.alias_size_in_bytes))
  return out


def _program(model: str | nn.Module, image_size: int | None, batch_size: int, dtype: Any,
             train: bool, num_classes: int, overrides: dict[str, Any], caller: str):
  """The jitted forward (or gradient) function of `model` and its abstract arguments."""
  if isinstance(model, str):
    if image_size is None:
      image_size = overrides.get("img_size") or registry.model_info(model).input_size
    model = registry.create_model(model, num_classes=num_classes, dtype=dtype, **overrides)
  if image_size is None:
    raise ValueError(f"{caller}: image_size is required when a module is passed.")
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
  return jax.jit(step), (variables, x)
