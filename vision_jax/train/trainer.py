"""The training loop. It reads top to bottom: setup, state, resume, loop, finish.

`train_and_evaluate(config, workdir)` is the only place where models, data and
the optimizer meet. `config.recipe` picks the step and the evaluation:
'supervised' (default: `steps.train_step`, classification metrics) or 'simclr'
(`simclr.simclr_train_step` on two views, kNN / linear-probe metrics of the
frozen encoder). Everything inside the loop is asynchronous: metrics stay on
the device until a log step, batches are prefetched to the devices by a thread,
and the state is donated to the jitted step.
"""

from __future__ import annotations

import functools
import os
import queue
import signal
import threading
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import parameter_overview

from vision_jax import data as data_lib
from vision_jax import models
from vision_jax.config_util import ConfigError, steps_from
from vision_jax.train import checkpoint as ckpt_lib
from vision_jax.train import metrics as metrics_lib
from vision_jax.train import optim
from vision_jax.train import pretrained
from vision_jax.train import sharding as sharding_lib
from vision_jax.train import simclr as simclr_lib
from vision_jax.train import steps as steps_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
RECIPES = ("supervised", "simclr")


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the message names the step."""


class Preempted(Exception):
  """Internal: SIGTERM/SIGINT arrived; the state was saved."""


def _require(config: Any, *fields: str) -> None:
  for field in fields:
    node = config
    for part in field.split("."):
      if not hasattr(node, "keys") or part not in node.keys() or node[part] is None:
        raise ConfigError(f"The config has no {field!r}; set it in the config file or with "
                          f"--config.{field}=...")
      node = node[part]


# ---------------------------------------------------------------------------
# Pieces the loop uses; module-level so that tests and tools can reuse them.
# ---------------------------------------------------------------------------
class Prefetcher:
  """Moves host batches onto the mesh in a background thread, `size` batches ahead.

  `close()` stops the thread and waits for it, so that no transfer is in flight
  when the process exits.
  """

  _DONE = object()

  def __init__(self, batches: Iterator[dict[str, np.ndarray]], mesh, size: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, args=(batches, mesh), daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self, batches, mesh) -> None:
    try:
      for batch in batches:
        if not self._put(sharding_lib.make_global_batch(batch, mesh)):
          return
      self._put(self._DONE)
    except Exception as e:  # pylint: disable=broad-except
      self._put(e)

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if item is self._DONE:
      raise StopIteration
    if isinstance(item, Exception):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join()


class _SignalFlag:
  """Turns SIGTERM/SIGINT into a flag that the loop polls (main thread only)."""

  def __init__(self):
    self.raised = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("Received signal %d: saving a checkpoint and exiting.", signum)
    self.raised = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _should_stop(flag: bool, step: int, sync_every: int) -> bool:
  """True once any process got a signal. Processes agree only at multiples of sync_every,
  so that they all stop (and save) at the same step."""
  if jax.process_count() == 1:
    return flag
  if step % sync_every:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def evaluate(eval_fn, params, batch_stats, dataset, batch_size: int, mesh) -> dict[str, float]:
  """Classification metrics over one full, ordered pass of the eval split."""
  totals = None
  for batch in dataset.eval_iterator(batch_size, jax.process_index(), jax.process_count()):
    out = eval_fn(params, batch_stats, sharding_lib.make_global_batch(batch, mesh))
    totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"eval_loss": float(totals["loss"]) / count, "eval_top1": float(totals["top1"]) / count,
          "eval_top5": float(totals["top5"]) / count, "eval_count": count}


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------
def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns final eval metrics."""
  _require(config, "model.name", "data.name", "batch_size", "schedule.base_lr", "optimizer.name")
  os.makedirs(workdir, exist_ok=True)

  # --- Devices and data.
  mesh = sharding_lib.make_mesh(config.get("num_devices"))
  n_dev = mesh.devices.size
  batch_size = int(config.batch_size)
  accum = int(config.get("grad_accum_steps", 1))
  if batch_size % (n_dev * accum):
    raise ConfigError(
        f"config.batch_size={batch_size} does not divide across {n_dev} devices"
        + (f" x {accum} gradient-accumulation steps" if accum > 1 else "")
        + f"; use a multiple of {n_dev * accum}.")
  eval_batch = int(config.get("eval_batch_size", batch_size))
  if eval_batch % n_dev:
    raise ConfigError(f"config.eval_batch_size={eval_batch} does not divide across {n_dev} "
                      f"devices; use a multiple of {n_dev}.")
  recipe = config.get("recipe", "supervised")
  if recipe not in RECIPES:
    raise ConfigError(f"config.recipe={recipe!r}; choose one of {RECIPES}.")
  dataset = data_lib.get_dataset(config.data)
  if recipe == "simclr":
    _check_simclr(config, dataset, accum)
  elif getattr(dataset, "views", 1) != 1:
    raise ConfigError("The training data gives two views per image (config.data.views=2 or "
                      "'two_views' in preprocess_train), which only recipe='simclr' uses; set "
                      "config.recipe='simclr' or remove the second view.")
  per_epoch = dataset.num_train
  total_steps = steps_from(config, "total", examples_per_epoch=per_epoch, batch_size=batch_size)
  warmup = steps_from(config.schedule, "warmup", examples_per_epoch=per_epoch,
                      batch_size=batch_size, default=0)
  log_every = steps_from(config, "log_every", examples_per_epoch=per_epoch,
                         batch_size=batch_size, default=50)
  eval_every = steps_from(config, "eval_every", examples_per_epoch=per_epoch,
                          batch_size=batch_size, default=total_steps)
  ckpt_every = steps_from(config, "checkpoint_every", examples_per_epoch=per_epoch,
                          batch_size=batch_size, default=total_steps)

  # --- Model, optimizer, state (born sharded).
  dtype_name = config.get("dtype", "float32")
  if dtype_name not in DTYPES:
    raise ConfigError(f"config.dtype={dtype_name!r}; choose one of {sorted(DTYPES)}.")
  overrides = dict(config.model.get("overrides", None) or {})
  if recipe == "simclr":
    model = simclr_lib.build_model(config, DTYPES[dtype_name])
  else:
    model = models.create_model(config.model.name, num_classes=dataset.num_classes,
                                dtype=DTYPES[dtype_name], **overrides)
  schedule = optim.make_schedule(config.schedule, total_steps, warmup)
  tx = optim.make_optimizer(config.optimizer, schedule)
  trainable = config.get("trainable_params", None)
  if trainable:
    tx = optim.freeze_except(tx, trainable)
  ema_decay = float(config.get("ema_decay", 0.0) or 0.0)
  sample = next(dataset.eval_iterator(n_dev))["image"]
  input_shape = (1,) + sample.shape[1:]
  init_fn = functools.partial(steps_lib.create_train_state, model=model, tx=tx,
                              input_shape=input_shape, use_ema=ema_decay > 0)
  rng = jax.random.key(int(config.get("seed", 0)))
  abstract_state = jax.eval_shape(init_fn, rng)
  state_shardings = sharding_lib.state_shardings(abstract_state, mesh,
                                                 fsdp=bool(config.get("fsdp", False)))

  # --- Resume order: workdir checkpoint, then config.init_from, then scratch.
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=int(config.get("keep_checkpoints", 3)))
  meta = {"model": config.model.name, "num_classes": dataset.num_classes,
          "overrides": {k: str(v) for k, v in overrides.items()}}
  if recipe != "supervised":
    meta["recipe"] = recipe
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(
        ckpt_lib.abstract_with_shardings(abstract_state, state_shardings), meta)
    logging.info("Resumed from %s at step %d.", checkpointer.directory, int(state.step))
  else:
    state = jax.jit(init_fn, out_shardings=state_shardings)(rng)
    if config.get("init_from"):
      state = _load_init(state, config, state_shardings)
  start_step = int(jax.device_get(state.step))

  writer = metrics_lib.MetricWriter(workdir)
  if start_step == 0:
    overview = parameter_overview.get_parameter_overview(
        jax.device_get(state.params), include_stats=False)
    logging.info("Parameters of %s:\n%s", config.model.name, overview)

  # --- Jitted steps: state donated, shardings pinned.
  if recipe == "simclr":
    step_fn = functools.partial(
        simclr_lib.simclr_train_step, model=model, tx=tx, schedule=schedule,
        temperature=float(config.simclr.temperature), ema_decay=ema_decay)
  else:
    step_fn = functools.partial(
        steps_lib.train_step, model=model, tx=tx, schedule=schedule,
        num_classes=dataset.num_classes, label_smoothing=float(config.get("label_smoothing", 0.0)),
        grad_accum_steps=accum, ema_decay=ema_decay, freeze_bn=bool(config.get("freeze_bn", False)),
        trainable=trainable or None)
  train_step = jax.jit(step_fn, in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                       out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                       donate_argnums=(0,))

  if recipe == "simclr":
    # Representation monitors: kNN (every eval) and a linear probe (final eval) on frozen
    # encoder features of the memory split (the train split, eval preprocessing) and the eval split.
    memory = data_lib.get_dataset(_memory_data_config(config))
    feature_fn = jax.jit(functools.partial(simclr_lib.feature_step, model=model),
                         out_shardings=sharding_lib.replicated(mesh))

    def run_eval(state, final: bool = False) -> dict[str, float]:
      params = state.ema_params if state.ema_params is not None else state.params
      train = simclr_lib.extract_features(feature_fn, params, state.batch_stats, memory,
                                          eval_batch, mesh)
      test = simclr_lib.extract_features(feature_fn, params, state.batch_stats, dataset,
                                         eval_batch, mesh)
      return simclr_lib.representation_metrics(train, test, config.simclr, dataset.num_classes,
                                               linear=final)
  else:
    eval_fn = jax.jit(functools.partial(steps_lib.eval_step, model=model,
                                        num_classes=dataset.num_classes))

    def run_eval(state, final: bool = False) -> dict[str, float]:
      del final
      params = state.ema_params if state.ema_params is not None else state.params
      return evaluate(eval_fn, params, state.batch_stats, dataset, eval_batch, mesh)

  def save(step: int, state) -> None:
    bad = int(jax.device_get(state.first_nonfinite_step))
    if bad >= 0:
      raise NonFiniteLossError(_nonfinite_message(bad, checkpointer))
    checkpointer.save(step, state, meta)

  # --- The loop.
  progress = metrics_lib.Progress(total_steps, batch_size, start_step)
  batches = Prefetcher(
      dataset.train_iterator(batch_size, int(config.get("seed", 0)), start_step,
                             jax.process_index(), jax.process_count()),
      mesh, size=int(config.get("prefetch", 2)))
  pending: list[dict[str, jax.Array]] = []
  final: dict[str, float] = {}
  with _SignalFlag() as signals:
    try:
      for step in range(start_step + 1, total_steps + 1):
        state, step_metrics = train_step(state, next(batches))
        pending.append(step_metrics)
        if step == start_step + 1:
          jax.block_until_ready(step_metrics)  # the first step compiles: time from here
          progress.start(step)
        if step % log_every == 0 or step == total_steps:
          scalars = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
          pending.clear()
          bad = int(jax.device_get(state.first_nonfinite_step))
          if bad >= 0:
            raise NonFiniteLossError(_nonfinite_message(bad, checkpointer))
          scalars.update(progress.update(step))
          writer.write(step, scalars)
          metrics_lib.log_progress(step, total_steps, scalars)
        if step % eval_every == 0 and step != total_steps:
          writer.write(step, run_eval(state))
        if step % ckpt_every == 0 and step != total_steps:
          save(step, state)
        if _should_stop(signals.raised, step, log_every):
          save(step, state)
          checkpointer.wait()
          raise Preempted()
      final = run_eval(state, final=True)
      writer.write(total_steps, final)
      logging.info("Final eval at step %d: %s", total_steps, final)
      if checkpointer.latest_step() != total_steps:
        save(total_steps, state)
    except Preempted:
      logging.warning("Preempted at step %d; the checkpoint is saved, rerun the same command "
                      "to resume.", int(jax.device_get(state.step)))
    finally:
      batches.close()
      checkpointer.close()
      writer.close()
  return final


