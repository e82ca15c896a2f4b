"""Training throughput: our step, a minimal Flax step and timm, on the same model and batch.

Three ways to train one registered model are timed here:

  * ours  - the trainer's own `steps.train_step`: jitted over a device mesh, with
            sharded, donated state and the step metrics (what `train_and_evaluate` runs);
  * flax  - the simplest hand-written linen step (`flax_train_step`): one plain
            `jax.jit` of `value_and_grad` and an optax update, no mesh, no donation;
  * timm  - timm's model of the same architecture (`ModelInfo.timm_name`, the
            model the parity tests load), trained by PyTorch: fp32 on the CPU; AMP
            bf16 and `torch.compile` on CUDA; channels_last for convolutional models.

Each side is a `Trial`: built, compiled and warmed up once, then timed on the same
batch for a number of steps. `time_trials` alternates the sides in rounds and takes
the median, so that load from other processes hits every side alike and the
ratios stay meaningful on a busy machine. FLOPs come from XLA's cost analysis, and
MFU is measured FLOP/s over the device's peak: a table for known accelerators,
otherwise a large matmul timed on the device.

`measure` is what `tools/accelerator_report.py` runs in a worker process per
side: the largest batch of a list that fits in device memory, its throughput,
compile time and peak memory.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import tempfile
import time
import traceback
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vision_jax import models
from vision_jax.bench import DTYPES, timing
from vision_jax.models.flops import count_flops
from vision_jax.train import metrics as metrics_lib
from vision_jax.train import sharding as sharding_lib
from vision_jax.train import steps as steps_lib

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets.
PEAK_BF16 = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}
PEERS = ("timm", "flax")
LEARNING_RATE = 0.01
MOMENTUM = 0.9


class BenchmarkError(ValueError):
  """A benchmark that cannot run as asked (no timm counterpart, timm missing, a bad size)."""


class OutOfMemory(RuntimeError):
  """The step does not fit in device memory at this batch size."""


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


def resolve_dtype(dtype_name: str) -> str:
  """'auto' is bfloat16 on accelerators and float32 on the CPU."""
  if dtype_name not in DTYPES:
    raise BenchmarkError(f"dtype {dtype_name!r}: choose one of {DTYPES}.")
  if dtype_name == "auto":
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return dtype_name


# ---------------------------------------------------------------------------
# The model and the batch, shared by every side.
# ---------------------------------------------------------------------------
def model_overrides(model_name: str, image_size: int) -> dict[str, Any]:
  """create_model overrides for training at `image_size` (ViTs are built for one size)."""
  return {"img_size": image_size} if models.model_info(model_name).family == "vit" else {}


def is_convolutional(model_name: str) -> bool:
  """CNNs and ViT hybrids (whose ResNet stem runs on images); False for plain ViTs."""
  from vision_jax.models import vit  # pylint: disable=import-outside-toplevel
  if models.model_info(model_name).family != "vit":
    return True
  return any(model_name.startswith(f"vit_{stem}_") for stem in vit.HYBRIDS)


def timm_name(model_name: str) -> str:
  """The timm model with the same architecture as `model_name` (ModelError if unknown)."""
  info = models.model_info(model_name)
  if info.timm_name is None:
    with_timm = sorted({models.model_info(n).family for n in models.list_models()
                        if models.model_info(n).timm_name})
    raise BenchmarkError(
        f"{model_name!r} has no timm counterpart, so --compare timm cannot train the same "
        f"model in PyTorch; the {', '.join(with_timm)} models have one. Use --compare flax for "
        "this model.")
  return info.timm_name.split(".")[0]


def check_size(model_name: str, batch_size: int, image_size: int) -> None:
  """Clear errors for sizes that would otherwise fail deep inside JAX or PyTorch."""
  models.model_info(model_name)
  if not isinstance(batch_size, int) or batch_size <= 0:
    raise BenchmarkError(f"batch size {batch_size!r}: must be a positive integer.")
  if not isinstance(image_size, int) or image_size < 8:
    raise BenchmarkError(f"image size {image_size!r}: must be an integer >= 8.")
  module = models.create_model(model_name, num_classes=0,
                               **model_overrides(model_name, image_size))
  if getattr(module, "grid_size", 1) < 1:
    raise BenchmarkError(f"image size {image_size} is too small for {model_name}: it makes no "
                         f"{module.patch_size}x{module.patch_size} patch; use a larger one.")


def synthetic_batch(batch_size: int, image_size: int, num_classes: int = 1000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(images float32 NHWC, labels int32): one fixed batch every side trains on."""
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch_size, image_size, image_size, 3)).astype(np.float32)
  return images, rng.integers(0, num_classes, batch_size).astype(np.int32)


