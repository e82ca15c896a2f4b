"""The one weight-matching core behind every foreign-checkpoint loader.

timm and torchvision state dicts and the google-research `.npz` files differ in
their key names and layouts, but loading each of them is the same job:

1. read from the checkpoint what the architecture is (`infer_architecture`:
   number of classes, depth, ViT image size);
2. build the vision_jax model and the shapes of its variables without
   allocating them (`build_model`, `abstract_variables`);
3. find each of our leaves in the checkpoint and bring it to our layout
   (`match`, with a per-format `lookup` that returns a `Slot`);
4. report every missing, unexpected, mis-shaped and unmapped key in one
   `WeightLoadError` of one format.

Each loader only supplies its lookup (and its name rules); the checks, the
report and the error are written once here, so the loaders cannot drift apart.
Export (`to_npz`) checks the variables it is given with `check_variables`,
which reports in the same format.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vision_jax import models

Path = tuple[str, ...]
Shape = tuple[int, ...]
Transform = Callable[[np.ndarray], np.ndarray]


# Defined in a plain-Python module so that weights.hub's names parse without JAX.
from vision_jax.weights.errors import WeightLoadError  # noqa: E402,F401  pylint: disable=wrong-import-position


class NoCounterpart(KeyError):
  """Raised by a lookup: this leaf of our variables has no place in the foreign layout.

  `match` catches it and lists the leaf among the unmapped ones; it never reaches
  the caller of a loader.
  """


# ---------------------------------------------------------------------------------------------
# Layout transforms from PyTorch to flax.


def identity(w: np.ndarray) -> np.ndarray:
  return w


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch conv weight (O, I, H, W) -> flax (H, W, I, O); depthwise too."""
  return np.transpose(w, (2, 3, 1, 0))