def _check_simclr(config: Any, dataset: Any, accum: int) -> None:
  """The SimCLR recipe's requirements on the config and the data, as ConfigErrors."""
  _require(config, "simclr.temperature")
  if float(config.simclr.temperature) <= 0:
    raise ConfigError(f"config.simclr.temperature={config.simclr.temperature} must be > 0.")
  if accum > 1:
    raise ConfigError("config.grad_accum_steps > 1 is not available with recipe='simclr': the "
                      "negatives and the BatchNorm batch would shrink to one micro-batch. Use "
                      "more devices or a smaller batch instead.")
  if config.data.get("mix"):
    raise ConfigError("config.data.mix does not apply to recipe='simclr' (no labels are used "
                      "in training); remove it.")
  if config.get("freeze_bn"):
    raise ConfigError("config.freeze_bn does not apply to recipe='simclr': contrastive "
                      "pretraining needs BatchNorm's batch statistics; remove it.")
  if config.get("trainable_params"):
    raise ConfigError("config.trainable_params is for supervised runs (e.g. a linear probe); "
                      "SimCLR pretraining trains encoder and head.")
  if getattr(dataset, "views", 1) != 2:
    raise ConfigError(
        "recipe='simclr' needs two augmented views of every training image: set "
        "config.data.views=2 (digits, with augment='simclr'), or put 'two_views' in "
        "config.data.preprocess_train (e.g. 'decode|two_views|inception_crop(224)|flip_lr|"
        "color_jitter(1.0)|random_grayscale(0.2)|value_range(0,1)').")


