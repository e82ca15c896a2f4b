"""Plots training curves of one or more runs into a PNG: loss, eval top-1, learning rate, images/s.

The code is vision_jax/cli/plot_metrics.py; `python -m vision_jax.cli.plot_metrics` and the console
command in setup.cfg run the same. `python tools/plot_metrics.py --help` lists the options.
"""

from vision_jax.cli.common import script

script(__name__, "plot_metrics")