# ---------------------------------------------------------------------------
# Trials: one side, compiled and warmed up, ready to time.
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Trial:
  """One side's training step on one batch, compiled and warmed up.

  Attributes:
    name: 'ours', 'flax' or 'timm'.
    batch_size: images per step.
    compile_s: seconds from the built model and state to the end of the first step
      (tracing, compiling and autotuning, and that step).
    run: run(n) trains n more steps and returns their wall-clock seconds, waiting
      for the device to finish.
    peak_memory_bytes: ours/flax: XLA's compiled memory analysis (arguments + outputs
      - aliased + temporaries); timm: torch.cuda.max_memory_allocated (None on the CPU).
    close: frees the trial's device memory.
    info: side-specific facts (precision, channels_last, ...), reported as they are.
  """

  name: str
  batch_size: int
  compile_s: float
  run: Callable[[int], float]
  peak_memory_bytes: int | None
  close: Callable[[], None]
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


def _is_oom(error: BaseException) -> bool:
  text = f"{type(error).__name__}: {error}"
  return ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
          or type(error).__name__ == "OutOfMemoryError")


def _compiled_memory(compiled: Any) -> int | None:
  """Peak device bytes of one compiled program, from XLA's memory analysis."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)


def _memory_limit(device: Any) -> int | None:
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return (stats or {}).get("bytes_limit")


def _check_fits(what: str, batch_size: int, need: int | None, device: Any) -> None:
  limit = _memory_limit(device)
  if need is not None and limit is not None and need > limit:
    raise OutOfMemory(f"{what} at batch {batch_size} needs {need / 2**30:.1f} GiB "
                      f"(XLA's memory analysis), the device has {limit / 2**30:.1f} GiB")


def _jax_timed_loop(step: Callable[[], Any]) -> Callable[[int], float]:
  def run(n: int) -> float:
    start = time.perf_counter()
    out = None
    for _ in range(n):
      out = step()
    jax.block_until_ready(out)
    return time.perf_counter() - start
  return run


def _compile_and_warm(what: str, batch_size: int, device: Any, prepare: Callable[[], Any],
                      make_step: Callable[[Any], Callable[[], Any]], close: Callable[[], None],
                      warmup: int) -> tuple[Callable[[int], float], int | None, float]:
  """Shared by `ours_trial` and `flax_trial`: (timed loop, compiled peak memory, compile s).

  `prepare()` allocates the inputs and returns a zero-argument function that lowers
  the step; the compile time runs from lowering to the end of the first step. A
  step that does not fit the device raises OutOfMemory, after `close()`.
  """
  try:
    lower = prepare()
    start = time.perf_counter()
    compiled = lower().compile()
    memory = _compiled_memory(compiled)
    _check_fits(what, batch_size, memory, device)
    run = _jax_timed_loop(make_step(compiled))
    run(1)
    compile_s = time.perf_counter() - start
    run(warmup)
  except Exception as e:
    close()
    if _is_oom(e):
      raise OutOfMemory(f"{what} at batch {batch_size}: {str(e)[:300]}") from None
    raise
  return run, memory, compile_s


def _release(box: dict[str, Any]) -> None:
  """Drops a trial's state and batch so that the next trial has the memory."""
  box.clear()
  gc.collect()


