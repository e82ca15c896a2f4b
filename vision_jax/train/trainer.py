"""The training loop. It reads top to bottom: setup, state, resume, loop, finish.

`train_and_evaluate(config, workdir)` is the only place where models, data and
the optimizer meet. What differs between kinds of run (the model built, the
step, the evaluation, what `init_from` zeroes) comes from the `Recipe` named by
`config.recipe` (vision_jax/train/recipes/); the loop itself has no recipe
branches. Everything inside the loop is asynchronous: metrics stay on the
device until a log step, batches are prefetched to the devices by a thread,
and the state is donated to the jitted step.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import parameter_overview

from vision_jax import config_check
from vision_jax import data as data_lib
from vision_jax import environment
from vision_jax.data import report as data_report
from vision_jax.config_base import DTYPES, with_defaults
from vision_jax.config_util import ConfigError, durations, require_fields
from vision_jax.train import checkpoint as ckpt_lib
from vision_jax.train import metrics as metrics_lib
from vision_jax.train import optim
from vision_jax.train import pretrained
from vision_jax.train import recipes
from vision_jax.train import sharding as sharding_lib
from vision_jax.train import steps as steps_lib

GEOMETRY_CHECK_BELOW = 128  # input sides from which check_input_geometry is skipped


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the message names the step."""


class Preempted(Exception):
  """Internal: SIGTERM/SIGINT arrived; the state was saved."""


# ---------------------------------------------------------------------------
# Pieces the loop uses; module-level so that tests and tools can reuse them.
# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class RunSetup:
  """Everything a run builds from its config before it touches the workdir.

  `train_and_evaluate` trains with it; `check_config` traces one step with it.
  """

  config: Any
  recipe: recipes.Recipe
  mesh: Any
  dataset: Any
  steps: dict[str, int]
  eval_batch: int
  model: Any
  schedule: Any
  tx: Any
  init_fn: Any
  rng: jax.Array
  abstract_state: Any
  state_shardings: Any


def setup_run(config: Any, validated: bool = False) -> RunSetup:
  """Validates `config` and builds mesh, data, model, optimizer and the abstract sharded state.

  Every mistake in the config is a ConfigError / DatasetError / ModelError here, before
  any workdir is written or any program compiled. `validated`: the caller already ran
  `config_check.validate` (the command line does, before touching a device), so it is
  not run twice.
  """
  config = with_defaults(config)
  if not validated:
    config_check.validate(config)  # every field named with its value, before any work
  require_fields(config, "model.name", "data.name", "batch_size", "schedule.base_lr",
                 "optimizer.name")
  recipe = recipes.get_recipe(config.recipe)

  # --- Devices and data.
  mesh = sharding_lib.make_mesh(config.num_devices)
  n_dev = mesh.devices.size
  batch_size = int(config.batch_size)
  accum = int(config.grad_accum_steps)
  if batch_size % (n_dev * accum):
    raise ConfigError(
        f"config.batch_size={batch_size} does not divide across {n_dev} devices"
        + (f" x {accum} gradient-accumulation steps" if accum > 1 else "")
        + f"; use a multiple of {n_dev * accum}.")
  eval_batch = int(config.eval_batch_size or batch_size)
  if eval_batch % n_dev:
    raise ConfigError(f"config.eval_batch_size={eval_batch} does not divide across {n_dev} "
                      f"devices; use a multiple of {n_dev}.")
  dataset = data_lib.get_dataset(config.data)
  recipe.check(config, dataset)
  # Degenerate data, leakage between splits, too small a split (config.data.checks).
  data_report.check_before_training(dataset, config.data)
  data_report.check_batch_size(dataset.num_train, batch_size, jax.process_count())
  steps = durations(config, dataset.num_train)
  config_check.check_lengths(steps["total"], steps["warmup"])

  # --- Model, optimizer, state (shapes only; the run creates it born sharded).
  if config.dtype not in DTYPES:  # a config that skipped validation
    raise ConfigError(f"config.dtype={config.dtype!r}; choose one of {sorted(DTYPES)}.")
  model = recipe.build_model(config, dataset, getattr(jnp, config.dtype))  # jnp.float32, ...
  schedule = optim.make_schedule(config.schedule, steps["total"], steps["warmup"])
  tx = optim.make_optimizer(config.optimizer, schedule)
  if config.trainable_params:
    tx = optim.freeze_except(tx, config.trainable_params)
  sample = next(dataset.eval_iterator(n_dev))["image"]
  input_shape = (1,) + sample.shape[1:]
  init_fn = functools.partial(steps_lib.create_train_state, model=model, tx=tx,
                              input_shape=input_shape, use_ema=float(config.ema_decay or 0) > 0)
  rng = jax.random.key(int(config.seed))
  try:
    abstract_state = jax.eval_shape(init_fn, rng)
  except (TypeError, ValueError, ZeroDivisionError) as e:  # e.g. a ViT built for another size
    raise _input_error(config.model.name, input_shape, e) from None
  # Inputs of 128 pixels or more survive every registered model (total strides are at most 32);
  # below, one abstract forward pass looks for a layer left with no pixel.
  if recipe.name == "supervised" and min(input_shape[1:3]) < GEOMETRY_CHECK_BELOW:
    check_input_geometry(model, {"params": abstract_state.params,
                                 "batch_stats": abstract_state.batch_stats},
                         input_shape, config.model.name)
  state_shardings = sharding_lib.state_shardings(abstract_state, mesh, fsdp=bool(config.fsdp))
  return RunSetup(config=config, recipe=recipe, mesh=mesh, dataset=dataset, steps=steps,
                  eval_batch=eval_batch, model=model, schedule=schedule, tx=tx, init_fn=init_fn,
                  rng=rng, abstract_state=abstract_state, state_shardings=state_shardings)


