"""Command line: python -m vision_jax.main --config=configs/NAME.py[:ARGS] --workdir=DIR.

Fields can be overridden with --config.FIELD=VALUE (e.g. --config.batch_size=256).
On several hosts, --coordinator_address/--num_processes/--process_id go to
jax.distributed.initialize; without them, its automatic detection (TPU pods,
SLURM) is used when JAX finds such an environment.

Errors. Every mistake a user can make (a missing or broken config file, an
unknown config argument or field, a bad value, missing data, a damaged or
foreign checkpoint, a locked workdir, a full disk) ends the process with a
non-zero exit code and one line on stderr that starts with `error:`, names the
value and says what to do; no traceback. `--verbose` (or the environment
variable VISION_JAX_VERBOSE=1) prints the traceback too, for bug reports.
Anything else is a bug and keeps its traceback. Exit codes: 2 for the command
line and the config (`config_check.validate` runs before any device is
touched), 1 for a run that failed (data, checkpoints, a NaN loss).

The console shows the project's lines and every library's warnings; the
libraries' INFO lines, TensorFlow's native start-up lines and the full error
behind each warning or `error:` line go to WORKDIR/run.log, and `--verbose`
shows them too (see vision_jax/console.py).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import sys
import traceback
from typing import Any, Sequence

from absl import flags, logging
from ml_collections import config_flags

from vision_jax import console
from vision_jax.cli import common
from vision_jax.config_base import DATA_DEFAULTS, TRAINER_DEFAULTS, fresh

VERBOSE_ENV = console.VERBOSE_ENV

# Optional fields that the trainer and the data sources read, which a config file
# need not declare: `--config.FIELD=...` adds them (with this default, whose type
# parses the value) when the config lacks them. Any other unknown field is an error.
OPTIONAL_FIELDS = {
    "on_corrupt_checkpoint": TRAINER_DEFAULTS["on_corrupt_checkpoint"],
    **{f"data.{key}": value for key, value in DATA_DEFAULTS.items()},
}
# The exit codes, the `error:` line and the user-error types are those of every tool.
EXIT_USAGE, EXIT_FAILED = common.EXIT_USAGE, common.EXIT_FAILED
CommandLineError = common.CommandLineError
error_line = common.error_line
user_error_types = common.user_error_types


@dataclasses.dataclass
class Invocation:
  """What the command line asks for."""

  config: Any
  workdir: str
  verbose: bool
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  cpu_collectives: str | None = None


# ---------------------------------------------------------------------------
# Parsing: the config file is loaded eagerly, before any flag is parsed, so that
# a missing file or a get_config that raises is reported here and nowhere later.
# ---------------------------------------------------------------------------
def _config_spec(argv: Sequence[str]) -> tuple[str, list[str]]:
  """The value of --config and argv without it (overrides --config.x stay)."""
  rest, spec = [argv[0]], None
  i = 1
  while i < len(argv):
    arg = argv[i]
    match = re.match(r"^--?config(=(.*))?$", arg)
    if match:
      if match.group(1) is not None:
        spec = match.group(2)
      elif i + 1 < len(argv):
        spec, i = argv[i + 1], i + 1
      else:
        spec = ""
    else:
      rest.append(arg)
    i += 1
  if spec is None:
    raise CommandLineError("--config is missing; give a config file, e.g. "
                           "--config=configs/digits.py (or configs/digits.py:smoke).")
  return spec, rest


def load_config_file(spec: str) -> Any:
  """`get_config(ARGS)` of the file in 'PATH[:ARGS]' (get_config() when there is no colon).

  Raises:
    CommandLineError: the file is missing, does not import, has no get_config, or
      get_config raises (a ConfigError's own message is kept).
  """
  # pylint: disable=import-outside-toplevel
  from vision_jax.config_util import ConfigError, load_config_module
  path, colon, arg = spec.partition(":")
  if not path:
    raise CommandLineError("--config is empty; give a config file, e.g. --config=configs/digits.py.")
  if not os.path.isfile(path):
    where = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
    raise CommandLineError(f"--config={spec}: there is no config file {path!r}{where}; give the "
                           "path of a config file, e.g. --config=configs/digits.py.")
  try:
    module = load_config_module(path)
  except SyntaxError as e:
    raise CommandLineError(f"--config={spec}: the config file {path} has a syntax error at line "
                           f"{e.lineno}: {e.msg}; fix the file.") from e
  except Exception as e:  # pylint: disable=broad-except
    raise CommandLineError(f"--config={spec}: importing the config file {path} raised "
                           f"{type(e).__name__}: {e}; fix the file (--verbose shows where).") from e
  if not callable(getattr(module, "get_config", None)):
    raise CommandLineError(f"--config={spec}: the config file {path} defines no get_config(); a "
                           "config file defines get_config(arg=None) returning a ConfigDict.")
  try:
    config = module.get_config(arg) if colon else module.get_config()
  except ConfigError as e:
    raise CommandLineError(f"--config={spec}: {e}") from e
  except Exception as e:  # pylint: disable=broad-except
    call = f"get_config({arg!r})" if colon else "get_config()"
    raise CommandLineError(f"--config={spec}: {path}:{call} raised {type(e).__name__}: {e}; check "
                           "the config arguments (the file's docstring lists them) or fix the "
                           "file (--verbose shows where).") from e
  if not hasattr(config, "lock") or not hasattr(config, "keys"):
    raise CommandLineError(f"--config={spec}: get_config returned {type(config).__name__}, not a "
                           "ml_collections.ConfigDict; return the config at the end of get_config.")
  # A config may hold FieldReferences shared with other configs (module-level
  # placeholders); the overrides must change this config only.
  return copy.deepcopy(config)


def _check_override_paths(config: Any, argv: Sequence[str]) -> None:
  """Every --config.a.b must name an existing field (or an OPTIONAL_FIELDS one, added here);
  lists the valid ones otherwise."""
  for arg in argv[1:]:
    match = re.match(r"^--?(no)?config\.([^=]+)", arg)
    if not match:
      continue
    parent, _, leaf = match.group(2).rpartition(".")
    if match.group(2) in OPTIONAL_FIELDS:
      node = config if not parent else config.get(parent)
      if hasattr(node, "keys") and leaf not in node.keys():
        with node.unlocked():
          node[leaf] = fresh(OPTIONAL_FIELDS[match.group(2)])
    node, walked = config, "config"
    for part in match.group(2).split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        listing = ", ".join(sorted(keys)) if keys else f"none ({walked} is not a group of fields)"
        raise CommandLineError(
            f"{arg}: the config has no field {walked}.{part}; fields of {walked}: {listing}. Check "
            "the spelling, or add the field to the config file.")
      node, walked = node[part], f"{walked}.{part}"


def _define_flags(flag_values: flags.FlagValues, config: Any, argv: Sequence[str]) -> dict:
  holders = {
      "workdir": flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.",
                                     flag_values=flag_values),
      "verbose": flags.DEFINE_boolean("verbose", False, "Print tracebacks of errors (bug reports).",
                                      flag_values=flag_values),
      "coordinator_address": flags.DEFINE_string("coordinator_address", None,
                                                 "host:port of process 0.", flag_values=flag_values),
      "num_processes": flags.DEFINE_integer("num_processes", None, "Number of processes.",
                                            flag_values=flag_values),
      "process_id": flags.DEFINE_integer("process_id", None, "Index of this process.",
                                         flag_values=flag_values),
      "cpu_collectives": flags.DEFINE_string(
          "cpu_collectives", None, "Collectives for multi-process CPU runs ('gloo').",
          flag_values=flag_values),
  }
  # The overrides --config.x=... are parsed by ml_collections against the loaded config.
  holders["config"] = config_flags.DEFINE_config_dict(
      "config", config, "Config file, e.g. configs/digits.py:smoke.", flag_values=flag_values,
      lock_config=True, sys_argv=list(argv))
  # absl's own flags (--verbosity, --log_dir, ...) keep working.
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if name == flag.name and name not in flag_values and flag.short_name not in flag_values:
      flag_values[name] = flag  # registers its short name (-v) too
  return holders


def parse_command_line(argv: Sequence[str]) -> Invocation:
  """The config (file loaded, overrides applied) and the other flags of `argv`.

  Raises:
    CommandLineError: any mistake on the command line, in one sentence.
  """
  spec, rest = _config_spec(argv)
  config = load_config_file(spec)
  config.lock()  # an override of a field the config lacks is an error
  _check_override_paths(config, rest)
  flag_values = flags.FlagValues()
  try:
    holders = _define_flags(flag_values, config, rest)
    extra = flag_values(rest)
  except flags.IllegalFlagValueError as e:
    raise CommandLineError(f"{e}; give a value of the field's type (strings in quotes inside "
                           "tuples, e.g. --config.dont_load=\"('head/.*',)\").") from e
  except flags.Error as e:
    raise CommandLineError(f"{e}; `python -m vision_jax.main --help` lists the flags.") from e
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    overrides = [a for a in rest[1:] if re.match(r"^--?(no)?config\.", a)]
    raise CommandLineError(f"cannot apply {' '.join(overrides)}: {type(e).__name__}: {e}; check "
                           "the field names and value types against the config file.") from e
  flags.FLAGS.mark_as_parsed()
  if len(extra) > 1:
    raise CommandLineError(f"unexpected arguments {extra[1:]}; flags are written --name=value.")
  if not holders["workdir"].value:
    raise CommandLineError("--workdir is missing; give a directory for checkpoints and metrics, "
                           "e.g. --workdir=/tmp/digits (an existing run's workdir resumes it).")
  workdir = holders["workdir"].value
  if not re.match(r"^[a-z][a-z0-9+.-]*://", workdir):  # gs:// and the like are made by the writers
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise CommandLineError(f"--workdir={workdir}: cannot create this directory ({e.strerror}); "
                             "give a directory path that you can write to.") from e
  distributed = [holders[k].value for k in ("coordinator_address", "num_processes", "process_id")]
  if any(v is not None for v in distributed) and any(v is None for v in distributed):
    raise CommandLineError("give all three of --coordinator_address, --num_processes and "
                           "--process_id, or none of them.")
  return Invocation(config=holders["config"].value, workdir=holders["workdir"].value,
                    verbose=holders["verbose"].value or _verbose_requested(argv),
                    coordinator_address=holders["coordinator_address"].value,
                    num_processes=holders["num_processes"].value,
                    process_id=holders["process_id"].value,
                    cpu_collectives=holders["cpu_collectives"].value)


# ---------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------
def _initialize_distributed(invocation: Invocation) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  if invocation.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", invocation.cpu_collectives)
  if invocation.coordinator_address is not None:
    jax.distributed.initialize(invocation.coordinator_address, invocation.num_processes,
                               invocation.process_id)
  elif any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")):
    jax.distributed.initialize()  # automatic cluster detection


def _setup_logging(verbose: bool = False) -> console.LoggingSetup:
  """The console: the project's lines and every warning; library INFO only with --verbose."""
  return console.configure_logging(verbose)


def _add_log_file(setup: console.LoggingSetup, workdir: str, argv: Sequence[str]) -> None:
  """Everything logged (the libraries' INFO and the full errors behind warnings) to WORKDIR/run.log."""
  if setup is None or re.match(r"^[a-z][a-z0-9+.-]*://", workdir):  # no local file for gs:// and the like
    return
  import jax  # pylint: disable=import-outside-toplevel
  console.add_log_file(setup, workdir, argv, jax.process_index())


def _verbose_requested(argv: Sequence[str]) -> bool:
  """--verbose anywhere in argv, or VISION_JAX_VERBOSE=1 (checked before parsing can fail)."""
  return console.verbose_requested(argv)


def run_command(argv: Sequence[str]) -> int:
  """The whole command line: parse, train, and turn user errors into one `error:` line.

  Returns:
    The exit code: 0, 1 (the run failed) or 2 (the command line or config is wrong).
  Raises:
    Anything that is not a user error (a bug), with its traceback.
  """
  argv = list(argv)
  if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
    print(__doc__)
    return 0
  verbose = _verbose_requested(argv)
  logging_setup = None
  try:
    invocation = parse_command_line(argv)
    verbose = invocation.verbose
    logging_setup = _setup_logging(verbose)
    from vision_jax import config_check  # pylint: disable=import-outside-toplevel
    config_check.validate(invocation.config)  # before any device is touched
    _initialize_distributed(invocation)
    _add_log_file(logging_setup, invocation.workdir, argv)
    # Imported after distributed init: importing the trainer touches jax devices.
    from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
    trainer.train_and_evaluate(invocation.config, invocation.workdir, validated=True)
  except Exception as e:  # pylint: disable=broad-except
    # The whole error, for the log file (the console gets one line, or this with --verbose).
    console.DETAIL.debug("The run ended with %s:", type(e).__name__, exc_info=True,
                         extra=console.FILE_ONLY)
    if not isinstance(e, user_error_types()):
      raise
    if verbose:
      traceback.print_exc(file=sys.stderr)
    print(error_line(e), file=sys.stderr, flush=True)
    from vision_jax.config_util import ConfigError  # pylint: disable=import-outside-toplevel
    return EXIT_USAGE if isinstance(e, (CommandLineError, ConfigError)) else EXIT_FAILED
  finally:
    if logging_setup is not None and logging_setup.file_handler is not None:
      # The file is closed when the command ends (a caller may run several in one process).
      logging_setup.close_log_file()
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """`run_command` with argv as the tools take it (without the program name)."""
  return run_command(["vision_jax.main", *(sys.argv[1:] if argv is None else argv)])


def run() -> None:
  """Console entry point (vj-train)."""
  sys.exit(run_command(sys.argv))


if __name__ == "__main__":
  run()