def ours_trial(model_name: str, images: np.ndarray, labels: np.ndarray, dtype_name: str,
               num_devices: int | None = None, warmup: int = 1,
               num_classes: int = 1000) -> Trial:
  """The trainer's train step (mesh, sharded and donated state, metrics), SGD with momentum."""
  batch_size, image_size = images.shape[0], images.shape[1]
  mesh = sharding_lib.make_mesh(num_devices)
  if batch_size % mesh.size:
    raise BenchmarkError(f"batch size {batch_size} does not split over {mesh.size} devices; "
                         f"use a multiple of {mesh.size} (or fewer devices).")
  model = models.create_model(model_name, num_classes=num_classes, dtype=jnp.dtype(dtype_name),
                              **model_overrides(model_name, image_size))
  schedule = optax.constant_schedule(LEARNING_RATE)
  tx = optax.sgd(schedule, momentum=MOMENTUM)
  init = functools.partial(steps_lib.create_train_state, model=model, tx=tx,
                           input_shape=(1, image_size, image_size, 3), use_ema=False)
  shardings = sharding_lib.state_shardings(jax.eval_shape(init, jax.random.key(0)), mesh, False)
  box: dict[str, Any] = {}
  step = jax.jit(functools.partial(steps_lib.train_step, model=model, tx=tx, schedule=schedule,
                                   num_classes=num_classes),
                 in_shardings=(shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding_lib.replicated(mesh)), donate_argnums=(0,))

  def make_step(compiled: Any) -> Callable[[], Any]:
    def one() -> Any:
      box["state"], metrics = compiled(box["state"], box["batch"])
      return metrics
    return one

  close = functools.partial(_release, box)

  def prepare() -> Callable[[], Any]:
    box["state"] = steps_lib.init_state(init, jax.random.key(0), shardings)
    box["batch"] = sharding_lib.make_global_batch({"image": images, "label": labels}, mesh)
    return lambda: step.lower(box["state"], box["batch"])

  run, memory, compile_s = _compile_and_warm("our train step", batch_size, mesh.devices.flat[0],
                                             prepare, make_step, close, warmup)
  params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(box["state"].params))
  return Trial("ours", batch_size, compile_s, run, memory, close,
               {"dtype": dtype_name, "devices": mesh.size, "params": params})


def flax_train_step(params: Any, batch_stats: Any, opt_state: Any, images: jax.Array,
                    labels: jax.Array, *, model: Any, tx: optax.GradientTransformation
                    ) -> tuple[Any, Any, Any, jax.Array]:
  """The simplest linen training step: forward, cross-entropy, value_and_grad, optax update."""

  def loss_fn(params):
    variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.key(0)})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return loss.mean(), updates.get("batch_stats", {})

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), batch_stats, opt_state, loss


def flax_trial(model_name: str, images: np.ndarray, labels: np.ndarray, dtype_name: str,
               warmup: int = 1, num_classes: int = 1000) -> Trial:
  """`flax_train_step` under a plain jax.jit on the default device: the peer of `ours_trial`."""
  batch_size, image_size = images.shape[0], images.shape[1]
  model = models.create_model(model_name, num_classes=num_classes, dtype=jnp.dtype(dtype_name),
                              **model_overrides(model_name, image_size))
  tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
  box: dict[str, Any] = {}
  step = jax.jit(functools.partial(flax_train_step, model=model, tx=tx))

  def make_step(compiled: Any) -> Callable[[], Any]:
    def one() -> Any:
      box["params"], box["batch_stats"], box["opt_state"], loss = compiled(
          box["params"], box["batch_stats"], box["opt_state"], box["images"], box["labels"])
      return loss
    return one

  close = functools.partial(_release, box)

  def prepare() -> Callable[[], Any]:
    variables = jax.jit(functools.partial(model.init, train=False))(
        {"params": jax.random.key(0), "dropout": jax.random.key(0)},
        jnp.zeros((1, image_size, image_size, 3), jnp.float32))
    box.update(params=variables["params"], batch_stats=variables.get("batch_stats", {}),
               opt_state=jax.jit(tx.init)(variables["params"]), images=jnp.asarray(images),
               labels=jnp.asarray(labels))
    return lambda: step.lower(box["params"], box["batch_stats"], box["opt_state"],
                              box["images"], box["labels"])

  run, memory, compile_s = _compile_and_warm("the flax step", batch_size, jax.devices()[0],
                                             prepare, make_step, close, warmup)
  return Trial("flax", batch_size, compile_s, run, memory, close, {"dtype": dtype_name})


def import_torch_and_timm() -> tuple[Any, Any]:
  """(torch, timm), or a BenchmarkError that says how to install them.

  Import them before TensorFlow (which the trainer's writers load): torchvision,
  which timm imports, crashes when it comes second.
  """
  try:
    import timm  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise BenchmarkError(f"--compare timm needs PyTorch and timm ({e}); install them with "
                         "`pip install torch timm`.") from None
  return torch, timm


