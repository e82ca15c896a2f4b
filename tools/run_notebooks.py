"""Executes the notebooks of experiments/, with their default settings or in SMOKE mode.

  python tools/run_notebooks.py             # every experiments/*.ipynb with its default settings;
                                            # each is rewritten with the new outputs
  python tools/run_notebooks.py --smoke     # every notebook with SMOKE = True, files left
                                            # untouched: the check CI runs
  python tools/run_notebooks.py experiments/self_supervised.ipynb --set EPOCHS=60

Each notebook runs top to bottom in a fresh Jupyter kernel (nbclient; the
`python3` kernel of this Python unless --kernel says otherwise) with its own
folder as the working directory. --smoke and --set do not edit the notebook's
cells: they add one cell right after the cell tagged `parameters` (papermill's
convention) that assigns the new values, so they override the defaults. A
notebook rewritten after a --set run keeps that cell (tagged
`injected-parameters`), so its reader sees what was changed.

A cell that raises, or runs longer than --timeout seconds, stops its notebook;
the other notebooks still run. Each failure is reported as one line naming the
notebook, the cell number and the exception, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import glob
import os
import resource
import shutil
import sys
import tempfile
import time

from vision_jax.cli.common import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "experiments")
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


class NotebookError(RuntimeError):
  """A notebook cannot be run as asked; the message names it and says why."""


@dataclasses.dataclass
class Result:
  """What happened to one notebook."""

  path: str
  seconds: float
  error: str | None = None
  written: bool = False
  cpu_seconds: float | None = None  # the kernel's (and its children's) user + system time

  @property
  def ok(self) -> bool:
    return self.error is None


def find_notebooks(directory: str = NOTEBOOK_DIR) -> list[str]:
  """The .ipynb files of `directory`, sorted (checkpoints of Jupyter excluded)."""
  return sorted(p for p in glob.glob(os.path.join(directory, "*.ipynb")))


def parse_assignment(text: str) -> tuple[str, str]:
  """'NAME=VALUE' -> (NAME, VALUE), VALUE a Python literal ('EPOCHS=60', 'MODEL="resnet50"')."""
  name, sep, value = text.partition("=")
  name, value = name.strip(), value.strip()
  if not sep or not name.isidentifier():
    raise NotebookError(f"--set {text!r}: write NAME=VALUE, e.g. --set EPOCHS=60.")
  try:
    ast.literal_eval(value)
  except (ValueError, SyntaxError):
    raise NotebookError(f"--set {text!r}: {value!r} is not a Python literal; quote strings, "
                        f"e.g. --set {name}='\"text\"'.") from None
  return name, value


def inject_parameters(nb, assignments: dict[str, str], path: str = "notebook") -> int:
  """Adds a cell assigning `assignments` right after the `parameters` cell; returns its index."""
  import nbformat  # pylint: disable=import-outside-toplevel
  tagged = [i for i, cell in enumerate(nb.cells)
            if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", [])]
  if len(tagged) != 1:
    raise NotebookError(f"{path} has {len(tagged)} cells tagged {PARAMETERS_TAG!r}; it needs "
                        "exactly one (the cell with SMOKE and the sizes), so that --smoke and "
                        "--set know where their values go.")
  source = "# Injected by tools/run_notebooks.py\n" + "".join(
      f"{name} = {value}\n" for name, value in assignments.items())
  cell = nbformat.v4.new_code_cell(source.rstrip("\n"))
  cell.metadata["tags"] = [INJECTED_TAG]
  nb.cells.insert(tagged[0] + 1, cell)
  return tagged[0] + 1


def _error_line(nb, path: str, error: BaseException) -> str:
  """One line: notebook, cell number (from 1, as Jupyter shows), exception and message."""
  for index, cell in enumerate(nb.cells):
    for output in cell.get("outputs", []):
      if output.get("output_type") == "error":
        message = str(output.get("evalue", "")).strip().splitlines()
        return (f"{os.path.relpath(path)} cell {index + 1}: {output.get('ename')}: "
                f"{message[0][:300] if message else ''}")
  text = str(error).strip().splitlines()
  return f"{os.path.relpath(path)}: {type(error).__name__}: {text[-1][:300] if text else ''}"


def run_notebook(path: str, smoke: bool = False, assignments: dict[str, str] | None = None,
                 timeout: int = 1800, kernel_name: str | None = None,
                 write: bool | None = None) -> Result:
  """Executes one notebook in a fresh kernel.

  Args:
    path: the .ipynb file.
    smoke: inject SMOKE = True after the parameters cell; a notebook whose parameters
      cell has a WORKDIR setting also gets a temporary WORKDIR, removed afterwards
      (unless `assignments` gives one).
    assignments: more NAME -> literal values to inject.
    timeout: seconds one cell may run.
    kernel_name: Jupyter kernel (default: the notebook's, else python3).
    write: rewrite the file with its outputs (default: unless `smoke`).

  Returns:
    A Result; its `error` holds the one-line report of a failure.
  """
  import nbformat  # pylint: disable=import-outside-toplevel
  write = (not smoke) if write is None else write
  if smoke and write:
    raise NotebookError("a SMOKE run is a check: its outputs are not written back.")
  nb = nbformat.read(path, as_version=4)
  values = dict(assignments or {})
  scratch = None
  if smoke:
    values["SMOKE"] = "True"
    if "WORKDIR" not in values and any(
        line.startswith("WORKDIR =") for cell in nb.cells
        if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", [])
        for line in cell.source.splitlines()):
      scratch = tempfile.mkdtemp(prefix="run_notebooks_")
      values["WORKDIR"] = repr(scratch)
  try:
    if values:
      inject_parameters(nb, values, path)
    return _execute(nb, path, timeout, kernel_name, write)
  finally:
    if scratch:
      shutil.rmtree(scratch, ignore_errors=True)


def _execute(nb, path: str, timeout: int, kernel_name: str | None, write: bool) -> Result:
  """Runs `nb` (read from `path`) in a fresh kernel; writes it back when `write` and it ran."""
  # pylint: disable=import-outside-toplevel
  import nbformat
  from nbclient import NotebookClient
  from nbclient.exceptions import CellExecutionError, CellTimeoutError
  kernel_name = kernel_name or nb.metadata.get("kernelspec", {}).get("name") or "python3"
  client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, record_timing=False,
                          resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
  start, cpu_start = time.perf_counter(), _children_cpu_seconds()
  error = None
  try:
    client.execute()  # starts the kernel, runs every cell, shuts the kernel down
  except (CellExecutionError, CellTimeoutError) as e:
    error = _error_line(nb, path, e)
  except Exception as e:  # pylint: disable=broad-except
    # The kernel died or could not start: nothing in the notebook says why.
    error = f"{os.path.relpath(path)}: {type(e).__name__}: {str(e).strip()[:300]}"
  result = Result(path, time.perf_counter() - start, error,
                  cpu_seconds=_children_cpu_seconds() - cpu_start)
  if write and error is None:
    nbformat.validate(nb)
    nbformat.write(nb, path)
    result.written = True
  return result


def _children_cpu_seconds() -> float:
  """User + system CPU time of the finished child processes (the kernels) so far."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("notebooks", nargs="*",
                      help="notebooks to run (default: experiments/*.ipynb)")
  parser.add_argument("--smoke", action="store_true",
                      help="set SMOKE = True (seconds per notebook) and do not write outputs")
  parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                      help="override a setting of the parameters cell (repeatable)")
  parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run")
  parser.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's)")
  parser.add_argument("--no-write", action="store_true",
                      help="run with the default settings but leave the files as they are")
  args = parser.parse_args(argv)
  try:
    assignments = dict(parse_assignment(a) for a in args.set)
    paths = args.notebooks or find_notebooks()
    if not paths:
      raise NotebookError(f"no notebook in {NOTEBOOK_DIR}.")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise NotebookError(f"no such notebook: {', '.join(missing)}.")
  except NotebookError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  failures = 0
  total = cpu = 0.0
  for path in paths:
    try:
      result = run_notebook(path, smoke=args.smoke, assignments=assignments, timeout=args.timeout,
                            kernel_name=args.kernel,
                            write=False if (args.smoke or args.no_write) else None)
    except NotebookError as e:
      result = Result(path, 0.0, str(e))
    total += result.seconds
    cpu += result.cpu_seconds or 0.0
    if result.ok:
      size = f", {os.path.getsize(path) / 1e3:.0f} kB written" if result.written else ""
      print(f"ok     {os.path.relpath(path)} in {result.seconds:.1f} s "
            f"({result.cpu_seconds:.1f} s CPU){size}", flush=True)
    else:
      failures += 1
      print(f"FAILED {result.error} (after {result.seconds:.1f} s)", flush=True)
  print(f"{len(paths) - failures} of {len(paths)} notebooks ran in {total:.1f} s, "
        f"{cpu:.1f} s of kernel CPU time" + (" (SMOKE)" if args.smoke else ""))
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(run(main))  # a user error it lets through: one `error:` line (cli.common)
