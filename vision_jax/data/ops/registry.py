"""The op registry and the function that an op string composes into.

A preprocessing string is a '|'-separated chain of op calls (the syntax is
parsed by `vision_jax.data.opstring`)::

  decode|inception_crop(224)|flip_lr|value_range(-1, 1)

Each name is a registered factory; its arguments are Python literals (numbers,
strings, tuples, lists, None, True/False), positional or keyword, checked
against the factory's signature when the string is parsed. A factory returns an
op, a function of one example's features and a stateless seed (a shape [2]
integer tensor). Ops use only TensorFlow operations, so the same op runs eagerly
and inside `tf.data.Dataset.map` with the same result.

Ops declare what they act on:
  on="image": op(image, seed) -> image, on `features["image"]` unless the call
    passes `key="..."`;
  on="label": the same on `features["label"]`;
  on=None: op(features, seed) -> features.

Seeds: the chain folds each random op's rank among the random ops into the
example's seed, so two random ops never share randomness, inserting a
deterministic op changes nothing, and an example's augmentation depends only on
the seed it is given (the pipeline derives it from the run's seed, the epoch and
the example's position), never on the batch, the thread or the process.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Callable, Sequence

import tensorflow as tf

from vision_jax.data.errors import PreprocessError
from vision_jax.data.opstring import OpCall, parse

Features = dict[str, tf.Tensor]
Op = Callable[[Features, tf.Tensor], Features]

# Ops after `two_views` run once per view; these offsets keep the views' seeds apart.
_VIEW_SEED_OFFSET = 1 << 20
# ... and these the local crops' (after `local_crops(n)`).
_LOCAL_SEED_OFFSET = 2 << 20
DEFAULT_OUTPUTS = ("image", "label")


@dataclasses.dataclass(frozen=True)
class OpInfo:
  """A registered op factory.

  Attributes:
    name: the name used in op strings.
    factory: builds the op from the call's arguments.
    on: "image", "label" or None (see the module docstring).
    random: whether the op draws from its seed.
  """

  name: str
  factory: Callable[..., Callable]
  on: str | None
  random: bool

  def usage(self) -> str:
    return f"{self.name}{inspect.signature(self.factory)}"

  def summary(self) -> str:
    doc = (inspect.getdoc(self.factory) or "").split("\n")[0]
    return f"{self.usage()}: {doc}"


_REGISTRY: dict[str, OpInfo] = {}


def register(name: str, *, on: str | None = "image", random: bool = False):
  """Decorator that registers an op factory under `name`.

  Args:
    name: the name used in op strings.
    on: "image", "label" or None; see the module docstring.
    random: True if the op uses its seed.

  Returns:
    The decorator; it returns the factory unchanged.
  """
  if on not in ("image", "label", None):
    raise ValueError(f"on must be 'image', 'label' or None, not {on!r}.")

  def decorator(factory):
    if name in _REGISTRY:
      raise ValueError(f"The preprocessing op {name!r} is registered twice.")
    _REGISTRY[name] = OpInfo(name, factory, on, random)
    return factory

  return decorator


def registered_ops() -> list[str]:
  """Sorted names of every registered op."""
  return sorted(_REGISTRY)


def op_info(name: str) -> OpInfo:
  """The registration of `name`; PreprocessError with suggestions if there is none."""
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise PreprocessError(f"Unknown preprocessing op {name!r}.{hint} Registered ops: "
                          f"{', '.join(registered_ops())}.")
  return _REGISTRY[name]


def describe_ops() -> str:
  """One line per registered op: its signature and the first line of its docstring."""
  return "\n".join(_REGISTRY[name].summary() for name in registered_ops())


def build_op(call: OpCall) -> Op:
  """Looks up and instantiates one call; the result acts on a features dict.

  Raises:
    PreprocessError: unknown op, or arguments that the factory rejects.
  """
  info = op_info(call.name)
  kwargs = dict(call.kwargs)
  key = kwargs.pop("key", info.on) if info.on else None
  if info.on and not isinstance(key, str):
    raise PreprocessError(f"{call.text!r}: key must be a string, not {key!r}.")
  signature = inspect.signature(info.factory)
  try:
    signature.bind(*call.args, **kwargs)
  except TypeError as e:
    raise PreprocessError(f"Bad arguments in {call.text!r}: {e}. Usage: {info.usage()}.") from None
  try:
    inner = info.factory(*call.args, **kwargs)
  except (TypeError, ValueError) as e:
    raise PreprocessError(f"Bad arguments in {call.text!r}: {e} Usage: {info.usage()}.") from None
  if info.on is None:
    return inner

  def op(features: Features, seed: tf.Tensor) -> Features:
    if key not in features:
      raise PreprocessError(f"{call.text!r} acts on the feature {key!r}, but the example only "
                            f"has {sorted(features)}.")
    out = dict(features)
    out[key] = inner(features[key], seed)
    return out

  return op


# ---------------------------------------------------------------------------
# The composed function.
# ---------------------------------------------------------------------------
class Preprocess:
  """A parsed op string, callable on one example's features.

  Attributes:
    spec: the op string.
    calls: the parsed calls.
    random: whether any op draws from the seed.
    views: 2 if the chain contains `two_views`, else 1.
    local_views: n if the chain contains `local_crops(n)` (after `two_views`), else 0.
  """

  def __init__(self, spec: str, outputs: Sequence[str] | None = DEFAULT_OUTPUTS):
    """Parses and instantiates `spec`.

    Args:
      spec: the op string.
      outputs: features kept at the end unless the chain ends with `keep(...)`
        (None keeps everything).
    """
    self.spec = spec
    self.calls = parse(spec)
    names = [c.name for c in self.calls]
    for marker in ("two_views", "local_crops"):
      if names.count(marker) > 1:
        raise PreprocessError(f"{marker} appears more than once in {spec!r}.")
    split = names.index("two_views") if "two_views" in names else len(names)
    local = names.index("local_crops") if "local_crops" in names else len(names)
    if local < split:
      raise PreprocessError(f"local_crops must come after two_views in {spec!r}: the ops "
                            "between them make the two global crops, those after it the local ones.")
    # Random ops are numbered in order and that number is folded into the seed,
    # so deterministic ops (decode, resize...) can be added without changing the
    # augmentation: "decode|inception_crop(224)" crops like "inception_crop(224)".
    self._before = self._numbered(self.calls[:split])
    self._after = self._numbered(self.calls[split + 1:local]) if split < len(names) else []
    self._local = self._numbered(self.calls[local + 1:]) if local < len(names) else []
    self.views = 2 if split < len(names) else 1
    self.local_views = (self._local_count(self.calls[local], spec) if local < len(names)
                        else 0)
    self.random = any(op_info(n).random for n in names)
    if names and names[-1] == "keep":
      self._outputs = None
    elif outputs is not None and self.local_views:
      self._outputs = tuple(outputs) + ("local",)
    else:
      self._outputs = outputs

  @staticmethod
  def _local_count(call: OpCall, spec: str) -> int:
    count = build_op(call).count
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
      raise PreprocessError(f"local_crops needs a number of crops >= 1, got {count!r} in {spec!r}.")
    return count

  @staticmethod
  def _numbered(calls: Sequence[OpCall]) -> list[tuple[int, Op]]:
    numbered, count = [], 0
    for call in calls:
      numbered.append((count, build_op(call)))
      count += op_info(call.name).random
    return numbered

  def __call__(self, features: Features, seed: tf.Tensor | None = None) -> Features:
    """Runs the chain.

    Args:
      features: one example, e.g. {"image": encoded bytes or uint8 [H, W, C], "label": int}.
      seed: shape [2] integer tensor; None uses a fixed seed (for evaluation).

    Returns:
      The processed features. With `two_views`, "image" is [2, H, W, C]; with
      `local_crops(n)`, "local" is [n, h, w, C] float32 as well.
    """
    seed = tf.constant([0, 0], tf.int64) if seed is None else tf.convert_to_tensor(seed)
    features = dict(features)
    for i, op in self._before:
      features = op(features, tf.random.experimental.stateless_fold_in(seed, i))
    if self.views == 2:
      views = []
      for v in range(2):
        view_seed = tf.random.experimental.stateless_fold_in(seed, _VIEW_SEED_OFFSET + v)
        view = dict(features)
        for i, op in self._after:
          view = op(view, tf.random.experimental.stateless_fold_in(view_seed, i))
        views.append(view)
      shared = features
      features = dict(views[0])
      features["image"] = tf.stack([views[0]["image"], views[1]["image"]])
      if self.local_views:
        # Local crops start again from the features before the split, not from a global view.
        crops = []
        for v in range(self.local_views):
          view_seed = tf.random.experimental.stateless_fold_in(seed, _LOCAL_SEED_OFFSET + v)
          view = dict(shared)
          for i, op in self._local:
            view = op(view, tf.random.experimental.stateless_fold_in(view_seed, i))
          crops.append(tf.cast(view["image"], tf.float32))
        features["local"] = tf.stack(crops)
    if self._outputs is not None:
      features = {k: features[k] for k in self._outputs if k in features}
    return features

  def __repr__(self) -> str:
    return f"Preprocess({self.spec!r})"


def get_preprocess_fn(spec: str, outputs: Sequence[str] | None = DEFAULT_OUTPUTS) -> Preprocess:
  """Builds the function of an op string; errors in the string raise PreprocessError here."""
  return Preprocess(spec, outputs)
