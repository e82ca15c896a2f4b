"""Which intermediate map an attribution method reads, and how it is read.

Grad-CAM needs a layer's activation A and the gradient of the class score with
respect to A. Both are taken without touching the model files:
`flax.linen.intercept_methods` wraps the chosen submodule's `__call__`, records
its output and adds a zero perturbation `delta` to it, so that the gradient with
respect to `delta` is the gradient with respect to the activation.

Layers are named by their module path joined with '/', as in the parameter tree
(`layer4_2`, `blocks_11/norm1`). Default layers per family:

* ResNet: the output of the last block (after its ReLU), timm's `layer4[-1]`.
* BiT ResNetV2 and EfficientNet (V1 and V2): the final norm after its activation
  (`norm` + ReLU, `bn2` + SiLU), the same tensor as timm's `GroupNormAct` /
  `BatchNormAct2d` outputs. The activation is a function, not a module, so its
  output is rebuilt here; the gradient is taken at the classifier's pooled input,
  which the global average pool makes equivalent (see `_FINAL_ACTIVATIONS`).
* ViT and ViT-hybrids: the output of the last block's first LayerNorm, whose
  patch tokens are reshaped to the grid. With class-token pooling the last
  block's *output* patch tokens get no gradient, so a map taken there is empty.
* Any other module: the last submodule whose output is an NHWC feature map.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class ExplainError(ValueError):
  """A bad request to an attribution method: unknown layer, target out of range, wrong model."""


# Appended to a module path, names that module's (first) input instead of its output.
INPUT_SUFFIX = ":input"

# (module class name, layer path) -> the elementwise activation that the model applies
# right after that module and before global average pooling + classifier.
_FINAL_ACTIVATIONS: dict[tuple[str, str], Callable[[jax.Array], jax.Array]] = {
    ("EfficientNet", "bn2"): nn.swish,
    ("EfficientNetV2", "bn2"): nn.swish,
    ("ResNetV2", "norm"): nn.relu,
}


@dataclasses.dataclass(frozen=True)
class TargetLayer:
  """A resolved layer: where to intercept and how to turn its output into an NHWC map.

  Attributes:
    name: the '/'-joined module path.
    path: the same path as a tuple.
    shape: shape of the module's output for the current image shape.
    activation: elementwise function applied after the module (final norms whose
      activation is a plain function); the map is its output.
    head_path: the classifier module that reads the globally pooled map; the
      gradient is injected there when `activation` is set.
    num_prefix_tokens: for a token output [N, T, C], the leading non-grid tokens.
    grid: (h, w) of the token grid, for token outputs.
    read_input: read (and perturb) the module's first input instead of its output.
  """

  name: str
  path: tuple[str, ...]
  shape: tuple[int, ...]
  activation: Callable[[jax.Array], jax.Array] | None = None
  head_path: tuple[str, ...] = ("head",)
  num_prefix_tokens: int = 0
  grid: tuple[int, int] | None = None
  read_input: bool = False

  @property
  def map_shape(self) -> tuple[int, int]:
    """(h, w) of the attribution map this layer gives."""
    return self.grid if self.grid is not None else tuple(self.shape[1:3])


def family_of(module: nn.Module) -> str:
  """The module's class name, which names its family ('ResNet', 'VisionTransformer', ...)."""
  return type(module).__name__


def has_attention(module: nn.Module) -> bool:
  """Whether the model is a ViT or hybrid (has self-attention blocks)."""
  return family_of(module) == "VisionTransformer"


@functools.lru_cache(maxsize=64)
def module_outputs(module: nn.Module, image_shape: tuple[int, ...],
                   image_dtype: Any) -> dict[str, tuple[int, ...]]:
  """Every submodule's `__call__` output shape, by '/'-joined path, in call order.

  The first positional input of each submodule is listed too, as 'path:input'.
  Computed abstractly (nothing is run or allocated); variables are built by
  `init` under `eval_shape`, so the result depends only on the module and shape.
  """
  images = jax.ShapeDtypeStruct(image_shape, image_dtype)
  shapes: dict[str, tuple[int, ...]] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path and isinstance(out, jax.Array):
      name = "/".join(context.module.path)
      if args and isinstance(args[0], jax.Array):
        shapes.setdefault(name + INPUT_SUFFIX, tuple(args[0].shape))
      shapes.setdefault(name, tuple(out.shape))
    return out

  def run(x):
    variables = module.init(jax.random.key(0), x, train=False)
    shapes.clear()  # init also calls every module; keep the apply pass only
    with nn.intercept_methods(record):
      return module.apply(variables, x, train=False)

  jax.eval_shape(run, images)
  return dict(shapes)


def _is_map(shape: tuple[int, ...]) -> bool:
  return len(shape) == 4 and shape[1] > 1 and shape[2] > 1


def _is_tokens(shape: tuple[int, ...]) -> bool:
  return len(shape) == 3 and shape[1] > 1


def available_layers(module: nn.Module, image_shape: tuple[int, ...],
                     image_dtype: Any = jnp.float32) -> list[str]:
  """Names of the layers Grad-CAM can read: NHWC maps and token sequences."""
  outputs = module_outputs(module, tuple(image_shape), jnp.dtype(image_dtype))
  return [name for name, shape in outputs.items()
          if not name.endswith(INPUT_SUFFIX) and (_is_map(shape) or _is_tokens(shape))]