def dense_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch linear weight (out, in) -> flax (in, out)."""
  return np.transpose(w, (1, 0))


def conv1x1_to_dense(w: np.ndarray) -> np.ndarray:
  """A 1x1 conv used as a linear layer (out, in, 1, 1) -> Dense kernel (in, out)."""
  return dense_kernel(w.reshape(w.shape[0], w.shape[1]))


# ---------------------------------------------------------------------------------------------
# Where one of our leaves lives in a checkpoint.


@dataclasses.dataclass(frozen=True)
class Slot:
  """How one leaf of our variables is stored in a foreign checkpoint.

  Attributes:
    keys: the checkpoint keys that hold the leaf (three for a fused qkv, usually one).
    to_ours: (arrays in `keys` order, our leaf's shape) -> our leaf.
    stored_shapes: the shapes the arrays must have in the checkpoint, when the
      format fixes them (the .npz layout); None checks the shape of what `to_ours`
      returns instead (the PyTorch layouts, whose transforms are transpositions).
  """

  keys: tuple[str, ...]
  to_ours: Callable[[Sequence[np.ndarray], Shape], np.ndarray]
  stored_shapes: tuple[Shape, ...] | None = None

  @classmethod
  def single(cls, key: str, transform: Transform = identity) -> "Slot":
    """One key, brought to our layout by `transform` (a transpose, say)."""
    return cls((key,), lambda arrays, shape: transform(arrays[0]))


Lookup = Callable[[str, Path, Shape], Slot]


@dataclasses.dataclass
class MatchReport:
  """What did not fit, each list already formatted for the error message."""

  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  mismatched: list[str] = dataclasses.field(default_factory=list)
  unmapped: list[str] = dataclasses.field(default_factory=list)

  def __bool__(self) -> bool:
    """True when anything did not fit."""
    return bool(self.missing or self.unexpected or self.mismatched or self.unmapped)

  def text(self) -> str:
    return (listing("missing keys", sorted(self.missing))
            + listing("unexpected keys", sorted(self.unexpected))
            + listing("shape mismatches", sorted(self.mismatched))
            + listing("variables without a counterpart in the checkpoint", sorted(self.unmapped)))


def listing(title: str, items: list[str], limit: int = 25) -> str:
  """'  title (n):' and up to `limit` indented items, one a line; '' when there are none."""
  if not items:
    return ""
  shown = "\n".join(f"    {item}" for item in items[:limit])
  more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
  return f"  {title} ({len(items)}):\n{shown}{more}\n"


def _where(collection: str, path: Path) -> str:
  return f"{collection}/{'/'.join(path)}"


def _squeezed(shape: Sequence[int]) -> Shape:
  return tuple(d for d in shape if d != 1)


def match(target_shapes: Mapping[str, Any], lookup: Lookup, arrays: Mapping[str, np.ndarray],
          *, header: str = "", footer: str = "", ignore: str | None = None,
          accept_size1_dims: bool = False, hint: Callable[["MatchReport"], str] | None = None,
          strict: bool = True) -> tuple[dict[str, Any], MatchReport]:
  """Maps a checkpoint's arrays onto the leaves of `target_shapes`.

  Args:
    target_shapes: our variables' shapes, {collection: tree of ShapeDtypeStruct}
      (what `abstract_variables` returns).
    lookup: (collection, path, leaf shape) -> `Slot`; raises `NoCounterpart` for a
      leaf the format has no place for.
    arrays: the checkpoint, key -> numpy array.
    header: first line(s) of the error: which loader, which model.
    footer: last line of the error (how to fix it).
    ignore: regex of checkpoint keys without a counterpart that are dropped silently
      (BatchNorm's num_batches_tracked, say).
    accept_size1_dims: a stored array whose shape differs from `Slot.stored_shapes`
      only by size-1 dimensions (a (1, 1, 1, C) GroupNorm gamma) is reshaped.
    hint: report -> extra line(s) for the error (a known foreign layer, say).
    strict: raise when anything does not fit; False only returns the report.

  Returns:
    (variables, report): variables as {collection: nested dict of jnp arrays} in each
    leaf's dtype, and what did not fit.

  Raises:
    WeightLoadError: (strict) keys are missing, unexpected, of the wrong shape, or some
      of our leaves have no counterpart; every one of them is listed.
  """
  report = MatchReport()
  used: set[str] = set()
  variables: dict[str, dict[Path, np.ndarray]] = {}
  for collection, tree in target_shapes.items():
    for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
      where = _where(collection, path)
      leaf_shape = tuple(leaf.shape)
      try:
        slot = lookup(collection, path, leaf_shape)
      except NoCounterpart:
        report.unmapped.append(where)
        continue
      parts, ok = [], True
      expected = slot.stored_shapes or (None,) * len(slot.keys)
      for key, shape in zip(slot.keys, expected):
        if key not in arrays:
          report.missing.append(f"{key}  (for {where})")
          ok = False
          continue
        used.add(key)
        value = np.asarray(arrays[key])
        if shape is not None and value.shape != tuple(shape):
          if accept_size1_dims and _squeezed(value.shape) == _squeezed(shape):
            value = value.reshape(shape)
          else:
            report.mismatched.append(f"{key} {value.shape} -> {where}: expected {tuple(shape)}")
            ok = False
            continue
        parts.append(value)
      if not ok:
        continue
      stored = " ".join(str(p.shape) for p in parts)
      try:
        value = np.asarray(slot.to_ours(parts, leaf_shape))
      except (ValueError, IndexError) as e:  # e.g. a conv transpose of a 1-D array
        report.mismatched.append(f"{' + '.join(slot.keys)} {stored} -> {where}: expected "
                                 f"{leaf_shape}, the layout transform failed ({e})")
        continue
      if tuple(value.shape) != leaf_shape:
        report.mismatched.append(
            f"{' + '.join(slot.keys)} {stored} -> {where}: expected {leaf_shape}, "
            f"got {tuple(value.shape)} after layout transform")
        continue
      variables.setdefault(collection, {})[path] = value.astype(leaf.dtype)
  report.unexpected = sorted(
      k for k in arrays if k not in used and not (ignore and re.fullmatch(ignore, k)))
  if report and strict:
    raise WeightLoadError(header + "\n" + report.text() + (hint(report) if hint else "")
                          + footer)
  # device_put, not jnp.asarray: the latter compiles a conversion per leaf shape on first use
  # (1.5 s of a ResNet-50's 3 s conversion in a new process).
  return {c: traverse_util.unflatten_dict({p: jax.device_put(v) for p, v in leaves.items()})
          for c, leaves in variables.items()}, report


def check_variables(target_shapes: Mapping[str, Any], variables: Mapping[str, Any],
                    header: str) -> None:
  """Raises one WeightLoadError listing every leaf of `variables` that does not fit the model.

  The export counterpart of `match`: the keys are our own '/'-joined paths.
  """
  want = {_where(c, p): tuple(leaf.shape) for c, tree in target_shapes.items()
          for p, leaf in traverse_util.flatten_dict(dict(tree)).items()}
  have = {_where(c, p): tuple(np.shape(leaf)) for c, tree in variables.items()
          for p, leaf in traverse_util.flatten_dict(dict(tree)).items()}
  missing = sorted(k for k in want if k not in have)
  unexpected = sorted(k for k in have if k not in want)
  mismatched = sorted(f"{k}: expected {want[k]}, got {have[k]}" for k in want
                      if k in have and have[k] != want[k])
  if missing or unexpected or mismatched:
    raise WeightLoadError(header + "\n" + listing("missing variables", missing)
                          + listing("unexpected variables", unexpected)
                          + listing("shape mismatches", mismatched))


# ---------------------------------------------------------------------------------------------
# The model the checkpoint belongs to.


def build_model(caller: str, model_name: str, **kwargs: Any):
  """`models.create_model`, with a bad name or argument reported as a WeightLoadError."""
  try:
    return models.create_model(model_name, **kwargs)
  except (TypeError, ValueError) as e:
    raise WeightLoadError(f"{caller}: cannot build {model_name!r}: {e}") from e


def abstract_variables(module, model_name: str, overrides: Mapping[str, Any]):
  """Shapes and dtypes of a module's variables, computed without allocating them.

  The input side is `overrides['img_size']` or the registered input size of `model_name`.
  """
  size = overrides.get("img_size") or models.model_info(model_name).input_size
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(
      lambda x: module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x,
                            train=False), x)


def infer_architecture(shapes: Mapping[str, Sequence[int]], caller: str, *,
                       classifier: tuple[str, int] | None = None,
                       block_pattern: str | None = None,
                       pos_embed: str | None = None,
                       pixels_per_token: int | Callable[[], int] | None = None,
                       prefix_tokens: int = 1) -> dict[str, int]:
  """What a checkpoint says about the architecture: classes, depth, ViT image size.

  Every loader reads these the same way, from the shapes of a few keys:
  - num_classes: `shapes[key][axis]` of the classifier (key, axis); no key: 0 (features);
  - depth: 1 + the largest block index captured by `block_pattern` (group 1) in any key;
  - img_size: the side of the square grid of the position embedding (shape (1, tokens,
    width), `prefix_tokens` class tokens first) times `pixels_per_token` (patch size x
    backbone stride; a callable is only called when the embedding is there).

  Args:
    shapes: checkpoint key -> shape.
    caller: names the loader and the model in error messages.
    classifier: (key, axis) of the classifier weight whose size along `axis` is the
      number of classes; None: do not infer num_classes.
    block_pattern: regex matched at the start of each key; None: no depth.
    pos_embed: key of the position embedding; None: no image size.
    pixels_per_token: side of input that one grid token covers.
    prefix_tokens: tokens of the position embedding that are not on the grid.

  Returns:
    A dict with the keys that could be inferred, ready as `create_model` arguments.

  Raises:
    WeightLoadError: the position embedding's grid is not square.
  """
  out: dict[str, int] = {}
  if classifier is not None:
    key, axis = classifier
    out["num_classes"] = int(shapes[key][axis]) if key in shapes else 0
  if block_pattern is not None:
    blocks = {int(m[1]) for k in shapes if (m := re.match(block_pattern, k))}
    if blocks:
      out["depth"] = max(blocks) + 1
  if pos_embed is not None and pos_embed in shapes and len(shapes[pos_embed]) == 3:
    tokens = int(shapes[pos_embed][1]) - prefix_tokens
    side = math.isqrt(max(tokens, 0))
    if side * side != tokens:
      raise WeightLoadError(
          f"{caller}: the position embedding {pos_embed!r} {tuple(shapes[pos_embed])} has "
          f"{tokens} grid tokens (after {prefix_tokens} class token), not a square grid.")
    per_token = pixels_per_token() if callable(pixels_per_token) else pixels_per_token
    out["img_size"] = side * int(per_token)
  return out


def shapes_of(arrays: Mapping[str, Any]) -> dict[str, Shape]:
  """Key -> shape of a checkpoint (numpy arrays or anything with a .shape)."""
  return {k: tuple(np.shape(v)) for k, v in arrays.items()}


def to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A state dict of numpy arrays, torch tensors (on any device) or array-likes -> numpy."""
  return {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
          for k, v in state_dict.items()}


def classifier_path(model_name: str) -> tuple[str, ...]:
  """Path of the model's classifier inside `params` (its `ModelInfo.classifier`)."""
  return tuple(models.model_info(model_name).classifier.split("/"))


def classifier_classes(params: Mapping[str, Any], model_name: str) -> int | None:
  """Output size of the classifier in `params`; None when the parameters have none."""
  node: Any = params
  for part in classifier_path(model_name):
    node = node.get(part) if hasattr(node, "get") else None
  if node is None or "kernel" not in node:
    return None
  return int(np.shape(node["kernel"])[-1])


@dataclasses.dataclass(frozen=True)
class TimmFamily:
  """How one family of timm models maps onto vision_jax.

  Attributes:
    name: family name, used in messages.
    pattern: regex that a timm model name (without its '.tag') must fully match.
    resolve: (timm_name, state_dict) -> (registry name, create_model overrides),
      e.g. ("vit_base_patch16_224", {"img_size": 384}). `num_classes` is filled
      in from `classifier_key` and must not be returned here.
    classifier_key: timm key of the classifier weight; its first dimension is the
      number of classes (absent key: 0 classes, features only).
    leaf_key: (collection, path) -> (timm key, transform) for each leaf of our
      variables; raises `NoCounterpart` for a leaf timm has no key for.
    ignore: regex of timm keys that have no counterpart and are dropped silently
      (BatchNorm's num_batches_tracked, say).
  """

  name: str
  pattern: str
  resolve: Callable[[str, Mapping[str, np.ndarray]], tuple[str, dict[str, Any]]]
  classifier_key: str | Callable[[str], str]
  leaf_key: Callable[[str, Path], tuple[str, Transform]]
  ignore: str = r".*num_batches_tracked$"


def load_state_dict(caller: str, model_name: str, sd: Mapping[str, np.ndarray],
                    leaf_key: Callable[[str, Path], tuple[str, Transform]],
                    kwargs: Mapping[str, Any], dtype: Any = jnp.float32,
                    ignore: str | None = None, footer: str = ""):
  """Builds `model_name(**kwargs)` and fills it from a PyTorch-layout state dict.

  Shared by `from_timm` and `from_torchvision`: one key per leaf, found by `leaf_key`.

  Returns:
    (module, variables).

  Raises:
    WeightLoadError: the model cannot be built, or the state dict does not fit it.
  """
  kwargs = dict(kwargs)
  module = build_model(caller, model_name, dtype=dtype, **kwargs)
  shapes = abstract_variables(module, model_name, kwargs)

  def lookup(collection: str, path: Path, shape) -> Slot:
    del shape  # PyTorch layouts are checked after the transform
    return Slot.single(*leaf_key(collection, path))

  num_classes = kwargs.pop("num_classes", None)
  header = (f"{caller}: the state dict does not fit vision_jax model {model_name!r} "
            f"(num_classes={num_classes}, overrides={kwargs}).")
  variables, _ = match(shapes, lookup, sd, header=header, footer=footer, ignore=ignore)
  return module, variables
