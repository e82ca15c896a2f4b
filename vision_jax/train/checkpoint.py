"""Orbax checkpoints of the train state: async, atomic, keep-N, resumable.

orbax writes each step into a temporary directory and renames it once complete,
so a crash mid-save leaves the previous checkpoints intact and is never mistaken
for a finished one. Next to the state we store a small JSON ('meta') naming the
model, so that a workdir reused for another model is refused with a clear error.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint in the workdir cannot be used; the message says why and what to do."""


class Checkpointer:
  """Saves and restores TrainState under WORKDIR/checkpoints/<step>."""

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = True) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, abstract_state: Any, expected_meta: dict[str, Any],
              step: int | None = None) -> Any:
    """Restores into the shardings of `abstract_state` after checking the model matches."""
    step = self._manager.latest_step() if step is None else step
    path = os.path.join(self.directory, str(step))
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"The checkpoint {path} cannot be read ({type(e).__name__}: {e}). It is damaged; move "
          "it out of the workdir to resume from the previous one, or use a new --workdir.") from e
    for key in ("model", "num_classes"):
      if meta.get(key) != expected_meta.get(key):
        raise CheckpointError(
            f"The workdir holds a checkpoint of a different model: {path} has {key}="
            f"{meta.get(key)!r}, this config has {key}={expected_meta.get(key)!r}. Use a new "
            "--workdir, or set config.init_from to start from those weights.")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"The checkpoint {path} does not fit this config's train state "
          f"({type(e).__name__}: {str(e)[:500]}). Was it written with other model overrides, "
          "optimizer or EMA settings? Use a new --workdir, or move the checkpoint away.") from e
    return restored["state"]

  def restore_raw(self, step: int | None = None) -> Any:
    """The latest (or given) state as host arrays, without a target structure."""
    step = self._manager.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)