def default_layer(module: nn.Module, image_shape: tuple[int, ...],
                  image_dtype: Any = jnp.float32) -> str:
  """The documented default Grad-CAM layer of the module's family (see module docstring)."""
  family = family_of(module)
  if family == "ResNet":
    return f"layer{len(module.stage_sizes)}_{module.stage_sizes[-1] - 1}"
  if family in ("EfficientNet", "EfficientNetV2"):
    return "bn2"
  if family == "ResNetV2" and module.preact and module.global_pool:
    return "norm"
  if family == "VisionTransformer":
    return f"blocks_{module.depth - 1}/norm1"
  if family == "VGG":
    # The classifier's input: the last conv block after its ReLU and max-pool
    # (torchvision's features[-1], pytorch-grad-cam's advice for VGG).
    return "pre_logits" + INPUT_SUFFIX
  outputs = module_outputs(module, tuple(image_shape), jnp.dtype(image_dtype))
  maps = [name for name, shape in outputs.items()
          if not name.endswith(INPUT_SUFFIX) and _is_map(shape)]
  if not maps:
    raise ExplainError(f"{family} has no submodule with an NHWC feature-map output; pass "
                       "`layer=` with one of: " + ", ".join(available_layers(module, image_shape)))
  return maps[-1]


def resolve_layer(module: nn.Module, layer: str | None, image_shape: tuple[int, ...],
                  image_dtype: Any = jnp.float32) -> TargetLayer:
  """Turns a layer name (None: the family default) into a `TargetLayer`.

  Raises:
    ExplainError: the name is not a submodule with a map or token output; the
      message lists the available names.
  """
  image_shape = tuple(image_shape)
  name = default_layer(module, image_shape, image_dtype) if layer is None else layer.strip("/")
  outputs = module_outputs(module, image_shape, jnp.dtype(image_dtype))
  if name not in outputs or not (_is_map(outputs[name]) or _is_tokens(outputs[name])):
    choices = available_layers(module, image_shape, image_dtype)
    why = ("is not a submodule of" if name not in outputs else
           f"has output shape {outputs[name]}, not a feature map or tokens, in")
    raise ExplainError(
        f"Layer {name!r} {why} {family_of(module)}. Available layers ({len(choices)}; "
        f"append {INPUT_SUFFIX!r} to read a module's input): " + ", ".join(choices))
  shape = outputs[name]
  read_input = name.endswith(INPUT_SUFFIX)
  path = tuple(name[:-len(INPUT_SUFFIX)].split("/") if read_input else name.split("/"))
  if _is_tokens(shape):
    prefix, grid = _token_grid(module, shape[1])
    return TargetLayer(name, path, shape, num_prefix_tokens=prefix, grid=grid,
                       read_input=read_input)
  activation = None if read_input else _FINAL_ACTIVATIONS.get((family_of(module), name))
  return TargetLayer(name, path, shape, activation=activation, read_input=read_input)


def _token_grid(module: nn.Module, num_tokens: int) -> tuple[int, tuple[int, int]]:
  """(prefix tokens, (h, w)) of a token sequence: ViTs know their grid; else the largest square."""
  side = getattr(module, "grid_size", None)
  if not isinstance(side, int) or side * side > num_tokens:
    side = math.isqrt(num_tokens)
  return num_tokens - side * side, (side, side)


def to_map(layer: TargetLayer, x: jax.Array) -> jax.Array:
  """A layer output as an NHWC map: patch tokens are reshaped to the grid."""
  if layer.grid is None:
    return x
  tokens = x[:, layer.num_prefix_tokens:]
  return tokens.reshape(x.shape[0], *layer.grid, x.shape[-1])


def forward_with_layer(module: nn.Module, variables: Any, images: jax.Array, layer: TargetLayer,
                       delta: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Runs the model in eval mode; returns (logits, the layer's NHWC map).

  `delta` (shaped like the layer's output, or like the map for a final
  activation) is added to the activation, so d logits / d delta is the gradient
  with respect to the map.
  """
  store: dict[str, jax.Array] = {}

  def intercept(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    path = context.module.path
    if path == layer.path and layer.read_input:
      first = args[0] + delta.astype(args[0].dtype)
      store["map"] = first
      return next_fun(first, *args[1:], **kwargs)
    if path == layer.path:
      out = next_fun(*args, **kwargs)
      if layer.activation is None:
        out = out + delta.astype(out.dtype)
        store["map"] = out
        return out
      store["map"] = layer.activation(out)
      return out
    if layer.activation is not None and path == layer.head_path:
      # The head reads the global average of the activated map, so adding the
      # spatial mean of delta here equals adding delta to the map itself.
      (pooled,) = args
      pooled = pooled + jnp.mean(delta, axis=(1, 2)).astype(pooled.dtype)
      return next_fun(pooled, **kwargs)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(intercept):
    logits = module.apply(variables, images, train=False)
  if "map" not in store:
    raise ExplainError(f"Layer {layer.name!r} was not called during the forward pass.")
  if logits.ndim != 2:
    raise ExplainError(f"{family_of(module)} returned shape {logits.shape}, not class logits: "
                       "attribution needs a classifier (num_classes > 0).")
  return logits, to_map(layer, store["map"]).astype(jnp.float32)

