"""Attention rollout (Abnar & Zuidema, arXiv:2005.00928) for ViTs and ViT-hybrids.

Each block's attention matrix (heads fused by mean, max or min) is mixed with
the identity for the residual connection, A' = (A + I) / 2 (rows still sum to
one), and the matrices are multiplied from the first block to the last. The
class token's row, over the patch tokens, reshaped to the grid, is the map.

The attention weights are not an output of any module, so they are recomputed
from each block's fused qkv projection (captured with flax's
`capture_intermediates`) exactly as `vision_jax.models.vit.Attention` does:
softmax(q k^T / sqrt(head_dim)) in float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.explain import common
from vision_jax.explain.layers import ExplainError, family_of, has_attention

HEAD_FUSIONS = ("mean", "max", "min")


def _is_qkv(module: nn.Module, method_name: str) -> bool:
  return method_name == "__call__" and module.name == "qkv"


def attention_maps(module: nn.Module, variables: Any, images: jax.Array) -> list[jax.Array]:
  """Every block's attention weights, [N, heads, T, T] float32, first block first."""
  _, state = module.apply(variables, images, train=False, capture_intermediates=_is_qkv,
                          mutable=["intermediates"])
  inter = state["intermediates"]
  heads = module.num_heads
  maps = []
  for i in range(module.depth):
    qkv = inter[f"blocks_{i}"]["attn"]["qkv"]["__call__"][0]
    n, t, three_d = qkv.shape
    head_dim = three_d // 3 // heads
    qkv = qkv.reshape(n, t, 3, heads, head_dim).astype(jnp.float32)
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim ** -0.5, k)
    maps.append(jax.nn.softmax(logits, axis=-1))
  return maps


@functools.partial(jax.jit, static_argnames=("module", "head_fusion"))
def _rollout(module: nn.Module, variables: Any, images: jax.Array, head_fusion: str):
  attentions = attention_maps(module, variables, images)
  tokens = attentions[0].shape[-1]
  eye = jnp.eye(tokens, dtype=jnp.float32)
  result = jnp.broadcast_to(eye, (images.shape[0], tokens, tokens))
  for attention in attentions:
    fused = getattr(attention, head_fusion)(axis=1)
    mixed = 0.5 * (fused + eye)
    mixed = mixed / mixed.sum(axis=-1, keepdims=True)
    result = jnp.einsum("nij,njk->nik", mixed, result)
  side = module.grid_size
  prefix = tokens - side * side
  return result[:, 0, prefix:].reshape(images.shape[0], side, side)


def attention_rollout(module: nn.Module, variables: Any, images: Any, targets: Any = None, *,
                      head_fusion: str = "mean", upsample: bool = False) -> jax.Array:
  """Attention rollout maps, one per image.

  Args:
    module: a ViT or ViT-hybrid (`VisionTransformer`).
    variables: its variables (eval mode).
    images: [N, H, W, C] model inputs.
    targets: accepted for a uniform signature and ignored: rollout does not
      depend on the class.
    head_fusion: how the heads of a block are combined: 'mean', 'max' or 'min'.
    upsample: resize to [N, H, W] bilinearly and min-max normalise per image.

  Returns:
    float32 [N, grid, grid] (the class token's rolled-out attention to each
    patch), or [N, H, W] in [0, 1] with `upsample`.

  Raises:
    ExplainError: the model has no self-attention, or `head_fusion` is unknown.
  """
  del targets
  if family_of(module) == "MaxxVit":
    raise ExplainError(
        "attention rollout is not defined for MaxViT / CoAtNet: their block and grid "
        "attention (and CoAtNet's) mix tokens only within windows or one stage, convolutions "
        "and striding mix them between, and there is no class token to read the product "
        "from (docs/explain.md). Use grad_cam, whose default layer is the last stage's output.")
  if not has_attention(module):
    raise ExplainError(
        f"attention rollout needs attention: {family_of(module)} has no self-attention "
        "blocks. Use it with a ViT or ViT-hybrid, or use grad_cam / integrated_gradients.")
  if head_fusion not in HEAD_FUSIONS:
    raise ExplainError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}.")
  images = common.check_images(images)
  maps = _rollout(module, variables, images, head_fusion)
  return common.upsample(maps, images.shape[1:3]) if upsample else maps
