"""The op-string syntax, parsed without TensorFlow (the batch ops of `mix` use it too).

  name | name(literal, ..., key=literal) | ...

'|' separates calls (outside brackets and quotes); arguments are Python
literals: numbers, strings, tuples, lists, None, True, False.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

from vision_jax.data.errors import PreprocessError


@dataclasses.dataclass(frozen=True)
class OpCall:
  """One parsed element of an op string."""

  name: str
  args: tuple[Any, ...]
  kwargs: tuple[tuple[str, Any], ...]
  text: str


def split_ops(spec: str) -> list[str]:
  """Splits an op string on the '|' that are outside brackets and quotes."""
  pieces, depth, quote, start = [], 0, None, 0
  for i, char in enumerate(spec):
    if quote:
      if char == quote:
        quote = None
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
      if depth < 0:
        raise PreprocessError(f"Unbalanced ')' at position {i} of the op string {spec!r}.")
    elif char == "|" and depth == 0:
      pieces.append(spec[start:i])
      start = i + 1
  if depth or quote:
    raise PreprocessError(f"Unclosed bracket or quote in the op string {spec!r}.")
  pieces.append(spec[start:])
  return [p.strip() for p in pieces]


def parse(spec: str) -> list[OpCall]:
  """Parses an op string into calls (names are not looked up here).

  Args:
    spec: e.g. "decode|resize(256)|central_crop(224)". An empty string is an
      empty chain.

  Returns:
    The calls, in order.

  Raises:
    PreprocessError: a piece is not `name` or `name(literal, ..., key=literal)`.
  """
  if not spec or not spec.strip():
    return []
  calls = []
  for piece in split_ops(spec):
    if not piece:
      raise PreprocessError(f"Empty op in the op string {spec!r} (two '|' in a row?).")
    try:
      node = ast.parse(piece, mode="eval").body
    except SyntaxError:
      raise PreprocessError(f"Cannot parse {piece!r} in the op string {spec!r}; write "
                            "name or name(arg, ..., key=value) with literal arguments.") from None
    if isinstance(node, ast.Name):
      calls.append(OpCall(node.id, (), (), piece))
      continue
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
      raise PreprocessError(f"Cannot parse {piece!r} in the op string {spec!r}; write "
                            "name or name(arg, ..., key=value).")
    try:
      args = tuple(ast.literal_eval(a) for a in node.args)
      kwargs = tuple((k.arg, ast.literal_eval(k.value)) for k in node.keywords)
    except ValueError:
      raise PreprocessError(f"The arguments of {piece!r} must be Python literals (numbers, "
                            "strings, tuples, lists, None, True, False).") from None
    if any(k is None for k, _ in kwargs):
      raise PreprocessError(f"{piece!r}: '**' is not supported in op strings.")
    calls.append(OpCall(node.func.id, args, kwargs, piece))
  return calls
