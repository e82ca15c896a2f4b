"""Inference latency of the exported formats against JAX and timm.

The code is vision_jax/cli/benchmark_export.py; `python -m vision_jax.cli.benchmark_export`
and the console command in setup.cfg run the same. `python tools/benchmark_export.py --help`
lists the options.
"""

from vision_jax.cli.common import script

script(__name__, "benchmark_export")
