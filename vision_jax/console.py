"""What the console shows: the project's own lines and every warning; the rest goes to a log file.

A run's console is read by a person deciding whether the run is healthy, so it
carries the project's progress lines, its warnings and errors, and the warnings
of the libraries (JAX's notes about the user's setup among them). Everything
else that the libraries say goes to WORKDIR/run.log, where a bug report can
find it; `--verbose` (or VISION_JAX_VERBOSE=1) puts it all back on the console.

The noise comes from three places, and each is handled where it starts:

1. Native start-up lines. TensorFlow's C++ core logs through absl before absl
   is initialised, so `import tensorflow` writes, twice (once per shared
   library), "WARNING: All log messages before absl::InitializeLog() is called
   are written to STDERR" and an INFO line "oneDNN custom operations are on";
   TF_CPP_MIN_LOG_LEVEL does not reach that logger. `quiet_native_startup`,
   which `import vision_jax` calls, captures file descriptor 2 while TensorFlow
   is first imported, keeps the INFO lines and absl's notice for the log file,
   and writes everything else (a native warning or error, a Python warning)
   back to stderr. It also sets TF_CPP_MIN_LOG_LEVEL=1 unless it is set, which
   hides the INFO lines of TensorFlow's and XLA's own loggers (CPU feature
   notes, backend banners) and keeps their warnings.
2. Python libraries' INFO logs (JAX probing for a TPU, orbax's per-save notes,
   matplotlib building its font cache): `configure_logging` shows INFO only
   from the project's modules and sends the rest to the log file.
3. Tracebacks that asyncio and TensorFlow's callbacks print after a handled
   checkpoint fault: not filtered here. `vision_jax.train.checkpoint` lets
   orbax's pending reads finish before their event loop is closed, so nothing
   is left to report.

Records that only the log file should get (the full error behind a one-line
warning) go to `DETAIL`, a logger below the INFO level; `--verbose` shows them.
A record logged with `extra=FILE_ONLY` never reaches the console (main uses it
for an error whose traceback it prints itself with --verbose).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import tempfile
import time
from typing import Iterator, Sequence

from vision_jax import startup

VERBOSE_ENV = "VISION_JAX_VERBOSE"
LOG_FILE = "run.log"

# The full errors behind the console's one-line warnings: DEBUG records, kept only while a
# log file is open or --verbose is on (otherwise a library user's handlers never see them).
DETAIL = logging.getLogger("vision_jax.detail")
FILE_ONLY = {"vision_jax_file_only": True}

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# absl's C++ log prefix (severity, date, time, thread, file:line) of an INFO line.
_NATIVE_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d+\.\d+\s+\d+\s+\S+:\d+\] ")
_ABSL_PREINIT_NOTICE = ("WARNING: All log messages before absl::InitializeLog() is called are "
                        "written to STDERR")
_QUIET_IMPORTS = ("tensorflow",)

# What the native libraries printed at start-up and the console did not show: written at
# the top of the log file once there is one.
startup_lines: list[str] = []


def verbose_requested(argv: Sequence[str] | None = None) -> bool:
  """--verbose on the command line (sys.argv by default), or VISION_JAX_VERBOSE=1."""
  env = os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")
  argv = sys.argv if argv is None else argv
  return env or any(a in ("--verbose", "-verbose", "--verbose=true", "--verbose=1")
                    for a in argv)


# ---------------------------------------------------------------------------
# 1. Native start-up lines.
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
  """Captures what is written to file descriptor 2 (C++ code included) inside the block.

  On exit, absl's pre-initialisation notice and native INFO lines are kept in
  `startup_lines`; every other line is written back to stderr unchanged, so a
  native warning or a Python traceback raised inside the block is still seen.
  """
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):  # no usable descriptor 2: nothing to capture
    yield
    return
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = []
      for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
        if line.rstrip("\n") == _ABSL_PREINIT_NOTICE or _NATIVE_INFO.match(line):
          startup_lines.append(line.rstrip("\n"))
        else:
          kept.append(line)
      data = "".join(kept).encode("utf-8", "replace")
      while data:
        data = data[os.write(2, data):]


def quiet_native_startup() -> None:
  """Keeps the native libraries' start-up INFO lines off the console (see the module doc).

  Called by `import vision_jax`; does nothing with --verbose or
  VISION_JAX_VERBOSE=1, and nothing for a module imported before it was called.
  """
  if verbose_requested():
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  for name in _QUIET_IMPORTS:
    startup.wrap_first_import(name, native_stderr_captured)


# ---------------------------------------------------------------------------
# 2. The console and the log file.
# ---------------------------------------------------------------------------
def from_project(record: logging.LogRecord) -> bool:
  """Whether a log record comes from a module of the vision_jax package."""
  return os.path.abspath(record.pathname).startswith(_PACKAGE_DIR)


class ConsoleFilter(logging.Filter):
  """Warnings and errors of everyone, INFO of the project; no DETAIL records.

  With `verbose`, everything but the FILE_ONLY records.
  """

  def __init__(self, verbose: bool = False):
    super().__init__()
    self.verbose = verbose

  def filter(self, record: logging.LogRecord) -> bool:
    if getattr(record, "vision_jax_file_only", False):
      return False
    if self.verbose:
      return True
    if record.name == DETAIL.name:
      return False
    return record.levelno >= logging.WARNING or (record.levelno >= logging.INFO and
                                                 from_project(record))


@dataclasses.dataclass
class LoggingSetup:
  """What `configure_logging` and `add_log_file` changed, so that a test can undo it."""

  console_filter: logging.Filter | None = None
  file_handler: logging.Handler | None = None
  previous_verbosity: int | None = None
  previous_stream: object | None = None
  added_absl_handler: bool = False

  def close_log_file(self) -> None:
    if self.file_handler is not None:
      logging.getLogger().removeHandler(self.file_handler)
      self.file_handler.close()
      self.file_handler = None
      if not (self.console_filter is not None and self.console_filter.verbose):
        DETAIL.setLevel(logging.NOTSET)

  def close(self) -> None:
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    self.close_log_file()
    if self.console_filter is not None:
      absl_logging.get_absl_handler().removeFilter(self.console_filter)
      self.console_filter = None
      DETAIL.setLevel(logging.NOTSET)
    if self.previous_verbosity is not None:
      from absl import flags  # pylint: disable=import-outside-toplevel
      absl_logging.set_verbosity(self.previous_verbosity)
      flags.FLAGS["verbosity"].using_default_value = True  # as it was: not the user's choice
      self.previous_verbosity = None
    if self.previous_stream is not None:
      absl_logging.get_absl_handler().python_handler.stream = self.previous_stream
      self.previous_stream = None
    if self.added_absl_handler:
      logging.getLogger().removeHandler(absl_logging.get_absl_handler())
      self.added_absl_handler = False


def configure_logging(verbose: bool = False) -> LoggingSetup:
  """The console of a command-line run: absl's handler on stderr at INFO, filtered.

  What absl's app.run does (the absl handler on stderr, INFO unless --verbosity
  says otherwise), plus `ConsoleFilter(verbose)`.
  """
  from absl import flags, logging as absl_logging  # pylint: disable=import-outside-toplevel
  setup = LoggingSetup()
  if not flags.FLAGS.is_parsed():  # called outside main (a test): absl would say it is early
    flags.FLAGS.mark_as_parsed()
  handler = absl_logging.get_absl_handler()
  setup.added_absl_handler = handler not in logging.getLogger().handlers
  absl_logging.use_absl_handler()
  # absl's handler writes to the sys.stderr of the time absl was imported; the console is
  # the one of now (the same in a plain process; not under a test's capture).
  setup.previous_stream = handler.python_handler.stream
  handler.python_handler.stream = sys.stderr
  verbosity = flags.FLAGS["verbosity"]
  if verbosity.using_default_value:
    setup.previous_verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
  for old in [f for f in handler.filters if isinstance(f, ConsoleFilter)]:
    handler.removeFilter(old)  # an earlier command in this process
  setup.console_filter = ConsoleFilter(verbose)
  handler.addFilter(setup.console_filter)
  if verbose:
    DETAIL.setLevel(logging.DEBUG)
  return setup


def add_log_file(setup: LoggingSetup, workdir: str, argv: Sequence[str] | None = None,
                 process_index: int = 0) -> str:
  """Appends every log record (DETAIL ones included) to WORKDIR/run.log; returns its path.

  Process 0 writes run.log, process N run.process_N.log. Each start adds a
  header with the time and the command, then what the native libraries printed
  at start-up and the console did not show.
  """
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  name = LOG_FILE if process_index == 0 else f"run.process_{process_index}.log"
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  handler = logging.FileHandler(path, encoding="utf-8")
  handler.setLevel(logging.DEBUG)
  handler.setFormatter(absl_logging.PythonFormatter())
  command = " ".join(sys.argv if argv is None else argv)
  handler.stream.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: "
                       f"{command}\n")
  for line in startup_lines:
    handler.stream.write(f"[start-up, native] {line}\n")
  handler.flush()
  logging.getLogger().addHandler(handler)
  DETAIL.setLevel(logging.DEBUG)
  setup.file_handler = handler
  return path
