"""One HTML page that says how far a model's attribution maps can be trusted.

The code is vision_jax/cli/explain_report.py; `python -m vision_jax.cli.explain_report` and the
console command in setup.cfg run the same. `python tools/explain_report.py --help` lists the
options.
"""

from vision_jax.cli.common import script

script(__name__, "explain_report")
