"""Orbax checkpoints of the train state: async, atomic, keep-N, resumable, damage-tolerant.

orbax writes each step into a temporary directory and renames it once complete,
so a crash or a SIGKILL mid-save leaves the previous checkpoints intact and is
never mistaken for a finished one. Next to the state we store a small JSON
('meta') naming the model, so that a workdir reused for another model is refused
with a clear error.

What can go wrong, and what happens:
  * A checkpoint that cannot be read (truncated or garbled files, a missing
    part) raises `CorruptCheckpointError` naming the step and the file; this is
    told apart from `CheckpointMismatchError` (a checkpoint of another model,
    optimizer or EMA setting), which keeps its own message.
  * `restore_newest_readable` moves each damaged step aside to
    WORKDIR/checkpoints_corrupt/STEP (never deletes it) and resumes from the
    newest readable one with a warning. When none is left it stops, unless the
    caller allows a restart (config.on_corrupt_checkpoint='restart').
  * A full disk (or any OSError) during a save raises `CheckpointSaveError`
    naming the directory, its filesystem and its free space; the previous
    checkpoints stay usable.
  * `WorkdirLock`: a second run on the same workdir refuses to start, naming the
    PID that holds it; a lock left by a dead process (even after SIGKILL) is
    taken over.
  * A failed restore leaves nothing behind: orbax's reads of the other arrays
    are allowed to finish before their event loop is closed (see
    `_run_until_settled`), so no traceback is printed after the fault is handled.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from typing import Any, Coroutine

import jax
import orbax.checkpoint as ocp
from absl import logging

from vision_jax import console

CHECKPOINT_DIR = "checkpoints"  # WORKDIR/checkpoints/<step>
CORRUPT_DIR = "checkpoints_corrupt"
LOCK_FILE = "vision_jax.lock"
ON_CORRUPT = ("stop", "restart")


class CheckpointError(RuntimeError):
  """A checkpoint in the workdir cannot be used; the message says why and what to do."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint's files cannot be read: truncated, garbled or missing.

  Attributes:
    step: the step of the damaged checkpoint.
    path: the file (or directory) that could not be read.
  """

  def __init__(self, message: str, step: int, path: str):
    super().__init__(message)
    self.step = step
    self.path = path


class CheckpointMismatchError(CheckpointError):
  """A readable checkpoint of another model, optimizer or EMA setting."""


class CheckpointSaveError(CheckpointError):
  """A save failed (a full disk, a read-only or vanished directory)."""


class WorkdirLockedError(CheckpointError):
  """Another live process is running in this workdir."""


# ---------------------------------------------------------------------------
# The workdir lock.
# ---------------------------------------------------------------------------
_HELD: dict[str, tuple[int, int]] = {}  # lock path -> (fd, holders in this process)


class WorkdirLock:
  """An exclusive lock on a workdir, held by one process (re-entrant within it).

  The lock is a `flock` on WORKDIR/vision_jax.lock, whose content names the
  holder (pid, host, start time) for the message; a release empties it. The
  kernel drops a flock when its process dies, however it dies, so a lock file
  left by a dead process is simply taken over (with a warning naming it). (flock is per host: on a filesystem shared by several
  hosts it does not exclude runs started on another host.)
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._held = False

  def acquire(self) -> "WorkdirLock":
    if self._held:
      return self
    if self.path in _HELD:  # this process already runs here (a run that ended with an error)
      fd, count = _HELD[self.path]
      _HELD[self.path] = (fd, count + 1)
      self._held = True
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read_holder(fd)
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      raise WorkdirLockedError(
          f"The workdir {os.path.dirname(self.path)} is in use by another run: process "
          f"{holder.get('pid', '?')} on {holder.get('host', 'this host')} (started "
          f"{holder.get('started', '?')}) holds {self.path}. Wait for it to finish or stop it "
          "(kill PID), or use another --workdir.") from None
    previous = _read_holder(fd)
    if previous.get("pid") and previous.get("pid") != os.getpid():
      logging.warning("Taking over the lock of %s from process %s, which is no longer running.",
                      self.path, previous["pid"])
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    _HELD[self.path] = (fd, 1)
    self._held = True
    return self

  def release(self) -> None:
    if not self._held:
      return
    self._held = False
    fd, count = _HELD[self.path]
    if count > 1:
      _HELD[self.path] = (fd, count - 1)
      return
    del _HELD[self.path]
    # A run that ends normally leaves an empty file: only the lock of a process that died
    # holding it names a holder, which the next run reports taking over.
    try:
      os.ftruncate(fd, 0)
    finally:
      os.close(fd)  # drops the flock; the file stays

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read_holder(fd: int) -> dict[str, Any]:
  try:  # the first JSON object (a writer may have left a longer one behind)
    holder = json.JSONDecoder().raw_decode(os.pread(fd, 4096, 0).decode().strip() or "{}")[0]
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


