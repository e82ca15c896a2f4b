"""Depthwise convolution speed: shifted multiply-adds against XLA's grouped convolution.

The code is vision_jax/cli/benchmark_depthwise.py; `python -m vision_jax.cli.benchmark_depthwise`
and the console command in setup.cfg run the same. `python tools/benchmark_depthwise.py --help`
lists the options.
"""

from vision_jax.cli.common import script

script(__name__, "benchmark_depthwise")
