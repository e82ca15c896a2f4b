"""What a run ran on: code version, packages, devices, CPU, XLA and thread settings, config.

`write_environment(workdir, config)` stores it as WORKDIR/environment.json so
that two runs can be compared field by field (`tools/compare_runs.py A B`).
Floating-point results of the same code and seed can depend on these fields:
XLA's CPU backend picks its vector instructions from the CPU's features (capped
by `--xla_cpu_max_isa` in XLA_FLAGS), and the device count sets how batches
and reductions are split. The file records them so a difference in figures can
be traced to a difference in environment.

The top-level keys are stable:
  code: git commit and dirty flag of the vision_jax checkout (None outside git).
  packages: versions of python, jax, jaxlib, flax, optax, tensorflow, numpy, ...
  devices: backend, device kind, device and local device count, process count.
  cpu: model, vendor, logical CPU count, usable CPU count, feature flags.
  settings: XLA_FLAGS, thread-count and other numerics-related environment
    variables, and the jax flags that change results.
  config: the full resolved config (seeds included) as plain JSON.
  run: when, where and how the process was started; it differs between any two
    runs, so compare_runs skips it unless asked.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from typing import Any

ENVIRONMENT_FILE = "environment.json"

# Distributions whose version can change a run's numbers or behaviour.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "tensorflow", "numpy", "orbax-checkpoint",
            "ml_collections", "clu", "tensorflow-datasets", "scikit-learn")
# tensorflow is installed under several distribution names.
_ALTERNATIVE_NAMES = {"tensorflow": ("tensorflow-cpu", "tf-nightly", "tensorflow-intel")}
# Environment variables that set thread counts or change numerics, matched by prefix.
SETTING_PREFIXES = ("XLA_", "JAX_", "TF_NUM_", "TF_ENABLE_ONEDNN", "TF_DETERMINISTIC", "OMP_",
                    "MKL_", "OPENBLAS_", "KMP_", "NPROC", "CUDA_VISIBLE_DEVICES")
# jax options that change computed values (not just speed or logging).
JAX_OPTIONS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_threefry_partitionable",
               "jax_default_prng_impl")


def _git(args: list[str], cwd: str, strip: bool = True) -> str | None:
  try:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                         check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if strip else out.stdout


def code_version() -> dict[str, Any]:
  """The git commit of the checkout holding the vision_jax package, and whether it is dirty.

  `commit` and `dirty` are None when the package is not inside a git checkout
  (e.g. installed from a wheel) or git is missing. `dirty` counts tracked
  files with uncommitted changes; untracked files do not change the code that ran.
  """
  package_dir = os.path.dirname(os.path.abspath(__file__))
  from vision_jax import __version__  # pylint: disable=import-outside-toplevel
  root = _git(["rev-parse", "--show-toplevel"], package_dir)
  if not root:
    return {"commit": None, "dirty": None, "changed_files": None, "version": __version__}
  commit = _git(["rev-parse", "HEAD"], root)
  # Not stripped: porcelain lines start with a status column that may be a space.
  status = _git(["status", "--porcelain", "--untracked-files=no"], root, strip=False)
  changed = None if status is None else sorted(line[3:] for line in status.splitlines() if line)
  return {"commit": commit, "dirty": None if changed is None else bool(changed),
          "changed_files": changed, "version": __version__}


def package_versions() -> dict[str, str | None]:
  """Installed versions (None: not installed), read from package metadata without importing."""
  versions: dict[str, str | None] = {"python": platform.python_version()}
  for name in PACKAGES:
    version = None
    for candidate in (name, *_ALTERNATIVE_NAMES.get(name, ())):
      try:
        version = importlib.metadata.version(candidate)
        break
      except importlib.metadata.PackageNotFoundError:
        continue
    versions[name] = version
  return versions


def device_info() -> dict[str, Any]:
  """Backend, device kind and counts as jax sees them (this initialises the backend)."""
  import jax  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
          "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
          "process_count": jax.process_count(), "process_index": jax.process_index()}


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict[str, Any]:
  """CPU model, vendor, counts and feature flags (from /proc/cpuinfo; `platform` elsewhere)."""
  fields: dict[str, str] = {}
  try:
    with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
      for line in f:
        key, sep, value = line.partition(":")
        if not sep:
          if fields:  # the first processor's block is enough: all cores are alike here
            break
          continue
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  model = fields.get("model name") or fields.get("Processor") or platform.processor() or None
  flags = fields.get("flags") or fields.get("Features") or ""
  try:
    usable = len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    usable = os.cpu_count()
  return {"model": model, "vendor": fields.get("vendor_id"), "machine": platform.machine(),
          "logical_cpus": os.cpu_count(), "usable_cpus": usable,
          "flags": sorted(flags.split()) or None}


def settings() -> dict[str, Any]:
  """XLA_FLAGS, thread-count environment variables and the jax options that change values."""
  env = {key: value for key, value in sorted(os.environ.items())
         if key.startswith(SETTING_PREFIXES) and key != "XLA_FLAGS"}  # that one has its own field
  options: dict[str, Any] = {}
  try:
    import jax  # pylint: disable=import-outside-toplevel
    for name in JAX_OPTIONS:
      value = getattr(jax.config, name, None)
      plain = value is None or isinstance(value, (bool, int, float))
      options[name] = value if plain else str(value)
  except ImportError:
    pass
  return {"XLA_FLAGS": os.environ.get("XLA_FLAGS"), "env": env, "jax_options": options}


def config_to_json(config: Any) -> Any:
  """The config as plain JSON values (ConfigDicts and mappings become dicts, tuples lists)."""
  if config is None:
    return None
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict: resolves references
    config = config.to_dict()
  # A round trip through json with repr as the fallback turns anything else into text.
  return json.loads(json.dumps(config, default=repr, sort_keys=True))


def collect_environment(config: Any = None) -> dict[str, Any]:
  """Everything that environment.json holds (see the module docstring for its keys).

  Args:
    config: the run's resolved config (a ConfigDict or a mapping); None leaves
      "config" empty.
  """
  return {
      "code": code_version(),
      "packages": package_versions(),
      "devices": device_info(),
      "cpu": cpu_info(),
      "settings": settings(),
      "config": config_to_json(config),
      "run": {"written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"), "hostname": socket.gethostname(), "argv": list(sys.argv),
              "cwd": os.getcwd(), "pid": os.getpid()},
  }


def write_environment(workdir: str, config: Any = None) -> str | None:
  """Writes WORKDIR/environment.json on process 0; returns its path (None on other processes).

  The file is written to a temporary name and renamed, so a reader never sees
  a partial file; a rerun in the same workdir (a resume) replaces it.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() != 0:
    return None
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, ENVIRONMENT_FILE)
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w", encoding="utf-8") as f:
    json.dump(collect_environment(config), f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(temporary, path)
  return path


def read_environment(workdir: str) -> dict[str, Any]:
  """The environment.json of `workdir` (FileNotFoundError names the missing file)."""
  path = os.path.join(workdir, ENVIRONMENT_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No {ENVIRONMENT_FILE} in {workdir!r}: runs write it at start "
                            f"(vision_jax.environment.write_environment).")
  with open(path, encoding="utf-8") as f:
    return json.load(f)