# ---------------------------------------------------------------------------
# orbax's event loops: nothing left running when one is closed.
# ---------------------------------------------------------------------------
_SETTLE_TIMEOUT_S = 120.0


def _run_until_settled(coro: Coroutine[Any, Any, Any]) -> Any:
  """Runs `coro` in a fresh event loop, as orbax does, and closes the loop only once every
  task that ran in it has finished.

  orbax (0.12) runs each synchronous restore or save in a new event loop and
  closes that loop as soon as the main coroutine returns or raises. When one
  array of a damaged checkpoint cannot be read, `asyncio.gather` raises at once
  while the reads of the other arrays are still in flight, and the loop is
  closed under them. Each such read later surfaces where no `except` can catch
  it: TensorStore completes it and calls back into the closed loop ("Exception
  ignored ... RuntimeError: Event loop is closed"); the garbage collector closes
  the suspended coroutine, which orbax turns into an exception ("Exception
  ignored in: <coroutine object _read_array_index_and_device_put>", with the
  TensorStore spec); asyncio reports "Task exception was never retrieved". A
  damaged checkpoint of the digits state printed over 200 such tracebacks.

  Here the loop first lets the pending tasks finish (the remaining reads of one
  checkpoint: at most what a whole restore costs), cancels any still running
  after _SETTLE_TIMEOUT_S (a stuck filesystem), and runs their completion
  callbacks, which mark their errors as seen. asyncio.run settles a loop the
  same way; orbax stopped using it because its clean-up walks every task of
  every thread, and this one looks at the tasks of its own loop only.
  """
  loop = asyncio.new_event_loop()
  try:
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(coro)
  finally:
    try:
      _settle(loop)
    finally:
      asyncio.set_event_loop(None)
      loop.close()


def _settle(loop: asyncio.AbstractEventLoop, timeout_s: float | None = None) -> None:
  """Runs `loop` until it has no pending task (cancelling what is left after `timeout_s`)."""
  deadline = time.monotonic() + (_SETTLE_TIMEOUT_S if timeout_s is None else timeout_s)
  while True:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
      break
    left = deadline - time.monotonic()
    if left <= 0:
      for task in pending:
        task.cancel()
      loop.run_until_complete(asyncio.wait(pending, timeout=5.0))
      break
    loop.run_until_complete(asyncio.wait(pending, timeout=left))
  # One more pass: the done-callbacks of the last tasks (gather's marks their errors as
  # retrieved), then async generators, as asyncio.run does.
  loop.run_until_complete(asyncio.sleep(0))
  loop.run_until_complete(loop.shutdown_asyncgens())


def _settle_orbax_event_loops() -> None:
  """Makes orbax run its synchronous calls with `_run_until_settled`.

  orbax's run_sync looks `_run_sync_via_new_loop` up at each call, so replacing
  it is enough. An orbax without it (older ones used asyncio.run, which
  settles) is left alone; tests/test_faults.py fails if the tracebacks return.
  """
  try:
    from orbax.checkpoint._src import asyncio_utils  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  if hasattr(asyncio_utils, "_run_sync_via_new_loop"):
    asyncio_utils._run_sync_via_new_loop = _run_until_settled  # pylint: disable=protected-access


