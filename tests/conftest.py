"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere.

Compiled XLA programs are shared between the tests of one run through JAX's
persistent compilation cache: many tests compile the same small train step, and
compiling is most of their cost on the CPU. The cache lives in a fresh directory
per test run (shared by the xdist workers and the subprocesses the tests start,
which inherit the environment), so every run starts cold, as on a fresh machine.
Set JAX_COMPILATION_CACHE_DIR yourself to keep a cache across runs.

Two workers that compile the same program at the same time both miss the cache,
so the tests that train the plain `configs/digits.py:smoke` run on 8 devices are
in one xdist group ("digits_smoke"): one worker runs them in turn, and only the
first compiles.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
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