def create_timm_model(model_name: str, image_size: int, num_classes: int = 1000) -> Any:
  """timm's model with the architecture of `model_name` at `image_size`, random weights."""
  torch, timm = import_torch_and_timm()
  kwargs = {"img_size": image_size} if models.model_info(model_name).family == "vit" else {}
  torch.manual_seed(0)
  return timm.create_model(timm_name(model_name), pretrained=False, num_classes=num_classes,
                           **kwargs)


def timm_trial(model_name: str, images: np.ndarray, labels: np.ndarray, amp_bf16: bool,
               compile_model: bool | None = None, channels_last: bool | None = None,
               device: str | None = None, warmup: int = 1, num_classes: int = 1000,
               threads: int | None = None) -> Trial:
  """timm's model of the same architecture, trained by PyTorch with SGD and momentum.

  Args:
    model_name: our registered name; timm's model is `timm_name(model_name)`.
    images, labels: the batch (NHWC float32 images, as our side gets them).
    amp_bf16: autocast the forward pass to bfloat16 (parameters stay float32, as ours).
    compile_model: torch.compile the model; None: on for CUDA, off on the CPU.
    channels_last: NHWC memory format; None: for convolutional models.
    device: 'cuda' or 'cpu'; None: CUDA when available.
    warmup: steps run after the first one before timing starts.
    num_classes: classifier size.
    threads: torch.set_num_threads for CPU work until `close` (None: as it is; PyTorch's
      default is one per core).
  """
  torch, timm = import_torch_and_timm()
  threads_before = torch.get_num_threads()
  if threads is not None:
    torch.set_num_threads(threads)
  name = timm_name(model_name)
  batch_size, image_size = images.shape[0], images.shape[1]
  device = device or ("cuda" if torch.cuda.is_available() else "cpu")
  cuda = device.startswith("cuda")
  compile_model = cuda if compile_model is None else compile_model
  channels_last = is_convolutional(model_name) if channels_last is None else channels_last
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  if cuda:
    torch.backends.cudnn.benchmark = True
    torch.cuda.reset_peak_memory_stats()
  box: dict[str, Any] = {}

  def close() -> None:
    box.clear()
    gc.collect()
    if cuda:
      torch.cuda.empty_cache()
    if compile_model:
      torch._dynamo.reset()  # pylint: disable=protected-access
    torch.set_num_threads(threads_before)

  def sync() -> None:
    if cuda:
      torch.cuda.synchronize()

  def one() -> None:
    box["opt"].zero_grad(set_to_none=True)
    with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16,
                        enabled=amp_bf16):
      loss = box["loss_fn"](box["step_model"](box["x"]), box["y"])
    loss.backward()
    box["opt"].step()

  def run(n: int) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(n):
      one()
    sync()
    return time.perf_counter() - start

  try:
    model = create_timm_model(model_name, image_size, num_classes)
    params = sum(p.numel() for p in model.parameters())
    model = model.to(device=device, memory_format=memory_format).train()
    box.update(
        model=model, opt=torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM),
        step_model=torch.compile(model, dynamic=False) if compile_model else model,
        x=torch.from_numpy(images.transpose(0, 3, 1, 2)).to(device).contiguous(
            memory_format=memory_format),
        y=torch.from_numpy(labels.astype(np.int64)).to(device),
        loss_fn=torch.nn.CrossEntropyLoss())
    del model
    compile_s = run(1)  # torch.compile traces and compiles in the first step
    run(warmup)
    peak = int(torch.cuda.max_memory_allocated()) if cuda else None
  except Exception as e:
    close()
    if _is_oom(e):
      raise OutOfMemory(f"timm {name} at batch {batch_size}: {str(e)[:300]}") from None
    raise
  return Trial("timm", batch_size, compile_s, run, peak, close, {
      "timm_name": name, "timm_device": device,
      "timm_device_name": torch.cuda.get_device_name() if cuda else "cpu",
      "timm_precision": "amp_bf16" if amp_bf16 else "fp32", "timm_channels_last": channels_last,
      "timm_compiled": compile_model, "timm_params": params,
      "timm_threads": None if cuda else torch.get_num_threads(), "torch_version": torch.__version__,
      "timm_version": timm.__version__})


