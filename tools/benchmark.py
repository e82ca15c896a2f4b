"""Training throughput of a model: images/s, compile time, FLOPs, MFU, and peers.

The code is vision_jax/cli/benchmark.py; `python -m vision_jax.cli.benchmark` and the console
command in setup.cfg run the same. `python tools/benchmark.py --help` lists the options.
"""

import sys

from vision_jax.cli import benchmark as _tool
from vision_jax.cli.common import run

if __name__ == "__main__":
  sys.exit(run(_tool.main))
else:  # `import benchmark` with tools/ on the path (tests, notebooks) gets the tool's module itself
  sys.modules[__name__] = _tool
