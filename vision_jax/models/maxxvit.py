"""MaxViT (Tu et al. 2022, arXiv:2204.01697) and CoAtNet (Dai et al. 2021, arXiv:2106.04803).

Both are stacks of four stages after a two-convolution stem (stride 2), each stage
halving the resolution in its first block. The blocks are

* 'C' (MBConv): pre-norm BatchNorm -> 1x1 expand -> BN + act -> depthwise 3x3
  (stride 2 in a stage's first block) -> BN + act -> squeeze-excite -> 1x1 project,
  added to a shortcut that is 2x2 average pooling + 1x1 conv where the block strides;
* 'T' (CoAtNet transformer): norm -> attention over the whole feature map with a
  relative position bias -> MLP, both residual; a stage's first 'T' block pools
  (2x2 average) its normed input and its shortcut;
* 'M' (MaxViT): an MBConv, then block attention (non-overlapping windows of
  P x P tokens) and grid attention (a P x P grid of tokens strided across the
  whole map), each followed by an MLP. P is the image side / 32 (7 at 224).

Every attention adds a learned relative position bias: timm's TF-compatible
table of shape (heads, 2P - 1, 2P - 1) for MaxViT's `_tf_` models, the Swin-style
flat table ((2P - 1)^2, heads) for CoAtNet. The tables are stored for
`rel_pos_img_size` (default: `img_size`); a model built for another resolution
resamples them in the forward pass with the same fixed linear interpolation on
geometrically spaced offsets that timm applies when it loads a checkpoint at a new
size, so a 224 checkpoint runs at 384 exactly as timm's resized one does.

Which of the many small differences between the variants apply (activations,
eps, padding, where SE sits, qkv channel order, ...) is a `Style`; variants are
data: `VARIANTS` maps each name to its depths, widths, block types and style.
Parameter names mirror timm's module tree with '_' where timm has a dotted
index: `stem_conv1`, `stem_norm1`, `stem_conv2`, `stages_{i}_blocks_{j}/...`
(`conv`, `attn_block`, `attn_grid` inside a MaxViT block), `norm` or
`head_norm`/`head_pre_logits`, and the classifier `head` (timm's `head.fc`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.models.depthwise import DepthwiseConv
from vision_jax.models.layers import (DropPath, check_remat, classifier_head, field_values,
                                      global_avg_pool, remat_block)
from vision_jax.models.registry import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, \
    INCEPTION_STD, ModelInfo, register_model
from vision_jax.models.resnet import drop_path_rates
from vision_jax.models.vit import ATTENTION_IMPLS, fused_attention_backend


@dataclasses.dataclass(frozen=True)
class Style:
  """The per-family details that are not sizes (timm's conv_cfg / transformer_cfg).

  Attributes:
    conv_act: activation of the MBConv blocks and the stem ('gelu', 'gelu_tanh', 'silu').
    conv_eps: BatchNorm epsilon of the MBConv blocks and the stem.
    tf_padding: TF 'SAME' padding for the strided 3x3 convolutions (the `_tf_` ports);
      False: symmetric padding 1.
    stride_mode: 'dw' (the depthwise conv strides) or 'pool' (2x2 average pooling
      after the pre-norm).
    expand_output: MBConv hidden width is 4x the output width (else 4x the input).
    conv_output_bias: bias in the MBConv's last 1x1 conv and in its shortcut conv.
    pre_norm_act: activation after the MBConv's pre-norm.
    se_early: squeeze-excite between the depthwise conv and its norm (else after it).
    se_act: activation inside squeeze-excite.
    se_ratio: SE bottleneck width over the output (or, without expand_output, hidden) width.
    attn_act: activation of the transformer MLPs.
    attn_norm: 'layernorm' or 'batchnorm' in the transformer blocks and the final norm.
    attn_eps: epsilon of those norms.
    head_first: qkv channels ordered (head, q|k|v, dim) (else (q|k|v, head, dim)).
    rel_pos_tf: TF-style (heads, 2P-1, 2P-1) bias table (else flat ((2P-1)^2, heads)).
    expand_first: a widening 'T' block's attention already has the output width.
    shortcut_bias: bias in a 'T' block's shortcut conv.
    stem_bias: bias in the stem convolutions.
  """

  conv_act: str = "gelu"
  conv_eps: float = 1e-5
  tf_padding: bool = False
  stride_mode: str = "dw"
  expand_output: bool = True
  conv_output_bias: bool = True
  pre_norm_act: bool = False
  se_early: bool = False
  se_act: str = "silu"
  se_ratio: float = 0.25
  attn_act: str = "gelu"
  attn_norm: str = "layernorm"
  attn_eps: float = 1e-6
  head_first: bool = True
  rel_pos_tf: bool = False
  expand_first: bool = True
  shortcut_bias: bool = True
  stem_bias: bool = False


# The MaxViT paper's models as ported from the official TF code (timm's `_tf_cfg`).
TF_STYLE = Style(conv_act="gelu_tanh", conv_eps=1e-3, tf_padding=True, attn_act="gelu_tanh",
                 attn_eps=1e-5, head_first=False, rel_pos_tf=True, stem_bias=True)
# The CoAtNet paper's layout as timm reads it (coatnet_0 .. coatnet_3).
PAPER_COAT_STYLE = Style()
# timm's own CoAtNet training runs (`_rw_coat_cfg`): SiLU MBConvs with a pre-norm
# activation, hidden width from the input, no output bias, ReLU in SE.
_RW_COAT = dict(conv_act="silu", stride_mode="pool", expand_output=False,
                conv_output_bias=False, pre_norm_act=True, se_act="relu", expand_first=False)
COAT_RW_STYLES = {
    "0": Style(**_RW_COAT, se_early=True, shortcut_bias=False),
    "1": Style(**{**_RW_COAT, "stride_mode": "dw"}, se_early=True, shortcut_bias=False),
    "2": Style(**{**_RW_COAT, "stride_mode": "dw", "se_act": "silu"}),
    "bn_0": Style(**{**_RW_COAT, "stride_mode": "dw"}, se_early=True, shortcut_bias=False,
                  attn_norm="batchnorm"),
    # coatnet_nano_rw follows timm's MaxViT-rw defaults (`_rw_max_cfg`).
    "nano": Style(conv_act="silu", stride_mode="pool", expand_output=False,
                  expand_first=False),
}

_COAT = ("C", "C", "T", "T")
_MAX = ("M",) * 4


@dataclasses.dataclass(frozen=True)
class Variant:
  """Sizes of one model: blocks per stage, widths, block types, stem widths, head."""

  depths: tuple[int, ...]
  embed_dims: tuple[int, ...]
  block_types: tuple[str, ...]
  stem_width: tuple[int, int]
  style: Style
  head_hidden_size: int | None = None


_MAXVIT_SIZES = {  # name: (depths, widths, stem width); MaxViT paper Table 1 / timm.
    "tiny": ((2, 2, 5, 2), (64, 128, 256, 512), 64),
    "small": ((2, 2, 5, 2), (96, 192, 384, 768), 64),
    "base": ((2, 6, 14, 2), (96, 192, 384, 768), 64),
    "large": ((2, 6, 14, 2), (128, 256, 512, 1024), 128),
    "xlarge": ((2, 6, 14, 2), (192, 384, 768, 1536), 192),
}
_COATNET_PAPER = {  # CoAtNet paper Table 3 (C-C-T-T), with timm's stem and head widths.
    "0": ((2, 3, 5, 2), (96, 192, 384, 768), 64),
    "1": ((2, 6, 14, 2), (96, 192, 384, 768), 64),
    "2": ((2, 6, 14, 2), (128, 256, 512, 1024), 128),
    "3": ((2, 6, 14, 2), (192, 384, 768, 1536), 192),
}
_COATNET_RW = {  # timm's own CoAtNets: (depths, widths, stem widths).
    "nano": ((3, 4, 6, 3), (64, 128, 256, 512), (32, 64)),
    "0": ((2, 3, 7, 2), (96, 192, 384, 768), (32, 64)),
    "1": ((2, 6, 14, 2), (96, 192, 384, 768), (32, 64)),
    "2": ((2, 6, 14, 2), (128, 256, 512, 1024), (64, 128)),
    "bn_0": ((2, 3, 7, 2), (96, 192, 384, 768), (32, 64)),
}


def _variants() -> dict[str, tuple[Variant, int]]:
  out = {}
  for size, (depths, dims, stem) in _MAXVIT_SIZES.items():
    for res in (224, 384, 512):
      out[f"maxvit_{size}_tf_{res}"] = (
          Variant(depths, dims, _MAX, (stem, stem), TF_STYLE, head_hidden_size=dims[-1]), res)
  for key, (depths, dims, stem) in _COATNET_PAPER.items():
    out[f"coatnet_{key}_224"] = (
        Variant(depths, dims, _COAT, (stem, stem), PAPER_COAT_STYLE, head_hidden_size=dims[-1]),
        224)
  for key, (depths, dims, stem) in _COATNET_RW.items():
    out[f"coatnet_{key}_rw_224"] = (Variant(depths, dims, _COAT, stem, COAT_RW_STYLES[key]), 224)
  return out


VARIANTS: dict[str, tuple[Variant, int]] = _variants()

# Looked up in `nn` at call time (not bound here), as the other families call `nn.gelu`, so
# that a replacement made while exporting (export/tflite.gelu_tanh for int8) reaches them too.
_ACTS = {"gelu": lambda x: nn.gelu(x, approximate=False),
         "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
         "silu": lambda x: nn.silu(x), "relu": lambda x: nn.relu(x)}  # pylint: disable=unnecessary-lambda
# Truncated normal (std 0.02) for Dense and conv kernels; fine-tuning starts from weights.
_init = nn.initializers.truncated_normal(0.02)


# ---------------------------------------------------------------------------------------------
# Relative position bias and its resampling.


def _geometric_offsets(src: int, dst: int) -> np.ndarray:
  """Source offsets spaced geometrically so that they span the target's range.

  The BEiT/timm rule for resizing a relative-position table of `src` entries per
  axis (2P - 1) to `dst`: offsets near 0 keep unit spacing, far ones stretch.
  """
  left, right = 1.01, 1.5
  while right - left > 1e-6:
    q = (left + right) / 2.0
    if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
      right = q
    else:
      left = q
  dis, cur = [], 1.0
  for i in range(src // 2):
    dis.append(cur)
    cur += q ** (i + 1)
  return np.array([-d for d in reversed(dis)] + [0.0] + dis)


def resample_matrix(src: int, dst: int) -> np.ndarray:
  """(dst, src) linear-interpolation matrix taking a table axis of `src` entries to `dst`.

  Identity when the sizes agree. Targets beyond the outermost source offset take
  the edge value, as timm's interpolator does.
  """
  if src == dst:
    return np.eye(src)
  points = _geometric_offsets(src, dst)
  targets = np.arange(-(dst // 2), dst // 2 + 0.1, 1.0)
  eye = np.eye(src)
  return np.stack([np.interp(targets, points, eye[:, j]) for j in range(src)], axis=1)


class RelativePositionBias(nn.Module):
  """The attention bias between the tokens of a (P, P) window, (1, heads, P^2, P^2).

  The table is stored for a window of `table_window` (timm's key
  `rel_pos.relative_position_bias_table`) and resampled to `window` when they differ.

  Attributes:
    window: side of the window the attention runs over.
    table_window: side of the window the stored table belongs to.
    num_heads: attention heads.
    tf_layout: (heads, 2P-1, 2P-1) table indexed by key - query offsets (timm's
      RelPosBiasTf); else ((2P-1)^2, heads) indexed by query - key (RelPosBias).
  """

  window: int
  table_window: int
  num_heads: int
  tf_layout: bool

  @nn.compact
  def __call__(self) -> jax.Array:
    vocab, table_vocab = 2 * self.window - 1, 2 * self.table_window - 1
    shape = ((self.num_heads, table_vocab, table_vocab) if self.tf_layout
             else (table_vocab * table_vocab, self.num_heads))
    table = self.param("relative_position_bias_table", _init, shape, jnp.float32)
    if not self.tf_layout:
      table = table.T.reshape(self.num_heads, table_vocab, table_vocab)
    if vocab != table_vocab:
      m = jnp.asarray(resample_matrix(table_vocab, vocab), jnp.float32)
      table = jnp.einsum("ya,hab,xb->hyx", m, table, m)
    p = self.window
    pos = np.arange(p)
    # One-hot lookup along one axis: lookup[query, key, offset index]. A product with
    # constants compiles much faster on CPU than a gather, and is exact.
    sign = 1 if self.tf_layout else -1
    lookup = jnp.asarray(np.eye(vocab)[sign * (pos[None, :] - pos[:, None]) + p - 1],
                         jnp.float32)
    bias = jnp.einsum("hab,iya,jxb->hijyx", table, lookup, lookup)
    return bias.reshape(1, self.num_heads, p * p, p * p)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
           implementation: str) -> jax.Array:
  """softmax(q k^T / sqrt(d) + bias) v through `jax.nn.dot_product_attention`.

  (batch, tokens, heads, dim) in and out; cuDNN's fused kernel (which takes the
  bias) where `vit.fused_attention_backend` allows it, XLA's otherwise; the
  softmax is float32 either way.
  """
  bias = bias.astype(q.dtype)
  if implementation == "explicit":
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * q.shape[-1] ** -0.5 + bias.astype(jnp.float32), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(q.dtype), v)
  if implementation == "auto":
    implementation = fused_attention_backend(q.dtype, q.shape[-1])
  return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=implementation)


class Attention(nn.Module):
  """Multi-head attention with a relative position bias over (batch, tokens, width) input.

  Attributes:
    out_width: output width.
    attn_width: width of q, k and v (input or output width, see `Style.expand_first`).
    dim_head: width of each head.
    window: side of the square token window (tokens = window^2).
    table_window: side the bias table is stored for.
    head_first: qkv channel order (see `Style.head_first`).
    tf_layout: bias table layout (see `RelativePositionBias`).
    implementation: 'auto', 'xla', 'cudnn' or 'explicit'.
  """

  out_width: int
  attn_width: int
  dim_head: int
  window: int
  table_window: int
  head_first: bool
  tf_layout: bool
  implementation: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, _ = x.shape
    if self.attn_width % self.dim_head:
      raise ValueError(f"attention width {self.attn_width} is not divisible by dim_head "
                       f"{self.dim_head}.")
    heads = self.attn_width // self.dim_head
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=_init)
    qkv = dense(3 * self.attn_width, name="qkv")(x)
    if self.head_first:
      qkv = qkv.reshape(batch, length, heads, 3, self.dim_head)
      q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    else:
      qkv = qkv.reshape(batch, length, 3, heads, self.dim_head)
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    bias = RelativePositionBias(self.window, self.table_window, heads, self.tf_layout,
                                name="rel_pos")()
    out = attend(q, k, v, bias, self.implementation)
    return dense(self.out_width, name="proj")(out.reshape(batch, length, self.attn_width))


class Mlp(nn.Module):
  """Dense 4C -> act -> Dense C (timm's Mlp, and ConvMlp as 1x1 convs)."""

  act: str
  ratio: float = 4.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=_init)
    x = dense(int(width * self.ratio), name="fc1")(x)
    return dense(width, name="fc2")(_ACTS[self.act](x))


