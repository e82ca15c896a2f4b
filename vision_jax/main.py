"""Command line: python -m vision_jax.main --config=configs/NAME.py[:ARGS] --workdir=DIR.

Fields can be overridden with --config.FIELD=VALUE (e.g. --config.batch_size=256).
On several hosts, --coordinator_address/--num_processes/--process_id go to
jax.distributed.initialize; without them, its automatic detection (TPU pods,
SLURM) is used when JAX finds such an environment.
"""

from __future__ import annotations

import logging as logging_std
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py:smoke.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")
_CPU_COLLECTIVES = flags.DEFINE_string(
    "cpu_collectives", None, "Collectives for multi-process CPU runs ('gloo').")


def _initialize_distributed() -> None:
  import jax  # pylint: disable=import-outside-toplevel
  if _CPU_COLLECTIVES.value:
    jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
  explicit = [_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise app.UsageError("Give all three of --coordinator_address, --num_processes and "
                           "--process_id, or none of them.")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")):
    jax.distributed.initialize()  # automatic cluster detection


class _QuietLibraries(logging_std.Filter):
  """Drops the per-save INFO chatter of orbax and the like from the console."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or not any(
        f"{os.sep}{lib}{os.sep}" in record.pathname for lib in ("orbax", "etils", "tensorstore"))


def main(argv) -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required.")
  _initialize_distributed()
  # Imported after distributed init: importing the trainer touches jax devices.
  from vision_jax.config_util import ConfigError  # pylint: disable=import-outside-toplevel
  from vision_jax.data import DatasetError  # pylint: disable=import-outside-toplevel
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  from vision_jax.train.checkpoint import CheckpointError  # pylint: disable=import-outside-toplevel
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, DatasetError, CheckpointError, trainer.NonFiniteLossError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except ValueError as e:  # e.g. an unknown model name from the registry
    if "Unknown model" in str(e) or "unknown override" in str(e):
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    raise


def _parse_flags(argv):
  """absl flag parsing, with config-override mistakes turned into one clear line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    # ml_collections raises these for --config.unknown_field or a value of the wrong type.
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    print(f"error: cannot apply the config overrides {overrides}: {e}. Check the field "
          "names and value types against the config file.", file=sys.stderr)
  except Exception as e:  # pylint: disable=broad-except
    # A config file that is missing or raises while building the config.
    print(f"error: cannot load the config: {type(e).__name__}: {e}", file=sys.stderr)
  sys.exit(2)


def run() -> None:
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
