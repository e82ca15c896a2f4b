"""Depthwise convolution that XLA:CPU runs fast, with `nn.Conv`'s parameters.

XLA:CPU lowers a grouped convolution (`feature_group_count == channels`) to a
generic loop that does not vectorise over channels: EfficientNet-B0 trained at
0.10x timm's speed on the development CPU because of it. A k x k depthwise
convolution is also k * k shifted (and, with a stride, strided) slices of the
padded input, each multiplied by one row of the kernel and summed. XLA fuses
those into one elementwise loop over NHWC with channels innermost, which
vectorises; its gradient is again slices, pads and multiply-adds.

`DepthwiseConv` creates the same parameters (`kernel` of shape (k, k, 1, C),
`bias` of shape (C,)) under the same names as the `nn.Conv(feature_group_count=C)`
it replaces, so checkpoints, `from_timm` and parameter counts do not change.
`impl` picks the computation: 'shifted', 'xla' (`lax.conv_general_dilated`,
what nn.Conv runs) or 'auto' (the default): shifted on the CPU, XLA's
convolution on GPUs and TPUs, which have fast depthwise kernels and were not
measured otherwise. tools/benchmark_depthwise.py measures both at the shapes of
EfficientNet-B0 and ConvNeXt-T (docs/efficiency.md has the table).
`VISION_JAX_DEPTHWISE=xla|shifted` overrides 'auto' at trace time, so a
benchmark can time a whole model before and after without another code path;
`use_impl` does the same for a block of code (the ONNX and TFLite exports trace
with 'xla': their runtimes have depthwise kernels of their own, which a grouped
convolution maps to, while the shifted slices stay k * k separate ops there).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ("auto", "shifted", "xla")
ENV_VAR = "VISION_JAX_DEPTHWISE"

Padding = str | Sequence[tuple[int, int]]
# What 'auto' means inside `use_impl` (None: the environment variable, then the backend).
_forced: str | None = None


@contextlib.contextmanager
def use_impl(impl: str) -> Iterator[None]:
  """Within the block, 'auto' resolves to `impl` ('shifted' or 'xla') when modules trace."""
  global _forced  # pylint: disable=global-statement
  if impl not in IMPLS[1:]:
    raise ValueError(f"use_impl: impl must be 'shifted' or 'xla', got {impl!r}.")
  saved, _forced = _forced, impl
  try:
    yield
  finally:
    _forced = saved


def resolve_impl(impl: str = "auto", backend: str | None = None) -> str:
  """'shifted' or 'xla': what `impl` means on `backend` (default: JAX's default backend).

  'auto' reads VISION_JAX_DEPTHWISE first (an explicit 'shifted' or 'xla' is kept).

  Raises:
    ValueError: `impl` or the environment variable is not one of IMPLS.
  """
  if impl == "auto" and _forced is not None:
    return _forced
  if impl == "auto":
    impl = os.environ.get(ENV_VAR, "auto") or "auto"
    if impl not in IMPLS:
      raise ValueError(f"{ENV_VAR}={impl!r}: use one of {IMPLS}, or unset it.")
  if impl not in IMPLS:
    raise ValueError(f"DepthwiseConv: impl must be one of {IMPLS}, got {impl!r}.")
  if impl != "auto":
    return impl
  backend = backend or jax.default_backend()
  # Measured on the CPU only (docs/efficiency.md); accelerators keep their own kernels.
  return "shifted" if backend == "cpu" else "xla"


def explicit_pads(padding: Padding, spatial: Sequence[int], kernel: Sequence[int],
                  strides: Sequence[int]) -> list[tuple[int, int]]:
  """(low, high) pads per spatial axis, as `nn.Conv` computes them for `padding`.

  'SAME' follows TensorFlow (the odd pixel at the end), 'VALID' pads nothing, an
  int pads every side by it, and explicit pairs are kept.
  """
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"DepthwiseConv: padding {padding!r} is not supported; "
                       "use 'SAME', 'VALID', an int or (low, high) pairs.")
    return [tuple(p) for p in lax.padtype_to_pads(spatial, kernel, strides, padding.upper())]
  if isinstance(padding, int):
    return [(padding, padding)] * len(spatial)
  pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
  if len(pads) != len(spatial):
    raise ValueError(f"DepthwiseConv: {len(pads)} padding pairs for {len(spatial)} spatial axes.")
  return pads


def shifted_depthwise(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                      pads: Sequence[tuple[int, int]]) -> jax.Array:
  """Depthwise convolution of NHWC `x` with a (kh, kw, 1, C) kernel as kh * kw multiply-adds.

  Each term is a strided slice of the padded input times one kernel row (C values),
  so XLA fuses the whole sum into one vectorised loop (and its gradient into slices,
  pads and products). Equal to `lax.conv_general_dilated` with feature_group_count=C
  (cross-correlation, as every deep-learning convolution).
  """
  kh, kw = kernel.shape[0], kernel.shape[1]
  sh, sw = strides
  x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  out_h = (x.shape[1] - kh) // sh + 1
  out_w = (x.shape[2] - kw) // sw + 1
  y = None
  for i in range(kh):
    for j in range(kw):
      window = lax.slice(x, (0, i, j, 0),
                         (x.shape[0], i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1,
                          x.shape[3]),
                         (1, sh, sw, 1))
      term = window * kernel[i, j, 0]
      y = term if y is None else y + term
  return y


def xla_depthwise(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                  pads: Sequence[tuple[int, int]]) -> jax.Array:
  """The same convolution as XLA's grouped convolution (what `nn.Conv` runs)."""
  return lax.conv_general_dilated(x, kernel, tuple(strides), [tuple(p) for p in pads],
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=x.shape[-1])


class DepthwiseConv(nn.Module):
  """`nn.Conv(features, kernel_size, feature_group_count=features)` with a choice of path.

  Attributes:
    features: channels in and out (a depthwise convolution keeps them; no multiplier).
    kernel_size: (kh, kw).
    strides: an int or (sh, sw).
    padding: 'SAME' (TensorFlow), 'VALID', an int, or ((top, bottom), (left, right)).
    use_bias: add a per-channel bias (named `bias`, as nn.Conv's).
    dtype: compute dtype (None: the input's, promoted with the parameters', as nn.Conv).
    param_dtype: parameter dtype.
    kernel_init: initialiser of the (kh, kw, 1, features) kernel.
    bias_init: initialiser of the bias.
    impl: 'auto', 'shifted' or 'xla' (see the module docstring).
  """

  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Padding | int = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != self.features:
      raise ValueError(f"DepthwiseConv: expected NHWC input with {self.features} channels, "
                       f"got shape {x.shape}.")
    kernel_size = tuple(self.kernel_size)
    strides = ((self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides))
    kernel = self.param("kernel", self.kernel_init, kernel_size + (1, self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pads = explicit_pads(self.padding, x.shape[1:3], kernel_size, strides)
    if resolve_impl(self.impl) == "shifted":
      y = shifted_depthwise(x, kernel, strides, pads)
    else:
      y = xla_depthwise(x, kernel, strides, pads)
    if bias is not None:
      y = y + bias
    return y