def time_trials(trials: Sequence[Trial], steps: int, repeats: int = 1) -> dict[str, float]:
  """Median seconds per step of each trial, timed in `repeats` alternating rounds of `steps`.

  Each round runs one untimed step of a side before timing its `steps`: a program's
  first step after another program's is not its steady state on XLA:CPU
  (`timing.alternate`, docs/efficiency.md).
  """
  seconds: dict[str, list[float]] = {t.name: [] for t in trials}

  def side(trial: Trial) -> Callable[[], None]:
    def settled() -> None:
      trial.run(1)
      seconds[trial.name].append(trial.run(steps) / steps)
    return settled

  # Trial.run times its own steps (after its warm-up, excluding the host work around them).
  timing.alternate({t.name: side(t) for t in trials}, rounds=repeats)
  return timing.medians(seconds)


# ---------------------------------------------------------------------------
# The full trainer loop.
# ---------------------------------------------------------------------------
def trainer_loop(model_name: str, batch_size: int, image_size: int, dtype_name: str = "float32",
                 steps: int = 10, num_classes: int = 1000,
                 num_devices: int | None = None) -> dict[str, float]:
  """Throughput of `train_and_evaluate` itself on synthetic data (compile step excluded)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  devices = num_devices or jax.device_count()
  config = ml_collections.ConfigDict({
      "seed": 0, "dtype": dtype_name, "num_devices": num_devices,
      "model": {"name": model_name, "overrides": model_overrides(model_name, image_size)},
      "data": {"name": "synthetic", "image_size": image_size, "num_classes": num_classes,
               "num_train": batch_size * 2, "num_eval": devices},
      "batch_size": batch_size, "eval_batch_size": devices,
      "total_steps": steps + 1, "log_every_steps": steps + 1,
      "schedule": {"base_lr": LEARNING_RATE, "decay": "constant"},
      "optimizer": {"name": "sgd", "momentum": MOMENTUM}, "keep_checkpoints": 1})
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train_and_evaluate(config, workdir)
    rows = metrics_lib.read_metrics(workdir)
  rate = [r["images_per_sec"] for r in rows if "images_per_sec" in r][-1]
  return {"images_per_sec": rate}


# ---------------------------------------------------------------------------
# What tools/benchmark.py prints.
# ---------------------------------------------------------------------------
def run(model_name: str, batch_size: int, image_size: int, dtype_name: str = "auto",
        steps: int = 5, repeats: int = 3, trainer: bool = True, compare: Sequence[str] = (),
        compile_timm: bool | None = None, num_devices: int | None = None,
        torch_threads: int | None = None) -> dict[str, Any]:
  """Everything `tools/benchmark.py` prints, as one dict.

  Args:
    model_name: a registered model.
    batch_size, image_size: the batch every side trains on.
    dtype_name: 'float32', 'bfloat16' or 'auto' (bfloat16 on accelerators). With
      bfloat16, timm runs under AMP bf16.
    steps: timed steps per round; repeats: alternating rounds (the median counts).
    trainer: also time the full trainer loop (`trainer_over_bare_step`).
    compare: peers, any of 'timm' (`jax_over_timm`) and 'flax' (`ours_over_flax`).
    compile_timm: torch.compile timm's model; None: on for CUDA.
    num_devices: devices of our step's mesh; None: all, or 1 when comparing (the
      peers run on one device).
    torch_threads: PyTorch's CPU threads for timm (None: its default, one per core).

  Raises:
    ModelError: unknown model. BenchmarkError: no timm counterpart, timm not
      installed, bad sizes, a mesh the batch does not split over.
  """
  unknown = sorted(set(compare) - set(PEERS))
  if unknown:
    raise BenchmarkError(f"unknown peer(s) {unknown}: --compare takes {' and '.join(PEERS)}.")
  if steps <= 0 or repeats <= 0:
    raise BenchmarkError(f"steps={steps} and repeats={repeats} must be positive.")
  if torch_threads is not None and torch_threads < 1:
    raise BenchmarkError(f"torch threads {torch_threads}: must be a positive integer.")
  check_size(model_name, batch_size, image_size)
  if "timm" in compare:
    timm_name(model_name)
    torch, _ = import_torch_and_timm()
  if compare:
    if num_devices not in (None, 1):
      raise BenchmarkError(f"num_devices={num_devices}: the peers train on one device, so "
                           "comparisons run our step on one device too; drop --num-devices.")
    num_devices = 1
  dtype_name = resolve_dtype(dtype_name)
  dtype = jnp.dtype(dtype_name)
  images, labels = synthetic_batch(batch_size, image_size)
  trials = [ours_trial(model_name, images, labels, dtype_name, num_devices)]
  result: dict[str, Any] = {"model": model_name, "batch_size": batch_size,
                            "image_size": image_size, "dtype": dtype_name,
                            "devices": trials[0].info["devices"],
                            "device_kind": jax.devices()[0].device_kind,
                            "steps": steps, "repeats": repeats}
  try:
    if "flax" in compare:
      trials.append(flax_trial(model_name, images, labels, dtype_name))
    if "timm" in compare:
      cuda = torch.cuda.is_available() and jax.default_backend() == "gpu"
      trials.append(timm_trial(model_name, images, labels, amp_bf16=dtype == jnp.bfloat16,
                               compile_model=compile_timm, device="cuda" if cuda else "cpu",
                               threads=torch_threads))
    seconds = time_trials(trials, steps, repeats)
  finally:
    for trial in trials:
      trial.close()
  by_name = {t.name: t for t in trials}
  rate = {name: batch_size / s for name, s in seconds.items()}
  ours = by_name["ours"]
  result.update({"compile_s": ours.compile_s, "step_time_ms": 1e3 * seconds["ours"],
                 "images_per_sec": rate["ours"], "peak_memory_mb": _mb(ours.peak_memory_bytes)})
  flops = count_flops(model_name, image_size=image_size, train=True, dtype=dtype,
                      **model_overrides(model_name, image_size))
  peak, source = device_peak_flops(dtype)
  result.update({"train_gflops_per_image": flops / 1e9, "peak_tflops_per_device": peak / 1e12,
                 "peak_source": source,
                 "mfu": flops * rate["ours"] / (peak * result["devices"])})
  if "flax" in by_name:
    result.update({"flax_images_per_sec": rate["flax"], "flax_compile_s": by_name["flax"].compile_s,
                   "flax_peak_memory_mb": _mb(by_name["flax"].peak_memory_bytes),
                   "ours_over_flax": rate["ours"] / rate["flax"]})
  if "timm" in by_name:
    timm = by_name["timm"]
    result.update(timm.info)
    result.update({"timm_images_per_sec": rate["timm"], "timm_compile_s": timm.compile_s,
                   "timm_peak_memory_mb": _mb(timm.peak_memory_bytes),
                   "jax_over_timm": rate["ours"] / rate["timm"]})
  if trainer:
    loop = trainer_loop(model_name, batch_size, image_size, dtype_name, steps * repeats,
                        num_devices=num_devices)
    result["trainer_images_per_sec"] = loop["images_per_sec"]
    result["trainer_over_bare_step"] = loop["images_per_sec"] / rate["ours"]
  return result


def _mb(n: int | None) -> float | None:
  return None if n is None else n / 2**20


# ---------------------------------------------------------------------------
# One side of the accelerator report (run in a worker process per side).
# ---------------------------------------------------------------------------
def measure(side: str, model: str, image_size: int, batch_sizes: Sequence[int], steps: int,
            warmup: int = 2, dtype: str = "auto", compile_timm: bool | None = None,
            simulate_oom_above: int | None = None,
            require_accelerator: bool = False) -> dict[str, Any]:
  """Trains `model` on one side at the largest batch of `batch_sizes` that fits.

  Args:
    side: 'ours' or 'timm'.
    model: registered name; image_size: input side.
    batch_sizes: tried in order; a batch that does not fit in device memory (or that
      XLA's memory analysis says will not) is recorded in 'tried' and the next is tried.
    steps: timed steps; warmup: steps after the first before timing.
    dtype: 'auto' (bfloat16 on accelerators), 'float32' or 'bfloat16'. timm follows
      it on its own device: bfloat16 means AMP bf16.
    compile_timm: torch.compile timm's model (None: on CUDA).
    simulate_oom_above: treat batches above this as out of memory (tests the back-off
      on machines that never run out).
    require_accelerator: fail at once (status 'error') when this side would run on
      the CPU, instead of spending the budget on CPU steps at accelerator sizes.

  Returns:
    A JSON-able dict: status 'ok' with images_per_sec, batch_size, compile_s,
    peak_memory_bytes, ... (ours adds FLOPs, the device peak and MFU), or status
    'oom' when no batch fits.
  """
  if side not in ("ours", "timm"):
    raise BenchmarkError(f"side {side!r}: 'ours' or 'timm'.")
  if require_accelerator:
    if side == "ours" and jax.default_backend() == "cpu":
      raise BenchmarkError(f"jax sees no accelerator (jax.devices() = {jax.devices()}); install "
                           "jax with the accelerator's plugin, e.g. `pip install jax[cuda12]`.")
    if side == "timm" and not import_torch_and_timm()[0].cuda.is_available():
      raise BenchmarkError("PyTorch sees no CUDA device, so timm would train on the CPU; the "
                           "comparison needs torch with CUDA.")
  tried = []
  notes: dict[str, str] = {}
  index = 0
  while index < len(batch_sizes):
    batch_size = batch_sizes[index]
    check_size(model, batch_size, image_size)
    images, labels = synthetic_batch(batch_size, image_size)
    trial = None
    compiled_timm = False
    try:
      if simulate_oom_above is not None and batch_size > simulate_oom_above:
        raise OutOfMemory(f"batch {batch_size} > {simulate_oom_above} (simulated)")
      if side == "ours":
        dtype_name = resolve_dtype(dtype)
        trial = ours_trial(model, images, labels, dtype_name, num_devices=1, warmup=warmup)
      else:
        torch, _ = import_torch_and_timm()
        cuda = torch.cuda.is_available()
        dtype_name = dtype if dtype != "auto" else ("bfloat16" if cuda else "float32")
        compiled_timm = cuda if compile_timm is None else compile_timm
        trial = timm_trial(model, images, labels, amp_bf16=dtype_name == "bfloat16",
                           compile_model=compiled_timm, warmup=warmup)
      seconds = trial.run(steps) / steps
    except OutOfMemory as e:
      tried.append({"batch_size": batch_size, "error": str(e)})
      index += 1
      continue
    except Exception as e:  # pylint: disable=broad-except
      if _is_oom(e):
        tried.append({"batch_size": batch_size, "error": f"out of memory: {str(e)[:300]}"})
        index += 1
        continue
      if not compiled_timm:
        raise
      # One unattended run: a torch.compile failure still leaves an eager timm figure.
      traceback.print_exc()
      notes["timm_compile_error"] = f"{type(e).__name__}: {str(e)[:500]}"
      compile_timm = False
      continue
    finally:
      if trial is not None:
        trial.close()
    out = {"status": "ok", "side": side, "model": model, "image_size": image_size,
           "batch_size": batch_size, "dtype": dtype_name, "images_per_sec": batch_size / seconds,
           "step_time_ms": 1e3 * seconds, "compile_s": trial.compile_s,
           "peak_memory_bytes": trial.peak_memory_bytes, "steps": steps, "tried": tried,
           **trial.info, **notes}
    if side == "ours":
      out.update(_ours_device_facts(model, image_size, dtype_name, out["images_per_sec"]))
    return out
  return {"status": "oom", "side": side, "model": model, "image_size": image_size,
          "tried": tried, **notes}


def _ours_device_facts(model: str, image_size: int, dtype_name: str,
                       images_per_sec: float) -> dict[str, Any]:
  device = jax.devices()[0]
  flops = count_flops(model, image_size=image_size, train=True, dtype=jnp.dtype(dtype_name),
                      **model_overrides(model, image_size))
  peak, source = device_peak_flops(jnp.dtype(dtype_name))
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  return {"platform": device.platform, "device_kind": device.device_kind,
          "jax": jax.__version__, "train_flops_per_image": flops, "peak_flops": peak,
          "peak_source": source, "mfu": flops * images_per_sec / peak,
          "device_peak_bytes_in_use": stats.get("peak_bytes_in_use")}
