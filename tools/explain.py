"""Attribution heatmaps over images: an overlay PNG per image, at the photograph's own size.

The code is vision_jax/cli/explain.py; `python -m vision_jax.cli.explain` and the console
command in setup.cfg run the same. `python tools/explain.py --help` lists the options.
"""

import sys

from vision_jax.cli import explain as _tool
from vision_jax.cli.common import run

if __name__ == "__main__":
  sys.exit(run(_tool.main))
else:  # `import explain` with tools/ on the path (tests, notebooks) gets the tool's module itself
  sys.modules[__name__] = _tool