def _norm(kind: str, eps: float, train: bool, dtype: Any, name: str) -> nn.Module:
  if kind == "batchnorm":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=eps, dtype=dtype,
                        param_dtype=jnp.float32, name=name)
  # Two-pass variance, as PyTorch computes it.
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


def _avg_pool2(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _pooled_shortcut(x: jax.Array, out_width: int, use_bias: bool, dtype: Any,
                     param_dtype: Any) -> jax.Array:
  """The shortcut of a striding block: 2x2 average pooling, then a 1x1 conv if the width changes.

  timm's Downsample2d; the conv is `shortcut_expand` of the calling (compact) module.
  """
  x = _avg_pool2(x)
  if x.shape[-1] == out_width:
    return x
  return nn.Conv(out_width, (1, 1), use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                 kernel_init=_init, name="shortcut_expand")(x)


def _pad(style: Style, stride: int) -> Any:
  # timm's 'same' is TF's asymmetric SAME only where it strides; symmetric otherwise.
  return "SAME" if style.tf_padding and stride > 1 else ((1, 1), (1, 1))


def _make_divisible(v: float, divisor: int = 8) -> int:
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


# ---------------------------------------------------------------------------------------------
# Blocks.


class _Block(nn.Module):
  """The settings every MaxViT / CoAtNet block takes, by keyword (`MaxxVit` passes them so).

  Attributes:
    style: the variant's `Style`.
    drop_path_rate: stochastic depth of every residual branch.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  # Keyword-only, so that each block's own fields, which have no defaults, stay positional.
  _: dataclasses.KW_ONLY
  style: Style
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32


class MbConvBlock(_Block):
  """Pre-norm inverted bottleneck: 1x1 expand, depthwise 3x3, squeeze-excite, 1x1 project."""

  out_width: int
  stride: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    s = self.style
    in_width = x.shape[-1]
    mid = _make_divisible((self.out_width if s.expand_output else in_width) * 4.0)
    act = _ACTS[s.conv_act]
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=_init)
    bn = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=s.conv_eps, dtype=self.dtype, param_dtype=jnp.float32)
    shortcut = x
    if self.stride == 2:
      shortcut = _pooled_shortcut(x, self.out_width, s.conv_output_bias, self.dtype,
                                  self.param_dtype)
    x = bn(name="pre_norm")(x)
    if s.pre_norm_act:
      x = act(x)
    dw_stride = 1
    if self.stride == 2 and s.stride_mode == "pool":
      x = _avg_pool2(x)
    elif self.stride == 2:
      dw_stride = 2
    x = act(bn(name="norm1")(conv(mid, (1, 1), name="conv1_1x1")(x)))
    # nn.Conv(feature_group_count=mid)'s parameters, the fast path per backend (models/depthwise).
    x = DepthwiseConv(mid, (3, 3), strides=dw_stride, padding=_pad(s, dw_stride), use_bias=False,
                      dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_init,
                      name="conv2_kxk")(x)
    se_width = int(s.se_ratio * (self.out_width if s.expand_output else mid))
    se = functools.partial(SqueezeExcite, se_width, s.se_act, dtype=self.dtype,
                           param_dtype=self.param_dtype)
    if s.se_early:
      x = act(bn(name="norm2")(se(name="se_early")(x)))
    else:
      x = se(name="se")(act(bn(name="norm2")(x)))
    x = conv(self.out_width, (1, 1), use_bias=s.conv_output_bias, name="conv3_1x1")(x)
    return DropPath(self.drop_path_rate)(x, deterministic=not train) + shortcut


class SqueezeExcite(nn.Module):
  """x * sigmoid(fc2(act(fc1(mean(x))))), the means accumulated in float32."""

  width: int
  act: str
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=_init)
    s = global_avg_pool(x)
    s = dense(x.shape[-1], name="fc2")(_ACTS[self.act](dense(self.width, name="fc1")(s)))
    return x * jax.nn.sigmoid(s)[:, None, None, :]


class _AttentionBlock(_Block):
  """A block with attention ('T', 'M'): `_Block`'s settings and the attention and MLP pair.

  Attributes:
    dim_head: width of each attention head.
    attention_impl: 'auto', 'xla', 'cudnn' or 'explicit' (see `attend`).
  """

  _: dataclasses.KW_ONLY
  dim_head: int
  attention_impl: str = "auto"

  def _attn_norm(self, name: str, train: bool) -> nn.Module:
    return _norm(self.style.attn_norm, self.style.attn_eps, train, self.dtype, name)

  def _attention_then_mlp(self, shortcut: jax.Array, tokens: jax.Array,
                          merge: Callable[[jax.Array], jax.Array], out_width: int,
                          attn_width: int, window: int, table_window: int,
                          train: bool) -> jax.Array:
    """x = shortcut + drop(merge(attn(tokens))), then x + drop(mlp(norm2(x))).

    Args:
      shortcut: the attention branch's residual, (B, H, W, out_width).
      tokens: the normed input grouped for attention, (groups, window^2, width).
      merge: puts the attention output back into `shortcut`'s layout.
      out_width: attention output width.
      attn_width: width of q, k and v.
      window: side of the token window the attention runs over.
      table_window: side the relative position table is stored for.
      train: stochastic depth (and BatchNorm statistics in 'batchnorm' styles).
    """
    s = self.style
    drop = functools.partial(DropPath(self.drop_path_rate), deterministic=not train)
    y = Attention(out_width, attn_width, self.dim_head, window, table_window, s.head_first,
                  s.rel_pos_tf, self.attention_impl, self.dtype, self.param_dtype,
                  name="attn")(tokens)
    x = shortcut + drop(merge(y))
    return x + drop(Mlp(s.attn_act, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="mlp")(self._attn_norm("norm2", train)(x)))


class TransformerBlock(_AttentionBlock):
  """CoAtNet's 'T' block: attention over the whole feature map, then an MLP."""

  out_width: int
  stride: int
  table_side: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    in_width = x.shape[-1]
    if self.stride == 2:
      shortcut = _pooled_shortcut(x, self.out_width, self.style.shortcut_bias, self.dtype,
                                  self.param_dtype)
      y = _avg_pool2(self._attn_norm("norm1_norm", train)(x))
    else:
      shortcut, y = x, self._attn_norm("norm1", train)(x)
    batch, h, w, _ = y.shape
    if h != w:
      raise ValueError(f"CoAtNet attention needs a square feature map, got {h}x{w}.")
    attn_width = self.out_width if self.style.expand_first else in_width
    return self._attention_then_mlp(shortcut, y.reshape(batch, h * w, -1),
                                    lambda t: t.reshape(batch, h, w, -1), self.out_width,
                                    attn_width, h, self.table_side, train)


def _partition(x: jax.Array, p: int, grid: bool) -> jax.Array:
  """(B, H, W, C) -> (B * windows, p * p, C): P x P windows, or a P x P strided grid."""
  b, h, w, c = x.shape
  if grid:  # token (i, j) of a partition sits at (i * H/p + a, j * W/p + b)
    x = x.reshape(b, p, h // p, p, w // p, c).transpose(0, 2, 4, 1, 3, 5)
  else:
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, p * p, c)


def _unpartition(x: jax.Array, p: int, grid: bool, shape: Sequence[int]) -> jax.Array:
  b, h, w, c = shape
  if grid:
    x = x.reshape(b, h // p, w // p, p, p, c).transpose(0, 3, 1, 4, 2, 5)
  else:
    x = x.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


class PartitionAttention(_AttentionBlock):
  """MaxViT's block ('block') or grid ('grid') attention with its MLP, channels last."""

  grid: bool
  window: int
  table_window: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    tokens = _partition(self._attn_norm("norm1", train)(x), self.window, self.grid)
    merge = functools.partial(_unpartition, p=self.window, grid=self.grid, shape=x.shape)
    return self._attention_then_mlp(x, tokens, merge, x.shape[-1], x.shape[-1], self.window,
                                    self.table_window, train)


class MaxVitBlock(_AttentionBlock):
  """MBConv, then block attention, then grid attention (each with its MLP)."""

  out_width: int
  stride: int
  window: int
  table_window: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = MbConvBlock(self.out_width, self.stride, name="conv",
                    **field_values(self, _Block))(x, train)
    _, h, w, _ = x.shape
    if h % self.window or w % self.window:
      raise ValueError(f"MaxViT: a {h}x{w} feature map does not split into {self.window}x"
                       f"{self.window} windows; give an image whose side is a multiple of "
                       f"{32 * self.window} (or set window_size).")
    for name, grid in (("attn_block", False), ("attn_grid", True)):
      x = PartitionAttention(grid, self.window, self.table_window,
                             **field_values(self, _AttentionBlock), name=name)(x, train)
    return x


# ---------------------------------------------------------------------------------------------
# The model.


class MaxxVit(nn.Module):
  """MaxViT and CoAtNet: conv stem, four stages of 'C' / 'T' / 'M' blocks, pooled head.

  Attributes:
    depths: blocks per stage.
    embed_dims: width of each stage.
    block_types: one of 'C', 'T', 'M' per stage.
    stem_width: widths of the two stem convolutions.
    style: the variant's `Style`.
    head_hidden_size: width of the tanh pre-logits layer of the paper heads (pool ->
      LayerNorm -> Dense + tanh -> classifier); None: final norm on the map, pool, classifier.
    dim_head: width of each attention head (32 in every variant).
    img_size: side of the (square) input; sets MaxViT's window and CoAtNet's
      attention extent, and with them the relative position tables.
    rel_pos_img_size: image size the relative position tables are stored for
      (a checkpoint trained at another resolution); None: img_size.
    window_size: MaxViT window / grid side; None: image side / 32.
    num_classes: classifier size; 0 returns the pooled (pre-logits) features.
    dtype: compute dtype; parameters, norms statistics, softmax and logits stay float32.
    param_dtype: parameter dtype.
    drop_rate: dropout before the classifier.
    drop_path_rate: stochastic depth of the last block, linear from 0 over blocks.
    attention_impl: 'auto' (cuDNN's fused kernel where it can run), 'xla', 'cudnn'
      or 'explicit'.
    remat: 'none', 'block' or 'full' (see `layers.REMAT_CHOICES`), per block.
  """

  depths: Sequence[int]
  embed_dims: Sequence[int]
  block_types: Sequence[str]
  stem_width: Sequence[int]
  style: Style
  head_hidden_size: int | None = None
  dim_head: int = 32
  img_size: int = 224
  rel_pos_img_size: int | None = None
  window_size: int | None = None
  num_classes: int = 1000
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  attention_impl: str = "auto"
  remat: str = "none"

  def _window(self, img_size: int) -> int:
    return self.window_size or img_size // 32

  @staticmethod
  def stage_sizes(img_size: int) -> list[int]:
    """Feature-map side after each stage (timm's rounding: the stem halves, stages ceil-halve)."""
    side, sizes = img_size // 2, []
    for _ in range(4):
      side = (side - 1) // 2 + 1
      sizes.append(side)
    return sizes

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits (float32) of NHWC images, or pooled features when num_classes == 0.

    Args:
      x: images, (batch, img_size, img_size, 3).
      train: batch statistics, dropout and stochastic depth.

    Returns:
      (batch, num_classes) logits, or (batch, head_hidden_size or embed_dims[-1]).
    """
    if not len(self.depths) == len(self.embed_dims) == len(self.block_types) == 4:
      raise ValueError("MaxxVit: depths, embed_dims and block_types need 4 stages each, got "
                       f"{self.depths}, {self.embed_dims}, {self.block_types}.")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got "
                       f"{self.attention_impl!r}.")
    check_remat(self.remat, "MaxxVit")
    if x.shape[1:3] != (self.img_size, self.img_size) and "T" in self.block_types:
      raise ValueError(f"CoAtNet attends over the whole feature map, whose bias tables are "
                       f"sized for {self.img_size}x{self.img_size} inputs; got {x.shape[1:3]}. "
                       "Build the model with img_size= the input side.")
    s = self.style
    table_img = self.rel_pos_img_size or self.img_size
    window, table_window = self._window(self.img_size), self._window(table_img)
    table_sides = self.stage_sizes(table_img)
    conv = functools.partial(nn.Conv, use_bias=s.stem_bias, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=_init)
    x = jnp.asarray(x, self.dtype)
    x = conv(self.stem_width[0], (3, 3), strides=2, padding=_pad(s, 2), name="stem_conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=s.conv_eps,
                     dtype=self.dtype, param_dtype=jnp.float32, name="stem_norm1")(x)
    x = _ACTS[s.conv_act](x)
    x = conv(self.stem_width[1], (3, 3), padding=_pad(s, 1), name="stem_conv2")(x)
    classes = {"C": remat_block(MbConvBlock, self.remat),
               "T": remat_block(TransformerBlock, self.remat),
               "M": remat_block(MaxVitBlock, self.remat)}
    rates = iter(drop_path_rates(self.depths, self.drop_path_rate))
    common = dict(style=s, dtype=self.dtype, param_dtype=self.param_dtype)
    for stage, (depth, width, kind) in enumerate(zip(self.depths, self.embed_dims,
                                                    self.block_types)):
      for b in range(depth):
        kw = dict(out_width=width, stride=2 if b == 0 else 1, drop_path_rate=next(rates),
                  name=f"stages_{stage}_blocks_{b}", **common)
        if kind == "T":
          kw.update(dim_head=self.dim_head, table_side=table_sides[stage],
                    attention_impl=self.attention_impl)
        elif kind == "M":
          kw.update(dim_head=self.dim_head, window=window, table_window=table_window,
                    attention_impl=self.attention_impl)
        elif kind != "C":
          raise ValueError(f"MaxxVit: block type {kind!r}; use 'C', 'T' or 'M'.")
        x = classes[kind](**kw)(x, train)
    if self.head_hidden_size:
      x = global_avg_pool(x)
      x = _norm(s.attn_norm, s.attn_eps, train, self.dtype, "head_norm")(x)
      x = nn.Dense(self.head_hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=_init, name="head_pre_logits")(x)
      x = jnp.tanh(x)
    else:
      x = _norm(s.attn_norm, s.attn_eps, train, self.dtype, "norm")(x)
      x = global_avg_pool(x)
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    return classifier_head(x, self.num_classes, self.dtype)


_MAXVIT_PAPER = "MaxViT: Multi-Axis Vision Transformer (Tu et al., ECCV 2022), arXiv:2204.01697"
_COATNET_PAPER_REF = ("CoAtNet: Marrying Convolution and Attention for All Data Sizes "
                      "(Dai et al., NeurIPS 2021), arXiv:2106.04803")
# Reference weights: (timm tag, mean, std, crop_pct), from timm's pretrained configs. The
# paper CoAtNets (coatnet_N_224) have no released weights.
_INC, _IN = (INCEPTION_MEAN, INCEPTION_STD), (IMAGENET_MEAN, IMAGENET_STD)
_WEIGHTS = {"coatnet_nano_rw_224": ("sw_in1k", *_INC, 0.9),
            "coatnet_0_rw_224": ("sw_in1k", *_INC, 0.95),
            "coatnet_1_rw_224": ("sw_in1k", *_INC, 0.95),
            "coatnet_2_rw_224": ("sw_in12k_ft_in1k", *_INC, 0.95),
            "coatnet_bn_0_rw_224": ("sw_in1k", *_IN, 0.95)}


def _weights(name: str, res: int) -> tuple[str | None, Any, Any, float]:
  if not name.startswith("maxvit"):
    return _WEIGHTS.get(name, (None, *_IN, 0.95))
  if res == 224:  # xlarge has ImageNet-21k weights only at 224
    return ("in21k" if "xlarge" in name else "in1k"), *_IN, 0.95
  return ("in21k_ft_in1k" if "xlarge" in name else "in1k"), *_INC, 1.0


def _register() -> None:
  for name, (v, res) in VARIANTS.items():
    maxvit = name.startswith("maxvit")
    tag, mean, std, crop = _weights(name, res)
    source = (f"timm {name}.{tag} (https://huggingface.co/timm/{name}.{tag})" if tag
              else "no released weights (the paper's configuration as timm defines it)")
    paper = _MAXVIT_PAPER if maxvit else _COATNET_PAPER_REF
    if "_rw_" in name:
      paper += "; timm's own '_rw_' configuration"
    register_model(
        functools.partial(MaxxVit, depths=v.depths, embed_dims=v.embed_dims,
                          block_types=v.block_types, stem_width=v.stem_width, style=v.style,
                          head_hidden_size=v.head_hidden_size, img_size=res),
        ModelInfo(name=name, family="maxvit" if maxvit else "coatnet", input_size=res,
                  crop_pct=crop, interpolation="bicubic", mean=mean, std=std,
                  classifier="head", paper=paper, timm_name=name, license="apache-2.0",
                  source=source))


_register()