def _input_error(model_name: str, input_shape: tuple[int, ...], error: Exception):
  return data_lib.DataCheckError(
      f"{model_name} cannot run on images of {tuple(input_shape[1:])} (height, width, "
      f"channels): its forward pass fails ({type(error).__name__}: "
      f"{str(error).splitlines()[0][:300]}). Give the size the model expects (a resize(...) or "
      "crop in config.data.preprocess_*, or config.data.image_size).")


def check_input_geometry(model: Any, variables: Any, input_shape: tuple[int, ...],
                         model_name: str) -> None:
  """DataCheckError when the model's downsampling leaves no pixel of `input_shape`.

  Abstract: one traced forward pass (`jax.eval_shape`) with every intermediate
  output captured; nothing is compiled. `variables` may be shapes only.
  """
  def forward(variables, images):
    _, state = model.apply(variables, images, train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    return state["intermediates"]

  try:
    captured = jax.eval_shape(forward, variables, jax.ShapeDtypeStruct(input_shape, jnp.float32))
  except (TypeError, ValueError, ZeroDivisionError) as e:
    raise _input_error(model_name, input_shape, e) from None

  def name(path):
    keys = [str(getattr(k, "key", "")) for k in path]
    return "/".join(k for k in keys if k and k != "__call__") or "output"

  shapes = {name(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(captured)}
  data_report.check_geometry(shapes, input_shape, model_name)


def check_config(config: Any) -> dict[str, Any]:
  """Checks that `config` can train, without compiling or running anything heavy.

  Builds everything `train_and_evaluate` builds, draws one real training batch and
  one evaluation batch through the data pipeline, and traces the recipe's train
  step on them abstractly (`jax.eval_shape`): a wrong field, a model override the
  architecture lacks, a preprocessing string that does not fit the model, or a
  step that does not trace all fail here, in seconds, with the error the real run
  would give.

  Returns:
    {'num_params', 'total_steps', 'train_batch', 'local_batch', 'eval_batch', 'metrics'}: the
    parameter count, the run length in steps, the shapes of the image batches and
    the names of the step's metrics.
  """
  run = setup_run(config)
  config = run.config
  train = next(iter(run.dataset.train_iterator(int(config.batch_size), int(config.seed))))
  evaluation = next(iter(run.dataset.eval_iterator(run.eval_batch)))
  step_fn = run.recipe.train_step(config, run.dataset, run.model, run.tx, run.schedule)
  abstract_batch = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), train)
  new_state, metrics = jax.eval_shape(step_fn, run.abstract_state, abstract_batch)
  if jax.tree_util.tree_structure(new_state) != jax.tree_util.tree_structure(run.abstract_state):
    raise AssertionError("the train step changed the structure of the train state")
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
      run.abstract_state.params))
  return {"num_params": num_params, "total_steps": run.steps["total"],
          "train_batch": tuple(np.shape(train["image"])),
          "local_batch": tuple(np.shape(train["local"])) if "local" in train else None,
          "eval_batch": tuple(np.shape(evaluation["image"])), "metrics": sorted(metrics)}


