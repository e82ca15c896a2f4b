"""What every command shares: model options, --verbose, the `error:` line, exit codes.

A user's mistake (a missing file, a bad option value, weights that do not fit)
ends a command with one line on stderr that starts with `error:`, names the
value and says what to do, and exit code 2 (`EXIT_USAGE`); work that fails on
good input (no image could be read, out of memory) exits with 1 (`EXIT_FAILED`).
`--verbose` (or VISION_JAX_VERBOSE=1) adds the traceback, for bug reports. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import Callable, Sequence

from vision_jax import console

EXIT_USAGE = 2
EXIT_FAILED = 1

class CommandLineError(Exception):
  """A command-line mistake: a missing flag, a file that cannot be loaded, a bad value."""


def add_model_args(parser: argparse.ArgumentParser) -> None:
  """--workdir (a run's latest checkpoint) or --weights (converted or pretrained), one required."""
  from vision_jax.inference import WEIGHTS_HELP  # pylint: disable=import-outside-toplevel
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument("--workdir", help="a training run's directory (its latest checkpoint)")
  group.add_argument("--weights", help=WEIGHTS_HELP)


def add_verbose(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--verbose", action="store_true",
                      help="print the traceback behind an error (for bug reports)")


# The exceptions that mean "the input is wrong" (not a bug), by module and name.
_USER_ERRORS = (("vision_jax.config_util", "ConfigError"),
                ("vision_jax.data.errors", "DatasetError"),
                ("vision_jax.models.registry", "ModelError"),
                ("vision_jax.train.checkpoint", "CheckpointError"),
                ("vision_jax.weights.errors", "WeightLoadError"),
                ("vision_jax.train.trainer", "NonFiniteLossError"))


def user_error_types() -> tuple[type[BaseException], ...]:
  """The exceptions that mean "the input is wrong" (not a bug): reported in one line.

  Only modules already imported are asked: an error class whose module was never imported
  cannot have been raised, and importing it here would pull in what a tool does not need
  (orbax, ml_collections on an accelerator machine that lacks them).
  """
  types = [CommandLineError]
  for module, name in _USER_ERRORS:
    error = _imported_class(module, name)
    if error is not None and error not in types:
      types.append(error)
  return tuple(types)


def _imported_class(module: str, name: str) -> type | None:
  found = getattr(sys.modules.get(module), name, None)
  return found if isinstance(found, type) else None


def _is_usage_error(error: BaseException) -> bool:
  usage = (CommandLineError, _imported_class("vision_jax.config_util", "ConfigError"))
  return isinstance(error, tuple(t for t in usage if t is not None))


def error_line(error: BaseException | str) -> str:
  """`error: <message>` on one line (a multi-line message is joined with spaces)."""
  message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
  return f"error: {message or type(error).__name__}"


def report(error: BaseException | str, code: int = EXIT_USAGE) -> int:
  """Prints `error: <message>` to stderr and returns `code`, for `return report(e)` in a tool.

  The message keeps its lines: a table of mismatched weights stays readable.
  """
  print(f"error: {error}", file=sys.stderr, flush=True)
  return code


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
  """Runs a tool's `main(argv)`; a user error it lets through becomes the `error:` line.

  `--verbose` is taken out of argv here (every command accepts it) and prints the
  traceback of such an error too.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = console.verbose_requested(["", *argv])
  argv = [a for a in argv if a != "--verbose"]
  try:
    return main(argv)
  except user_error_types() as e:
    if verbose:
      traceback.print_exc(file=sys.stderr)
    print(error_line(e), file=sys.stderr, flush=True)
    return EXIT_USAGE if _is_usage_error(e) else EXIT_FAILED


def entry_point(main: Callable[[Sequence[str] | None], int]) -> Callable[[], None]:
  """The console-script function of a tool: `run(main)` and exit with its code."""
  def console_script() -> None:
    sys.exit(run(main))
  console_script.__doc__ = f"Console entry point of {main.__module__}."
  return console_script


def pyplot():
  """matplotlib.pyplot on the Agg canvas (no display needed), for the tools' figures."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def save_png(fig, path: str, dpi: int) -> None:
  """Lays out a pyplot figure, writes it as a PNG and frees it."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  pyplot().close(fig)


def script(name: str, tool: str) -> None:
  """The whole body of tools/TOOL.py: `script(__name__, "predict")`.

  Run as a script, it runs vision_jax.cli.TOOL through `run` and exits with its
  code; imported (`import predict` with tools/ on the path, as older notebooks
  do), it puts the tool's module in its place, so that its functions are there.
  """
  module = importlib.import_module(f"vision_jax.cli.{tool}")
  if name == "__main__":
    sys.exit(run(module.main))
  sys.modules[name] = module
