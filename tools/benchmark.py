"""Training throughput of a model: images/s, compile time, FLOPs, MFU, and peers.

The code is vision_jax/cli/benchmark.py; `python -m vision_jax.cli.benchmark` and the console
command in setup.cfg run the same. `python tools/benchmark.py --help` lists the options.
"""

from vision_jax.cli.common import script

script(__name__, "benchmark")