_settle_orbax_event_loops()


# ---------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------
def _state_handler() -> ocp.StandardCheckpointHandler:
  """orbax's StandardCheckpointHandler, without replica-parallel saving on the CPU.

  By default orbax splits each replicated array into one slice per replica, so
  that every device copies a part of it to the host. On the CPU there is no
  device-to-host copy to share, and each slice is a program compiled per array
  shape and device: a data-parallel state on 8 (simulated) devices cost about
  a hundred compilations and 7 CPU seconds at the first save of every process.
  The files written are the same either way; accelerators keep orbax's default.
  (orbax matches handlers to arguments by exact class, hence no subclass.)
  """
  handler = ocp.StandardCheckpointHandler()
  if jax.default_backend() != "cpu" or not hasattr(handler, "_impl"):
    return handler
  types = ocp.type_handlers
  default = types.get_type_handler(jax.Array)
  array = types.ArrayHandler(use_replica_parallel=False, array_metadata_store=getattr(
      default, "_array_metadata_store", None))
  registry = types.create_type_handler_registry(*(
      (ty, array if ty is jax.Array else types.get_type_handler(ty))
      for ty in types.supported_types()))
  handler._impl = ocp.PyTreeCheckpointHandler(  # pylint: disable=protected-access
      save_concurrent_gb=96, restore_concurrent_gb=96, type_handler_registry=registry)
  return handler