def train_and_evaluate(config: Any, workdir: str, validated: bool = False) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns final eval metrics.

  `validated`: `config_check.validate(config)` already ran (see `setup_run`).
  """
  run = setup_run(config, validated=validated)
  config, recipe, mesh, dataset = run.config, run.recipe, run.mesh, run.dataset
  model, schedule, tx, init_fn, rng = run.model, run.schedule, run.tx, run.init_fn, run.rng
  abstract_state, state_shardings = run.abstract_state, run.state_shardings
  steps, total_steps, eval_batch = run.steps, run.steps["total"], run.eval_batch
  batch_size = int(config.batch_size)
  os.makedirs(workdir, exist_ok=True)

  # What this run runs on (code, packages, devices, CPU, XLA flags, the resolved config).
  environment.write_environment(workdir, config)

  # --- Resume order: workdir checkpoint, then config.init_from, then scratch.
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=int(config.keep_checkpoints),
                                      lock=jax.process_index() == 0)
  meta = {"model": config.model.name, "num_classes": dataset.num_classes,
          "overrides": {k: str(v) for k, v in dict(config.model.overrides or {}).items()}}
  if recipe.checkpoint_tag:
    meta["recipe"] = recipe.checkpoint_tag
  try:  # damaged steps are moved aside (see train/checkpoint.py)
    state = checkpointer.restore_newest_readable(
        ckpt_lib.abstract_with_shardings(abstract_state, state_shardings), meta,
        on_corrupt=config.on_corrupt_checkpoint)
  except Exception:
    checkpointer.close()  # releases the workdir lock
    raise
  if state is not None:
    logging.info("Resumed from %s at step %d.", checkpointer.directory, int(state.step))
  else:
    state = steps_lib.init_state(init_fn, rng, state_shardings)
    if config.init_from:
      state = _load_init(state, config, recipe, state_shardings)
  start_step = int(jax.device_get(state.step))

  writer = metrics_lib.MetricWriter(workdir)
  if start_step == 0:
    overview = parameter_overview.get_parameter_overview(
        jax.device_get(state.params), include_stats=False)
    logging.info("Parameters of %s:\n%s", config.model.name, overview)

  # --- Jitted step (state donated, shardings pinned) and the recipe's evaluation.
  train_step = jax.jit(recipe.train_step(config, dataset, model, tx, schedule),
                       in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                       out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                       donate_argnums=(0,))
  run_eval = recipe.make_eval(config, dataset, model, mesh, eval_batch)

  def save(step: int, state) -> None:
    _raise_if_nonfinite(state, checkpointer)
    checkpointer.save(step, state, meta)

  # --- The loop.
  log_every, eval_every, ckpt_every = steps["log_every"], steps["eval_every"], steps["checkpoint_every"]
  progress = metrics_lib.Progress(total_steps, batch_size, start_step)
  batches = sharding_lib.Prefetcher(
      dataset.train_iterator(batch_size, int(config.seed), start_step,
                             jax.process_index(), jax.process_count()),
      mesh, size=int(config.prefetch))
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
          _raise_if_nonfinite(state, checkpointer)
          scalars.update(progress.update(step))
          writer.write(step, scalars)
          metrics_lib.log_progress(step, total_steps, scalars)
        if step % eval_every == 0 and step != total_steps:
          writer.write(step, run_eval(state), console=True)
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


def _raise_if_nonfinite(state, checkpointer) -> None:
  """NonFiniteLossError if any step so far had a NaN/Inf loss (names the step, keeps checkpoints)."""
  bad = int(jax.device_get(state.first_nonfinite_step))
  if bad >= 0:
    raise NonFiniteLossError(_nonfinite_message(bad, checkpointer))


def _nonfinite_message(step: int, checkpointer) -> str:
  latest = checkpointer.latest_step()
  kept = (f"The last good checkpoint (step {latest}) is kept in {checkpointer.directory}."
          if latest is not None else "No checkpoint had been saved yet.")
  return (f"The training loss became NaN or Inf at step {step + 1}. {kept} Lower the "
          "learning rate, enable gradient clipping (config.optimizer.grad_clip_norm) or check "
          "the input data.")


def _load_init(state, config, recipe, shardings):
  """Starts from another run's workdir, converted weights or a pretrained name such as
  timm:TAG (see train/pretrained.py)."""
  from vision_jax.weights import io as weights_io  # pylint: disable=import-outside-toplevel
  from vision_jax.weights.hub import is_pretrained_spec  # pylint: disable=import-outside-toplevel
  init_from = config.init_from
  if is_pretrained_spec(init_from) and not os.path.isdir(init_from):  # timm:TAG, hf-hub:...
    source = pretrained.pretrained_variables(init_from, config.model.name,
                                             dict(config.model.overrides or {}))
  elif os.path.isdir(os.path.join(init_from, ckpt_lib.CHECKPOINT_DIR)):
    restored = ckpt_lib.open_latest(init_from)
    if restored is None:
      raise ConfigError(f"config.init_from={init_from!r} holds no checkpoint.")
    source = {"params": restored["params"], "batch_stats": restored.get("batch_stats") or {}}
  elif os.path.isdir(init_from):
    _, source = weights_io.load_converted(init_from)
  else:
    raise ConfigError(f"config.init_from={init_from!r} is neither a workdir with checkpoints/ "
                      "nor a directory written by tools/convert_weights.py.")
  source = pretrained.match_encoder_nesting(source, state.params, init_from)
  target = {"params": state.params, "batch_stats": state.batch_stats}
  merged, report = pretrained.merge_pretrained(
      target, source, dont_load=tuple(config.dont_load or ()),
      zero_head=bool(config.zero_init_head) and recipe.zero_head_on_load,
      origin=f"init_from={init_from}")
  logging.info("Loaded %s:\n%s", init_from, report.table())
  params = merged["params"]
  new = state.replace(params=params, batch_stats=merged.get("batch_stats", {}),
                      opt_state=state.opt_state,
                      ema_params=params if state.ema_params is not None else None)
  return jax.device_put(new, shardings)
