"""Errors raised by the data package (kept apart so that every module can import them)."""

from __future__ import annotations


class DatasetError(ValueError):
  """A data config names something that cannot be read."""


class PreprocessError(DatasetError):
  """A preprocessing string is malformed, names an unknown op or gives it bad arguments."""
