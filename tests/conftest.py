"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere.

Compiled XLA programs are shared between the tests of one run through JAX's
persistent compilation cache: many tests compile the same small train step, and
compiling is most of their cost on the CPU. The cache lives in a fresh directory
per test run (shared by the xdist workers and the subprocesses the tests start,
which inherit the environment), so every run starts cold, as on a fresh machine.
Set JAX_COMPILATION_CACHE_DIR yourself to keep a cache across runs.

Running a command from a test: the `run_tool` fixture (`run_tool_here(name,
*args, capsys=capsys)` outside a fixture's reach) runs
`vision_jax/cli/NAME.py` (or `tools/NAME.py`) in this process through the same
error path as the console (`cli.common.run`) and returns (returncode, stdout,
stderr); `run_tool_process` starts it as `python tools/NAME.py` instead, for the
few tools whose behaviour needs a process of their own (CPU affinity, a fresh
import of TensorFlow). `ROOT` is the repository root.

Two workers that compile the same program at the same time both miss the cache,
so the tests that train the plain `configs/digits.py:smoke` run on 8 devices are
in one xdist group ("digits_smoke"): one worker runs them in turn, and only the
first compiles.
"""

import os
import tempfile

# XLA's CPU backend at LLVM optimisation level 1 instead of its default 2: on the tests' tiny
# models compilation is most of the cost, and level 1 compiled cifar_resnet20's initialisation
# 2.7x and its train step 1.1x faster while the step ran as fast (99 steps: 19.4 s vs 19.6 s);
# tests/test_models_forward.py took 89 s instead of 107 s. Level 0 compiles no faster than 1 and
# made the digits transfer check 33% slower. Every tolerance and golden bound holds at either
# level; the one test about the level itself (test_train's initialisation test) compiles
# level 2 explicitly. `xla_flags(devices)` gives the same flags to a child process.
OPT_LEVEL_FLAG = "--xla_backend_optimization_level=1"


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test's child process: `devices` simulated CPU devices, the tests' level."""
  return f"--xla_force_host_platform_device_count={devices} {OPT_LEVEL_FLAG}"


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Depthwise convolutions compile through XLA's grouped convolution, not the CPU's default
# shifted-slice path: a 7x7 kernel is 49 slices forward and 49 pads back, which made the
# compile of a tiny ConvNeXt gradient step 4x dearer (38 s against 9 s) and the suite over
# its budget. The two paths are equal in values and gradients at every kernel, stride and
# padding the families use: tests/test_depthwise.py checks that with impl='shifted'
# (explicit, so this variable does not apply there).
os.environ.setdefault("VISION_JAX_DEPTHWISE", "xla")
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"vision_jax_test_jit_cache_{_RUN_ID}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# torchvision segfaults when it is imported after TensorFlow (which clu's metric
# writers load): the reference models must be imported first.
try:
  import torch  # noqa: F401,E402  pylint: disable=unused-import
  import torchvision  # noqa: F401,E402  pylint: disable=unused-import
except ImportError:
  pass

import importlib.util  # noqa: E402
import logging  # noqa: E402
import pytest  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_experiment(name: str):
  """The module of experiments/<name>.py, loaded by path (experiments/ is not a package)."""
  spec = importlib.util.spec_from_file_location(f"{name}_experiment",
                                                os.path.join(ROOT, "experiments", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class ToolResult(NamedTuple):
  """What a command gave: unpacks as (code, out, err), reads like subprocess.CompletedProcess."""

  returncode: int
  stdout: str
  stderr: str


def tool_module(name: str):
  """The module of a command: vision_jax.cli.NAME for the console commands, else tools/NAME.py."""
  name = name[:-3] if name.endswith(".py") else name
  if importlib.util.find_spec(f"vision_jax.cli.{name}") is not None:
    return importlib.import_module(f"vision_jax.cli.{name}")
  return importlib.import_module(f"tools.{name}")  # the repository root is on sys.path


def run_tool_here(name: str, *args, capsys) -> ToolResult:
  """Runs a command in this process, as its console script would; output read through capsys."""
  from vision_jax.cli import common  # pylint: disable=import-outside-toplevel
  capsys.readouterr()  # only this command's output
  code = common.run(tool_module(name).main, [str(a) for a in args])
  out = capsys.readouterr()
  return ToolResult(code, out.out, out.err)


@pytest.fixture
def run_tool(capsys):
  """`run_tool(name, *args)`: `run_tool_here` with this test's capsys."""
  return lambda name, *args: run_tool_here(name, *args, capsys=capsys)


def run_tool_process(name: str, *args, env=None, timeout: int = 600) -> ToolResult:
  """Runs `python tools/NAME.py ARGS` in a process of its own (this checkout's code)."""
  name = name if name.endswith(".py") else f"{name}.py"
  env = dict(os.environ if env is None else env, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *map(str, args)],
                        capture_output=True, text=True, env=env, timeout=timeout, check=False)
  return ToolResult(proc.returncode, proc.stdout, proc.stderr)


class SmokeRun(NamedTuple):
  """A finished `configs/digits.py:smoke` run: its workdir (read it, do not write to it: copy it
  first), config, final metrics and the messages it logged at INFO and above."""

  workdir: Any
  config: Any
  final: dict
  messages: list


class _Messages(logging.Handler):
  """Keeps the message of every record (caplog is per test; a session fixture needs its own)."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope="session")
def digits_smoke_run(tmp_path_factory):
  """The plain `configs/digits.py:smoke` run on all 8 devices (seed 3, so that a test can tell
  the config's seed from the default), done once for every test that only reads such a run.
  Its users are in the xdist group "digits_smoke", so one worker runs it."""
  from vision_jax.config_util import load_config  # pylint: disable=import-outside-toplevel
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp("digits_smoke")
  config = load_config(os.path.join(ROOT, "configs", "digits.py"), "smoke", seed=3)
  root = logging.getLogger()
  handler, level = _Messages(), root.level
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  try:
    final = trainer.train_and_evaluate(config, str(workdir))
  finally:
    root.removeHandler(handler)
    root.setLevel(level)
  return SmokeRun(workdir, config, final, handler.messages)


# --- the two tiers ---------------------------------------------------------------------------
# The README's test command runs the quick tier: every unit, parity, error and smoke test,
# within the 15 minutes a developer machine of 2 cores allows. Tests marked `slow` run whole
# protocols: training to a golden accuracy, killing and starting processes, executing the
# notebooks, sweeping every registered variant. Each covers a feature that also has a quick
# test. They are deselected by default, run with `-m slow` (CI runs both tiers, .ci/run), and
# run whenever a marker expression is given or a test is named by its node id.
SLOW_COMMAND = "python3 -m pytest -n 2 --dist loadgroup -q -m slow"


def _slow_deselected(config) -> bool:
  """True when this run leaves the slow tier out: no -m expression and no test named by id."""
  if config.option.markexpr:
    return False
  return not any("::" in str(arg) for arg in config.args)


def pytest_collection_modifyitems(config, items):
  if not _slow_deselected(config):
    return
  kept, slow = [], []
  for item in items:
    (slow if item.get_closest_marker("slow") else kept).append(item)
  if slow:
    config.hook.pytest_deselected(items=slow)
    items[:] = kept


def pytest_terminal_summary(terminalreporter, config):
  if _slow_deselected(config) and not hasattr(config, "workerinput"):
    terminalreporter.write_line(
        "quick tier: the tests marked `slow` (golden accuracies, process kills, notebooks, "
        f"whole-registry sweeps) were deselected; run them with `{SLOW_COMMAND}` (CI runs both)")
