"""Errors raised by the data package (kept apart so that every module can import them)."""

from __future__ import annotations

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
