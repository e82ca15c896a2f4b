"""Errors raised by the data package (kept apart so that every module can import them)."""

from __future__ import annotations

import difflib
import re
from typing import Sequence

from vision_jax.config_util import ConfigError


class DatasetError(ValueError):
  """A data config names something that cannot be read."""


class PreprocessError(DatasetError):
  """A preprocessing string is malformed, names an unknown op or gives it bad arguments."""


class DataCheckError(DatasetError, ConfigError):
  """The data can be read but nothing sensible can be trained on it (one class, an empty
  split, leakage between splits, an input the model reduces to nothing, ...).

  Found before anything is compiled or written; it is also a ConfigError, so the
  command line exits with 2 (nothing was started).
  """


SHOWN = 5  # examples named in a message


def name_list(items: Sequence[str]) -> str:
  """The first SHOWN items, comma-separated, and how many more."""
  items = list(items)
  more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
  return ", ".join(str(i) for i in items[:SHOWN]) + more


def unknown_classes_message(split: str, extra: list[str], classes: list[str]) -> str:
  """'the evaluation split ... has class folder(s) ...', with a guess at misspelt names."""
  def letters(name):
    return re.sub(r"[^a-z]", "", name.lower())

  hints = []
  for name in extra:
    # Names that differ only in digits (class_0, class_9) are different classes, not typos.
    close = [c for c in classes if letters(c) and letters(c) != letters(name) and
             difflib.SequenceMatcher(None, letters(c), letters(name)).ratio() >= 0.6]
    same = [c for c in classes if c != name and c.lower() == name.lower()]
    if same or close:
      hints.append(f"{name!r} looks like {(same or close)[0]!r}")
  hint = f" ({'; '.join(hints)}: a misspelt folder?)" if hints else ""
  return (f"the evaluation split {split!r} has class folder(s) {name_list(extra)} that the "
          f"training split lacks{hint}; the classes are {name_list(classes)}. Rename or remove "
          "those folders.")