class Checkpointer:
  """Saves and restores TrainState under WORKDIR/checkpoints/<step>.

  Args:
    workdir: the run's directory.
    max_to_keep: checkpoints kept (older ones are deleted by orbax).
    async_save: write in a background thread.
    lock: hold `WorkdirLock(workdir)` until `close()` (the trainer's own workdir;
      not a workdir that is only read, such as config.init_from).
  """

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True,
               lock: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    self._lock = WorkdirLock(self.workdir).acquire() if lock else None
    self._options = dict(max_to_keep=max_to_keep, async_save=async_save)
    self._last_save: int | None = None
    try:
      if lock:
        self._remove_unfinished_saves()
      self._manager = self._open_manager()
    except Exception:
      self._release_lock()
      raise

  def _open_manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self._options["max_to_keep"], create=True,
            enable_async_checkpointing=self._options["async_save"]),
        item_handlers={"state": _state_handler(), "meta": ocp.JsonCheckpointHandler()})

  def _remove_unfinished_saves(self) -> None:
    """Deletes what a save interrupted by a kill left (STEP.orbax-checkpoint-tmp*), saying so.

    These are never read as checkpoints; orbax would delete one when it saves the
    same step again, with a warning of its own about an "already existing
    temporary directory". Only the run that holds the workdir's lock calls this,
    so no save of another run is in flight.
    """
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    unfinished = sorted((int(m.group(1)), name) for name in os.listdir(self.directory)
                        if (m := re.match(r"^(\d+)\.orbax-checkpoint-tmp", name)))
    if not unfinished:
      return
    for _, name in unfinished:
      shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    logging.warning("Deleted the unfinished save(s) of step(s) %s in %s, left by a run stopped "
                    "while saving; the finished checkpoints are intact.",
                    [step for step, _ in unfinished], self.directory)

  def _release_lock(self) -> None:
    if self._lock is not None:
      self._lock.release()
      self._lock = None

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  # --- Saving.
  def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = True) -> None:
    """Starts saving `step` (asynchronously); errors of this or the previous save raise
    CheckpointSaveError."""
    with self._save_errors(step):
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)
    self._last_save = step

  def wait(self) -> None:
    with self._save_errors(self._last_save):
      self._manager.wait_until_finished()

  def close(self) -> None:
    try:
      with self._save_errors(self._last_save):
        self._manager.wait_until_finished()
      self._manager.close()
    finally:
      self._release_lock()

  def _save_errors(self, step: int | None):
    return _SaveErrors(self, step)

  def save_error(self, step: int | None, error: BaseException) -> CheckpointSaveError:
    """The message for a save that failed with `error` (an OSError somewhere in its chain)."""
    os_error = _find_os_error(error)
    kept = [s for s in self.all_steps() if step is None or s < step]
    previous = (f"The previous checkpoint (step {kept[-1]}) is intact; rerunning resumes from "
                "it." if kept else "No earlier checkpoint was saved.")
    what = f"step {step}" if step is not None else "a checkpoint"
    if os_error is not None and os_error.errno in (errno.ENOSPC, errno.EDQUOT):
      return CheckpointSaveError(
          f"No space left on the disk while saving {what} to {self.directory} "
          f"({_disk_report(self.directory)}). {previous} Free space there, or lower "
          "config.keep_checkpoints, or use a --workdir on a larger disk.")
    detail = f"{type(os_error or error).__name__}: {os_error or error}"
    return CheckpointSaveError(f"Saving {what} to {self.directory} failed ({detail}). {previous} "
                               "Check that the directory is writable and mounted.")

  # --- Restoring.
  def restore(self, abstract_state: Any, expected_meta: dict[str, Any],
              step: int | None = None) -> Any:
    """Restores into the shardings of `abstract_state` after checking the model matches.

    Raises:
      CorruptCheckpointError: the checkpoint's files cannot be read.
      CheckpointMismatchError: a readable checkpoint of another model or train state.
    """
    step = self._manager.latest_step() if step is None else step
    path = os.path.join(self.directory, str(step))
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      if not isinstance(meta, dict):
        raise ValueError(f"the meta item holds {type(meta).__name__}, not a JSON object")
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, e, os.path.join(path, "meta")) from e
    for key in ("model", "num_classes"):
      if meta.get(key) != expected_meta.get(key):
        raise CheckpointMismatchError(
            f"The workdir holds a checkpoint of a different model: {path} has {key}="
            f"{meta.get(key)!r}, this config has {key}={expected_meta.get(key)!r}. Use a new "
            "--workdir, or set config.init_from to start from those weights.")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # pylint: disable=broad-except
      raise self._diagnose(step, e, abstract_state) from e
    return restored["state"]

  def restore_newest_readable(self, abstract_state: Any, expected_meta: dict[str, Any],
                              on_corrupt: str = "stop") -> Any | None:
    """The newest checkpoint that can be read; damaged ones are moved aside.

    Args:
      abstract_state: the target structure and shardings.
      expected_meta: the model and classes this run expects.
      on_corrupt: when every checkpoint is damaged, 'stop' raises, 'restart'
        returns None (the caller starts from config.init_from or scratch).
    Returns:
      The restored state, or None when the workdir holds no (readable) checkpoint.
    Raises:
      CorruptCheckpointError: every checkpoint is damaged and on_corrupt='stop'.
      CheckpointMismatchError: a readable checkpoint of another model or state.
    """
    if on_corrupt not in ON_CORRUPT:
      raise ValueError(f"on_corrupt={on_corrupt!r}; choose one of {ON_CORRUPT}.")
    damaged: list[CorruptCheckpointError] = []
    for step in reversed(self.all_steps()):
      try:
        state = self.restore(abstract_state, expected_meta, step)
      except CorruptCheckpointError as e:
        console.DETAIL.debug("Why the checkpoint at step %d cannot be read:", step, exc_info=e)
        moved = self.move_aside(step)
        logging.warning("%s Moved it to %s; trying the previous checkpoint.", e, moved)
        damaged.append(e)
        continue
      if damaged:
        logging.warning("Resumed from step %d: the newer checkpoint(s) at step(s) %s were damaged "
                        "and are kept in %s.", step, [d.step for d in damaged],
                        os.path.join(self.workdir, CORRUPT_DIR))
      return state
    if not damaged:
      return None
    if on_corrupt == "restart":
      logging.warning("No readable checkpoint is left in %s (damaged: steps %s, kept in %s); "
                      "starting again from config.init_from or scratch, as "
                      "config.on_corrupt_checkpoint='restart' asks.", self.directory,
                      [d.step for d in damaged], os.path.join(self.workdir, CORRUPT_DIR))
      return None
    first = damaged[0]
    raise CorruptCheckpointError(
        f"{first} No readable checkpoint is left: the damaged step(s) {[d.step for d in damaged]} "
        f"were moved to {os.path.join(self.workdir, CORRUPT_DIR)}. Set "
        "--config.on_corrupt_checkpoint=restart to start again from config.init_from or "
        "scratch, or put back a good copy of the checkpoints.", first.step, first.path)

  def move_aside(self, step: int) -> str:
    """Moves checkpoints/STEP to checkpoints_corrupt/STEP (never deletes); returns the target."""
    source = os.path.join(self.directory, str(step))
    target_dir = os.path.join(self.workdir, CORRUPT_DIR)
    target = os.path.join(target_dir, str(step))
    if jax.process_index() == 0 and os.path.exists(source):
      os.makedirs(target_dir, exist_ok=True)
      suffix = 1
      while os.path.exists(target):  # damaged twice at the same step: keep both
        target = os.path.join(target_dir, f"{step}.{suffix}")
        suffix += 1
      os.rename(source, target)
    # orbax caches the list of steps: reopen so that the moved step is gone.
    self._manager.close()
    self._manager = self._open_manager()
    return target

  def _corrupt(self, step: int, error: BaseException, default_path: str) -> CorruptCheckpointError:
    # orbax wraps TensorStore's error (which names the file and what is wrong with it) in
    # a generic one that carries a dump of the TensorStore spec: report the innermost.
    cause = _root_cause(error)
    path = _file_named(cause) or _file_named(error) or default_path
    reason = _first_line(cause)
    return CorruptCheckpointError(
        f"The checkpoint at step {step} is unreadable or corrupt: {path} cannot be read "
        f"({type(cause).__name__}: {reason}).", step, path)

  def _diagnose(self, step: int, error: BaseException, abstract_state: Any) -> CheckpointError:
    """Damage (unreadable files) or a different train state, for a restore that failed."""
    state_dir = os.path.join(self.directory, str(step), "state")
    try:
      from etils import epath  # pylint: disable=import-outside-toplevel
      stored = ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir))
      stored_leaves = _leaf_shapes(stored)
    except Exception as e:  # pylint: disable=broad-except
      return self._corrupt(step, e if _file_named(e) else error, state_dir)
    differences = _differences(stored_leaves, _leaf_shapes(abstract_state))
    if not differences:  # the same structure, so the data itself cannot be read
      return self._corrupt(step, error, state_dir)
    return CheckpointMismatchError(
        f"The checkpoint {os.path.join(self.directory, str(step))} does not fit this config's "
        f"train state: {'; '.join(differences)}. Was it written with other model overrides, "
        "optimizer or EMA settings? Use a new --workdir, or set config.init_from to start from "
        "its weights.")

  def restore_raw(self, step: int | None = None) -> Any:
    """The latest (or given) state as host arrays, without a target structure."""
    step = self._manager.latest_step() if step is None else step
    try:
      return self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))["state"]
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, e, os.path.join(self.directory, str(step), "state")) from e


