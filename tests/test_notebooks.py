"""The notebooks of experiments/: every cell runs in SMOKE mode; each follows the notebook rules.

The execution test starts one Jupyter kernel per notebook (nbclient) and runs
every cell with SMOKE = True injected after the `parameters` cell, as
`python tools/run_notebooks.py --smoke` does. It fails on any cell error or on
a cell that runs past the timeout. The kernels inherit this run's environment:
the 8 simulated CPU devices and the shared compilation cache of conftest.py.
"""

import hashlib
import os

import nbformat
import pytest

from tests.conftest import ROOT, tool_module  # noqa: E402
NOTEBOOKS = ("finetune_your_images.ipynb", "quickstart.ipynb", "scale_out.ipynb",
             "self_supervised.ipynb")
CELL_TIMEOUT = 600  # seconds; a SMOKE cell takes seconds, a loaded CI machine several times more


def _tool():
  return tool_module("run_notebooks")


def _read(name):
  return nbformat.read(os.path.join(ROOT, "experiments", name), as_version=4)


def test_the_four_notebooks_are_there():
  tool = _tool()
  assert [os.path.basename(p) for p in tool.find_notebooks()] == list(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_follows_the_rules(name):
  """Install cell first, one parameters cell with SMOKE = False, committed outputs, no errors."""
  nb = _read(name)
  first = nb.cells[0] if nb.cells[0].cell_type == "code" else nb.cells[1]
  assert nb.cells.index(first) <= 1, "the install cell comes first (after the title)"
  assert 'SOURCE = ".."' in first.source and "pip\", \"install" in first.source
  assert "jax.default_backend()" in first.source and "jax.devices()" in first.source
  tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1 and "SMOKE = False" in tagged[0].source
  assert not [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), "committed without its plots"
  assert all(c.outputs for c in nb.cells if c.cell_type == "code" and c.source.strip()
             and "SMOKE = False" not in c.source and not c.source.startswith("# The trainer")), \
      "a code cell has no output: run tools/run_notebooks.py to commit the default run"
  assert sum(c.cell_type == "markdown" for c in nb.cells) >= 5, "text cells explain the notebook"
  assert os.path.getsize(os.path.join(ROOT, "experiments", name)) < 1_500_000


def test_smoke_injection_and_error_report(tmp_path):
  tool = _tool()
  nb = nbformat.v4.new_notebook()
  nb.cells = [nbformat.v4.new_code_cell('SMOKE = False\nSTEPS = 10\nWORKDIR = ""'),
              nbformat.v4.new_code_cell(
                  "import os\n"
                  "assert SMOKE and STEPS == 3 and os.path.isdir(WORKDIR), 'not injected'\n"
                  "open(SEEN, 'w').write(WORKDIR)"),
              nbformat.v4.new_code_cell("1 / 0")]
  nb.cells[0].metadata["tags"] = ["parameters"]
  path = str(tmp_path / "broken.ipynb")
  nbformat.write(nb, path)
  before = open(path, "rb").read()
  seen = tmp_path / "workdir.txt"
  result = tool.run_notebook(path, smoke=True, timeout=60,
                             assignments={"STEPS": "3", "SEEN": repr(str(seen))})
  assert not result.ok
  assert "broken.ipynb cell 4: ZeroDivisionError: division by zero" in result.error
  assert open(path, "rb").read() == before, "a SMOKE run must not write the notebook"
  workdir = seen.read_text()  # the temporary WORKDIR the SMOKE run gave it, removed afterwards
  assert os.path.basename(workdir).startswith("run_notebooks_") and not os.path.exists(workdir)
  del nb.cells[0].metadata["tags"]
  nbformat.write(nb, path)
  with pytest.raises(tool.NotebookError, match="0 cells tagged 'parameters'"):
    tool.run_notebook(path, smoke=True)
  with pytest.raises(tool.NotebookError, match="not a Python literal"):
    tool.parse_assignment("MODEL=resnet50")
  assert tool.parse_assignment(" EPOCHS = 60 ") == ("EPOCHS", "60")


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
def test_every_notebook_runs_in_smoke_mode():
  tool = _tool()
  paths = tool.find_notebooks()
  digest = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}
  # Each gets a temporary WORKDIR, removed afterwards (test_smoke_injection_and_error_report).
  results = [tool.run_notebook(p, smoke=True, timeout=CELL_TIMEOUT) for p in paths]
  report = "; ".join(f"{os.path.basename(r.path)} {r.seconds:.0f} s ({r.cpu_seconds:.0f} s CPU)"
                     for r in results)
  print("SMOKE:", report)
  assert [r.error for r in results if not r.ok] == [], report
  assert {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths} == digest
