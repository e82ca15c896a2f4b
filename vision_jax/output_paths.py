"""Where the command-line tools write: one naming rule for every output option.

  * A name with a file suffix (`--out maps/cat.png`) is a file, written under
    that exact name; its folder is created.
  * A name that ends in '/' or is an existing directory (`--out maps/`) is a
    directory: the tool writes its files in it under names of its own.
  * A name without a suffix that does not exist is a directory too.
  * A file name where the tool has several files to write (several images, for
    example) is an error that says so, and so is a suffix the tool cannot write:
    a name is never silently turned into a directory or given another suffix.

Files that exist are kept unless the tool's --overwrite is given
(`refuse_overwrite`). Plain Python: nothing here imports JAX or TensorFlow.
"""

from __future__ import annotations

import os
from typing import Sequence


class OutputError(ValueError):
  """An output option names something the tool cannot write; the message says what to give."""


def names_a_directory(path: str) -> bool:
  """Whether `path` names a directory under the rule above."""
  if path.endswith(("/", os.sep)) or os.path.isdir(path):
    return True
  return not os.path.exists(path) and not os.path.splitext(os.path.basename(path))[1]


def _check_suffix(path: str, suffixes: Sequence[str], option: str) -> None:
  suffix = os.path.splitext(path)[1]
  if suffix.lower() not in suffixes:
    wanted = " or ".join(suffixes)
    given = f"not {suffix!r}" if suffix else "and this is a file without a suffix"
    raise OutputError(f"{option} {path}: the tool writes {wanted} files, {given}; name a "
                      f"{wanted} file, or a directory (end it with '/').")


def single_file(path: str, default_name: str, suffixes: Sequence[str] = (".png",),
                option: str = "--out") -> str:
  """The path of a tool's one output file (a confusion matrix, a figure, a metrics file).

  Args:
    path: what the user gave: a file name, or a directory to write `default_name` in.
    default_name: the file's name inside a directory.
    suffixes: the suffixes the tool can write (lower case, with the dot).
    option: the option's name, for messages.

  Raises:
    OutputError: a file name with a suffix not in `suffixes`.
  """
  if names_a_directory(path):
    return os.path.join(path, default_name)
  _check_suffix(path, suffixes, option)
  return path


def per_input_files(path: str, names: Sequence[str], suffixes: Sequence[str] = (".png",),
                    option: str = "--out", what: str = "images") -> tuple[list[str], bool]:
  """The paths of one output per input.

  Args:
    path: a file name (allowed for a single input) or a directory.
    names: one file name per input, used inside a directory.
    suffixes: the suffixes the tool can write.
    option: the option's name, for messages.
    what: what the inputs are, for messages ("images").

  Returns:
    (one path per input, whether `path` is a directory).

  Raises:
    OutputError: a file name for several inputs, or a suffix the tool cannot write.
  """
  if names_a_directory(path):
    return [os.path.join(path, n) for n in names], True
  _check_suffix(path, suffixes, option)
  if len(names) != 1:
    raise OutputError(f"{option} {path} names one file, but {len(names)} {what} were given; "
                      f"give a directory (e.g. {option} {os.path.splitext(path)[0]}/) to write "
                      "one file per input there.")
  return [path], False


def input_names(paths: Sequence[str], suffix: str) -> list[str]:
  """One distinct output file name per input path: its name without the folders they share.

  Inputs in one folder keep their stems (`cat.jpg` -> `cat{suffix}`); inputs from
  several folders add the folders below the shared one (`val/cat/1.jpg` and
  `val/dog/1.jpg` -> `cat_1{suffix}`, `dog_1{suffix}`), so that none overwrites
  another.
  """
  if not paths:
    return []
  absolute = [os.path.abspath(p) for p in paths]
  common = os.path.commonpath([os.path.dirname(p) for p in absolute])
  names = []
  for p in absolute:
    stem = os.path.splitext(os.path.relpath(p, common))[0]
    names.append(stem.replace(os.sep, "_") + suffix)
  seen: dict[str, int] = {}
  unique = []
  for name in names:  # same stem, different extensions (cat.png and cat.jpg)
    count = seen[name] = seen.get(name, 0) + 1
    unique.append(name if count == 1 else f"{os.path.splitext(name)[0]}-{count}{suffix}")
  return unique


def refuse_overwrite(paths: Sequence[str | None], overwrite: bool) -> None:
  """Raises FileExistsError naming the first of `paths` that exists, unless `overwrite`."""
  for path in paths:
    if path and os.path.exists(path) and not overwrite:
      raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")


def prepare(path: str) -> str:
  """Creates the folder that `path` (a file) goes into; returns `path`."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  return path