class _SaveErrors:
  """Turns an OSError (or an orbax error caused by one) during a save into CheckpointSaveError."""

  def __init__(self, checkpointer: Checkpointer, step: int | None):
    self._checkpointer = checkpointer
    self._step = step

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc is None or isinstance(exc, CheckpointError) or _find_os_error(exc) is None:
      return False
    raise self._checkpointer.save_error(self._step, exc) from exc


def _find_os_error(error: BaseException | None) -> OSError | None:
  """The OSError in `error`'s chain (orbax wraps errors of its background thread)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno is not None:
      return error
    match = re.search(r"\[Errno (\d+)\]", str(error))
    if match:
      return OSError(int(match.group(1)), os.strerror(int(match.group(1))))
    error = error.__cause__ or error.__context__
  return None


def _disk_report(directory: str) -> str:
  path = directory
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    usage = shutil.disk_usage(path)
  except OSError:
    return "free space unknown"
  mount = os.path.realpath(path)
  while not os.path.ismount(mount):
    mount = os.path.dirname(mount)
  gib = 1024 ** 3
  return f"filesystem {mount}: {usage.free / gib:.2f} GiB free of {usage.total / gib:.2f} GiB"


_FILE_PATTERNS = (r'local file "([^"]+)"', r"does not exist at (\S+?)\.?$", r"'(/[^']+)'",
                  r'"(/[^"]+)"')


def _file_named(error: BaseException) -> str | None:
  """The most specific file path that an orbax/TensorStore error message mentions."""
  text = str(error)
  if isinstance(error, OSError) and getattr(error, "filename", None):
    return str(error.filename)
  for pattern in _FILE_PATTERNS:
    found = re.findall(pattern, text, flags=re.MULTILINE)
    if found:
      return found[-1].rstrip("/")
  return None


def _root_cause(error: BaseException) -> BaseException:
  """The innermost exception of `error`'s explicit (`raise ... from`) chain."""
  seen = {id(error)}
  while error.__cause__ is not None and id(error.__cause__) not in seen:
    error = error.__cause__
    seen.add(id(error))
  return error


