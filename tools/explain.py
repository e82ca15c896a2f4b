"""Attribution heatmaps over images: an overlay PNG per image, at the photograph's own size.

The code is vision_jax/cli/explain.py; `python -m vision_jax.cli.explain` and the console
command in setup.cfg run the same. `python tools/explain.py --help` lists the options.
"""

from vision_jax.cli.common import script

script(__name__, "explain")
