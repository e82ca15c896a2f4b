"""Depthwise convolution, shifted multiply-adds against XLA's grouped convolution.

`model_depthwise_shapes` finds every depthwise convolution a registered model runs
(by tracing it abstractly with an interceptor on `DepthwiseConv`, so a new family
is covered as soon as it uses the module), and `time_shapes` times both paths of
`vision_jax.models.depthwise` at each distinct shape, forward and forward+backward,
in alternating rounds. `time_models` times whole models (inference, and a plain
SGD step) with each path forced, and timm's model of the same architecture beside
them in the same rounds. tools/benchmark_depthwise.py prints the tables.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vision_jax import models
from vision_jax.bench import timing
from vision_jax.models import depthwise

PATHS = ("xla", "shifted")


@dataclasses.dataclass(frozen=True)
class DepthwiseShape:
  """One depthwise convolution as a model runs it.

  Attributes:
    batch, height, width, channels: the NHWC input.
    kernel: side of the square kernel.
    stride: the stride (both axes).
    pads: ((top, bottom), (left, right)).
  """

  batch: int
  height: int
  width: int
  channels: int
  kernel: int
  stride: int
  pads: tuple[tuple[int, int], tuple[int, int]]

  def label(self) -> str:
    pad = "same" if self.pads[0][0] != self.pads[0][1] else f"pad{self.pads[0][0]}"
    return (f"{self.kernel}x{self.kernel}/s{self.stride} {pad} "
            f"{self.height}x{self.width}x{self.channels}")


def model_depthwise_shapes(model_name: str, batch_size: int,
                           image_size: int) -> collections.Counter[DepthwiseShape]:
  """{shape: how many times the model runs it} for every DepthwiseConv of `model_name`."""
  model = models.create_model(model_name, num_classes=10)
  found: collections.Counter[DepthwiseShape] = collections.Counter()

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, depthwise.DepthwiseConv) and context.method_name == "__call__":
      x = args[0]
      strides = ((module.strides,) * 2 if isinstance(module.strides, int)
                 else tuple(module.strides))
      pads = depthwise.explicit_pads(module.padding, x.shape[1:3], module.kernel_size, strides)
      if len(set(module.kernel_size)) != 1 or len(set(strides)) != 1:
        raise ValueError(f"{model_name}: non-square depthwise convolution {module.kernel_size}, "
                         f"strides {strides}; the benchmark times square ones only.")
      found[DepthwiseShape(x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                           module.kernel_size[0], strides[0],
                           tuple(tuple(p) for p in pads))] += 1
    return next_fun(*args, **kwargs)

  images = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
  return found


def _shape_programs(shape: DepthwiseShape, path: str) -> dict[str, Callable[[], Any]]:
  """{'forward': call, 'backward': call} of one path at one shape, compiled, on fixed data."""
  conv = depthwise.shifted_depthwise if path == "shifted" else depthwise.xla_depthwise
  strides, pads = (shape.stride, shape.stride), shape.pads
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(
      (shape.batch, shape.height, shape.width, shape.channels), np.float32))
  w = jnp.asarray(rng.standard_normal((shape.kernel, shape.kernel, 1, shape.channels),
                                      np.float32))
  forward = jax.jit(lambda x, w: conv(x, w, strides, pads))
  # A squared-sum loss gives a dense cotangent, as a network's gradient is.
  backward = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w, strides, pads) ** 2), (0, 1)))
  return {"forward": lambda: jax.block_until_ready(forward(x, w)),
          "backward": lambda: jax.block_until_ready(backward(x, w))}


def time_shapes(shapes: Sequence[DepthwiseShape], rounds: int,
                calls: int = 3) -> list[dict[str, Any]]:
  """Per shape: median seconds of each path, forward and forward+backward, and xla/shifted.

  Both paths of one shape are compiled first, then timed in alternating rounds of
  `calls` calls each.
  """
  rows = []
  for shape in shapes:
    programs = {path: _shape_programs(shape, path) for path in PATHS}
    row: dict[str, Any] = {"shape": shape.label()}
    for pass_name in ("forward", "backward"):
      sides = {path: _repeat(programs[path][pass_name], calls) for path in PATHS}
      seconds = timing.medians(timing.alternate(sides, rounds=rounds, warmup=1))
      for path in PATHS:
        row[f"{pass_name}_{path}_ms"] = 1e3 * seconds[path] / calls
      row[f"{pass_name}_xla_over_shifted"] = seconds["xla"] / seconds["shifted"]
    rows.append(row)
  return rows


def _repeat(call: Callable[[], Any], n: int) -> Callable[[], None]:
  def run() -> None:
    for _ in range(n):
      call()
  return run


@contextlib.contextmanager
def forced_path(path: str) -> Iterator[None]:
  """DepthwiseConv(impl='auto') traces with `path` inside the block (VISION_JAX_DEPTHWISE)."""
  before = os.environ.get(depthwise.ENV_VAR)
  os.environ[depthwise.ENV_VAR] = path
  try:
    yield
  finally:
    if before is None:
      os.environ.pop(depthwise.ENV_VAR, None)
    else:
      os.environ[depthwise.ENV_VAR] = before


def _ours_programs(model_name: str, images: np.ndarray, labels: np.ndarray,
                   path: str) -> dict[str, Callable[[], Any]]:
  """Our model's inference and SGD step with the depthwise path forced, compiled and run once."""
  model = models.create_model(model_name, num_classes=1000)
  x, y = jnp.asarray(images), jnp.asarray(labels)
  variables = model.init(jax.random.key(0), x[:1])
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  tx = optax.sgd(0.01, momentum=0.9)

  def infer(params, state, x):
    return model.apply({"params": params, **state}, x, train=False)

  def step(params, state, opt_state, x, y):
    def loss_fn(params):
      out = model.apply({"params": params, **state}, x, train=True,
                        mutable=list(state) or False, rngs={"dropout": jax.random.key(1)})
      logits, new_state = out if state else (out, state)  # ConvNeXt has no batch statistics
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, new_state
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state, loss

  with forced_path(path):  # the path is chosen while tracing, so compile inside the block
    infer_c = jax.jit(infer).lower(params, state, x).compile()
    step_c = jax.jit(step).lower(params, state, tx.init(params), x, y).compile()
  opt_state = tx.init(params)
  # The same parameters every call: each step is timed alike, nothing drifts to NaN.
  return {"inference": lambda: jax.block_until_ready(infer_c(params, state, x)),
          "training": lambda: jax.block_until_ready(step_c(params, state, opt_state, x, y))}


