"""Checks of single config fields, each raising a ConfigError that names the field.

`config_check.validate` runs them over the trainer's fields; a recipe's
`check` runs them over its own block (`config.simclr`), so both report a bad
value in the same words: `config.PATH=VALUE: must be ...; set it in the config
file or with --config.PATH=...`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from vision_jax.config_util import ConfigError


def get_field(node: Any, key: str) -> Any:
  if node is None:
    return None
  if hasattr(node, "get"):
    try:
      return node.get(key, None)
    except (AttributeError, KeyError):
      return None
  return getattr(node, key, None)


def is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


class FieldChecks:
  """Each method checks one field (when it is set) and raises a ConfigError naming it."""

  def __init__(self, config: Any):
    self.config = config

  def value(self, path: str) -> Any:
    node = self.config
    for part in path.split("."):
      node = get_field(node, part)
    return node

  @staticmethod
  def fail(path: str, value: Any, requirement: str) -> None:
    raise ConfigError(f"config.{path}={value!r}: {requirement}; set it in the config file or "
                      f"with --config.{path}=...")

  @staticmethod
  def unset(path: str, requirement: str) -> None:
    raise ConfigError(f"config.{path} is not set: it {requirement}; set it in the config file or "
                      f"with --config.{path}=...")

  def positive_int(self, path: str, required: bool = False, what: str = "") -> None:
    value = self.value(path)
    if value is None:
      if required:
        self.unset(path, f"must be a positive integer{what}")
      return
    if not is_int(value) or value <= 0:
      self.fail(path, value, f"must be a positive integer{what}")

  def non_negative_int(self, path: str, what: str = "") -> None:
    value = self.value(path)
    if value is not None and (not is_int(value) or value < 0):
      self.fail(path, value, f"must be an integer >= 0{what}")

  def number(self, path: str, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False, required: bool = False,
             what: str = "") -> None:
    """A finite number in [low, high] (an end is excluded when *_open)."""
    value = self.value(path)
    if value is None:
      if required:
        self.unset(path, f"must be a number{what}")
      return
    ok = is_number(value) and math.isfinite(value)
    if ok and low is not None:
      ok = value > low if low_open else value >= low
    if ok and high is not None:
      ok = value < high if high_open else value <= high
    if not ok:
      lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
      hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
      if low is not None and high is not None:
        span = f"in {lo}, {hi}"
      elif low is not None:
        span = f"{'>' if low_open else '>='} {low:g}"
      elif high is not None:
        span = f"{'<' if high_open else '<='} {high:g}"
      else:
        span = "finite"
      self.fail(path, value, f"must be a number {span}{what}")

  def boolean(self, path: str) -> None:
    value = self.value(path)
    if value is not None and not isinstance(value, bool):
      self.fail(path, value, "must be True or False")

  def choice(self, path: str, choices: tuple[str, ...], required: bool = False) -> None:
    value = self.value(path)
    if value is None and not required:
      return
    if value not in choices:
      self.fail(path, value, f"choose one of {', '.join(repr(c) for c in choices)}")

  def regex(self, path: str, value: Any = None, where: str | None = None) -> None:
    value = self.value(path) if value is None else value
    if value is None:
      return
    if not isinstance(value, str):
      self.fail(where or path, value, "must be a regular expression (a string)")
    try:
      re.compile(value)
    except re.error as e:
      raise ConfigError(f"config.{where or path}={value!r} is not a valid regular expression "
                        f"({e}); fix it, e.g. 'head/.*' matches the classifier's parameters.") from None

  def regexes(self, path: str) -> None:
    value = self.value(path)
    if value is None:
      return
    if isinstance(value, str):
      self.fail(path, value, "must be a tuple of regular expressions, e.g. ('params/head/.*',), "
                "not a single string")
    for i, item in enumerate(value):
      self.regex(path, item, where=f"{path}[{i}]")