def _memory_data_config(config: Any) -> Any:
  """config.data for the kNN / linear-probe memory: the training split, eval preprocessing."""
  memory = config.data.copy_and_resolve_references()
  with memory.unlocked():
    memory.eval_split = (config.simclr.get("memory_split", None)
                         or config.data.get("train_split", None) or "train")
    if "views" in memory:
      memory.views = 1
    if "mix" in memory:
      memory.mix = None
  return memory


def _nonfinite_message(step: int, checkpointer) -> str:
  latest = checkpointer.latest_step()
  kept = (f"The last good checkpoint (step {latest}) is kept in {checkpointer.directory}."
          if latest is not None else "No checkpoint had been saved yet.")
  return (f"The training loss became NaN or Inf at step {step + 1}. {kept} Lower the "
          "learning rate, enable gradient clipping (config.optimizer.grad_clip_norm) or check "
          "the input data.")


def _load_init(state, config, shardings):
  """Starts from another run's workdir or from converted weights (see train/pretrained.py)."""
  from vision_jax.weights import io as weights_io  # pylint: disable=import-outside-toplevel
  init_from = config.init_from
  if os.path.isdir(os.path.join(init_from, "checkpoints")):
    manager = ckpt_lib.Checkpointer(init_from, async_save=False)
    if manager.latest_step() is None:
      raise ConfigError(f"config.init_from={init_from!r} holds no checkpoint.")
    restored = manager.restore_raw()
    manager.close()
    source = {"params": restored["params"], "batch_stats": restored.get("batch_stats") or {}}
  elif os.path.isdir(init_from):
    _, source = weights_io.load_converted(init_from)
  else:
    raise ConfigError(f"config.init_from={init_from!r} is neither a workdir with checkpoints/ "
                      "nor a directory written by tools/convert_weights.py.")
  source = pretrained.match_encoder_nesting(source, state.params, init_from)
  target = {"params": state.params, "batch_stats": state.batch_stats}
  merged, report = pretrained.merge_pretrained(
      target, source, dont_load=tuple(config.get("dont_load", None) or ("params/head/.*",)),
      # A SimCLR projection head is never zeroed: its output would be constant.
      zero_head=(bool(config.get("zero_init_head", True))
                 and config.get("recipe", "supervised") == "supervised"),
      origin=f"init_from={init_from}")
  logging.info("Loaded %s:\n%s", init_from, report.table())
  params = merged["params"]
  new = state.replace(params=params, batch_stats=merged.get("batch_stats", {}),
                      opt_state=state.opt_state,
                      ema_params=params if state.ema_params is not None else None)
  return jax.device_put(new, shardings)