def _timm_programs(model_name: str, images: np.ndarray, labels: np.ndarray,
                   threads: int) -> dict[str, Callable[[], Any]]:
  """timm's model of the same architecture: eval forward under no_grad, and an SGD step (fp32)."""
  from vision_jax.bench import trials  # pylint: disable=import-outside-toplevel
  torch, _ = trials.import_torch_and_timm()
  torch.set_num_threads(threads)
  model = trials.create_timm_model(model_name, images.shape[1])
  model = model.to(memory_format=torch.channels_last)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2)).contiguous(memory_format=torch.channels_last)
  y = torch.from_numpy(labels.astype(np.int64))
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  loss_fn = torch.nn.CrossEntropyLoss()

  def infer() -> None:
    model.eval()
    with torch.no_grad():
      model(x)

  def train() -> None:
    model.train()
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()

  return {"inference": infer, "training": train}


def time_models(model_names: Sequence[str], batch_size: int, image_size: int, rounds: int,
                timm: bool = True, torch_threads: int = 1) -> list[dict[str, Any]]:
  """Whole-model images/s: ours with each depthwise path, and timm, in alternating rounds.

  Returns one row per model and mode ('inference', 'training') with images/s of each
  side, `shifted_over_xla` (after over before) and `*_over_timm`.
  """
  rows = []
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch_size, image_size, image_size, 3)).astype(np.float32)
  labels = rng.integers(0, 1000, batch_size).astype(np.int32)
  for name in model_names:
    sides = {f"ours_{path}": _ours_programs(name, images, labels, path) for path in PATHS}
    if timm:
      sides["timm"] = _timm_programs(name, images, labels, torch_threads)
    for mode in ("inference", "training"):
      calls = {side: programs[mode] for side, programs in sides.items()}
      # One untimed call of a side before each timed one: its steady state (timing.alternate).
      seconds = timing.medians(timing.alternate(calls, rounds=rounds, warmup=1, settle=1))
      row: dict[str, Any] = {"model": name, "mode": mode, "batch_size": batch_size,
                             "image_size": image_size}
      for side in calls:
        row[f"{side}_img_s"] = batch_size / seconds[side]
      row["shifted_over_xla"] = seconds["ours_xla"] / seconds["ours_shifted"]
      if timm:
        for path in PATHS:
          row[f"{path}_over_timm"] = seconds["timm"] / seconds[f"ours_{path}"]
        row["torch_threads"] = torch_threads
      rows.append(row)
  return rows