def _first_line(error: BaseException, limit: int = 300) -> str:
  line = next((l.strip() for l in str(error).splitlines() if l.strip()), type(error).__name__)
  return line if len(line) <= limit else line[:limit] + "..."


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _stored_shape(leaf: Any) -> tuple[int, ...]:
  """The shape an array has in a checkpoint: a typed PRNG key is stored as its key data
  (a key of shape () is a (2,) uint32 array for threefry)."""
  shape = tuple(getattr(leaf, "shape", ()) or ())
  dtype = getattr(leaf, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return tuple(jax.eval_shape(jax.random.key_data,
                                jax.ShapeDtypeStruct(shape, dtype)).shape)
  return shape


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'/'-joined leaf path -> stored shape, for arrays (stored metadata or abstract state)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): _stored_shape(leaf)
          for path, leaf in leaves if hasattr(leaf, "shape")}


def _differences(stored: dict[str, tuple], expected: dict[str, tuple], limit: int = 4) -> list[str]:
  """What differs between two leaf-shape maps, compared by path and, as a fallback, by shapes."""
  if sorted(stored.values()) == sorted(expected.values()):
    return []  # same arrays (paths may be spelled differently by the serializer)
  out = []
  for path in sorted(set(stored) | set(expected)):
    if path not in expected:
      out.append(f"the checkpoint has {path} {stored[path]}, this state does not")
    elif path not in stored:
      out.append(f"this state has {path} {expected[path]}, the checkpoint does not")
    elif stored[path] != expected[path]:
      out.append(f"{path} is {stored[path]} in the checkpoint, {expected[path]} here")
  if not out:
    out.append(f"the checkpoint holds {len(stored)} arrays, this state {len(expected)}")
  more = f" (and {len(out) - limit} more)" if len(out) > limit else ""
  return out[:limit] + ([more.strip()] if more else [])


def open_latest(workdir: str) -> Any | None:
  """The newest checkpoint of `workdir` as a raw tree of arrays; None when it holds none.

  The one reader of another run's checkpoint: `init_from` of the trainer and
  `inference.load_model` both use it. Nothing is locked or moved aside.
  """
  if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    return None
  manager = Checkpointer(workdir, async_save=False)
  try:
    if manager.latest_step() is None:
      return None
    return manager.restore_raw()
  finally:
    manager.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)
