"""Training-throughput measurements: the bare jitted step, the full trainer loop, PyTorch.

All three run on synthetic data of the same shape in the same process, so their
ratios are meaningful on any machine. FLOPs come from XLA's cost analysis, and
MFU is measured FLOP/s over the device's peak: a table for known accelerators,
otherwise a large matmul timed on the device.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vision_jax import models
from vision_jax.models.flops import count_flops
from vision_jax.train import sharding as sharding_lib
from vision_jax.train import steps as steps_lib

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets.
PEAK_BF16 = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def device_peak_flops(dtype: Any) -> tuple[float, str]:
  """(peak FLOP/s of one device, where the figure comes from)."""
  kind = jax.devices()[0].device_kind
  if jnp.dtype(dtype) == jnp.bfloat16:
    for key, peak in PEAK_BF16.items():
      if key.lower() in kind.lower():
        return peak, f"table:{key}"
  n = 2048 if jax.devices()[0].platform == "cpu" else 8192
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  reps = 3 if jax.devices()[0].platform == "cpu" else 50
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return 2 * n**3 * reps / (time.perf_counter() - t), f"measured:{n}x{n} matmul"


def _setup(model_name: str, batch_size: int, image_size: int, dtype: Any, num_classes: int):
  mesh = sharding_lib.make_mesh()
  model = models.create_model(model_name, num_classes=num_classes, dtype=dtype)
  schedule = optax.constant_schedule(0.01)
  tx = optax.sgd(schedule, momentum=0.9)
  init = functools.partial(steps_lib.create_train_state, model=model, tx=tx,
                           input_shape=(1, image_size, image_size, 3), use_ema=False)
  shardings = sharding_lib.state_shardings(jax.eval_shape(init, jax.random.key(0)), mesh, False)
  state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
  step = jax.jit(functools.partial(steps_lib.train_step, model=model, tx=tx, schedule=schedule,
                                   num_classes=num_classes),
                 in_shardings=(shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding_lib.replicated(mesh)), donate_argnums=(0,))
  rng = np.random.default_rng(0)
  batch = sharding_lib.make_global_batch({
      "image": rng.standard_normal((batch_size, image_size, image_size, 3)).astype(np.float32),
      "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}, mesh)
  return state, step, batch


def bare_step(model_name: str, batch_size: int, image_size: int, dtype: Any = jnp.float32,
              steps: int = 10, num_classes: int = 1000) -> dict[str, float]:
  """Throughput of the jitted train step alone, same batch every step, no host work."""
  state, step, batch = _setup(model_name, batch_size, image_size, dtype, num_classes)
  t = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  state, m = compiled(state, batch)  # warm-up
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch)
  jax.block_until_ready((state, m))
  step_time = (time.perf_counter() - t) / steps
  return {"compile_s": compile_s, "step_time_ms": 1e3 * step_time,
          "images_per_sec": batch_size / step_time}


def trainer_loop(model_name: str, batch_size: int, image_size: int, dtype_name: str = "float32",
                 steps: int = 10, num_classes: int = 1000) -> dict[str, float]:
  """Throughput of `train_and_evaluate` itself on synthetic data (compile step excluded)."""
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({
      "seed": 0, "model": {"name": model_name, "overrides": {}}, "dtype": dtype_name,
      "data": {"name": "synthetic", "image_size": image_size, "num_classes": num_classes,
               "num_train": batch_size * 2, "num_eval": jax.device_count()},
      "batch_size": batch_size, "eval_batch_size": jax.device_count(),
      "total_steps": steps + 1, "log_every_steps": steps + 1,
      "schedule": {"base_lr": 0.01, "decay": "constant"},
      "optimizer": {"name": "sgd", "momentum": 0.9}, "keep_checkpoints": 1})
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
  rate = [r["images_per_sec"] for r in rows if "images_per_sec" in r][-1]
  return {"images_per_sec": rate}


def torch_resnet50(batch_size: int, image_size: int, steps: int = 10,
                   num_classes: int = 1000) -> dict[str, float]:
  """torchvision ResNet-50 training steps (channels_last, SGD) on the CPU, for comparison."""
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel
  model = torchvision.models.resnet50(num_classes=num_classes).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  x = torch.randn(batch_size, 3, image_size, image_size).to(memory_format=torch.channels_last)
  y = torch.randint(0, num_classes, (batch_size,))
  loss_fn = torch.nn.CrossEntropyLoss()

  def one():
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()

  one()
  t = time.perf_counter()
  for _ in range(steps):
    one()
  step_time = (time.perf_counter() - t) / steps
  return {"images_per_sec": batch_size / step_time, "threads": torch.get_num_threads()}


def run(model_name: str, batch_size: int, image_size: int, dtype_name: str = "float32",
        steps: int = 10, trainer: bool = True, compare_torch: bool = False) -> dict[str, Any]:
  """Everything `tools/benchmark.py` prints, as one dict."""
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
  result: dict[str, Any] = {"model": model_name, "batch_size": batch_size,
                            "image_size": image_size, "dtype": dtype_name,
                            "devices": jax.device_count(),
                            "device_kind": jax.devices()[0].device_kind}
  bare = bare_step(model_name, batch_size, image_size, dtype, steps)
  result.update(bare)
  flops = count_flops(model_name, image_size=image_size, train=True, dtype=dtype)
  peak, source = device_peak_flops(dtype)
  result.update({"train_gflops_per_image": flops / 1e9, "peak_tflops_per_device": peak / 1e12,
                 "peak_source": source,
                 "mfu": flops * bare["images_per_sec"] / (peak * jax.device_count())})
  if trainer:
    loop = trainer_loop(model_name, batch_size, image_size, dtype_name, steps)
    result["trainer_images_per_sec"] = loop["images_per_sec"]
    result["trainer_over_bare_step"] = loop["images_per_sec"] / bare["images_per_sec"]
  if compare_torch:
    ref = torch_resnet50(batch_size, image_size, steps)
    result["torch_images_per_sec"] = ref["images_per_sec"]
    result["jax_over_torch"] = bare["images_per_sec"] / ref["images_per_sec"]
  return result
