"""MAE (He et al. 2021, arXiv:2111.06377): masked autoencoders.

A ViT encoder sees only a random 25% of an image's patches; a light transformer
decoder reconstructs the pixels of the other 75% from the encoded patches and
mask tokens; the loss is the mean squared error on the masked patches, of
per-patch normalised pixels. Pieces, pure functions in the style of `simclr.py`:

- `random_masking`: per-sample shuffles (argsort of uniform noise), the kept
  indices, the binary mask and the inverse permutation.
- `MAEEncoder`: our `models.vit.VisionTransformer` (plain, no hybrid backbone),
  the same submodules under the same names (`patch_embed`, `cls_token`,
  `pos_embed`, `blocks_{i}`, `norm`), run on the visible patches only. Without a
  mask it computes exactly `VisionTransformer(num_classes=0)` (tested), so the
  pretrained encoder loads into the classifier for fine-tuning (`init_from`,
  configs/transfer.py) and linear probing.
- `MAEDecoder`: Dense to the decoder width, mask tokens put back in image order,
  learned position embeddings, `decoder_depth` transformer blocks, LayerNorm
  and a Dense to p*p*C pixels per patch.
- `MAEModel`: `params['encoder']` and `params['head']` (the decoder, where
  SimCLR keeps its projection head, so `init_from` drops it the same way).
- `patchify`, `mae_loss`, `mae_train_step`.

Differences from the paper's code: the position embeddings are learned (as our
ViT's), not fixed 2-D sine-cosine; the masking noise comes from the train
state's key folded with the step, so a resumed run masks the same patches.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vision_jax.models import vit as vit_lib
from vision_jax.models.layers import field_values
from vision_jax.train import steps
from vision_jax.train.steps import TrainState


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """(B, H, W, C) -> (B, (H/p)(W/p), p*p*C), patches in row-major order, pixels as (p, p, C)."""
  b, h, w, c = images.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f"patchify: {h}x{w} images do not split into {p}x{p} patches.")
  x = images.reshape(b, h // p, p, w // p, p, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)


def random_masking(rng: jax.Array, batch: int, length: int, mask_ratio: float
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-sample random masking by sorting uniform noise.

  Returns:
    ids_keep: (batch, length_keep) indices of the visible patches, in shuffled order.
    mask: (batch, length) float32, 0 where visible, 1 where masked (image order).
    ids_restore: (batch, length) the inverse permutation (shuffled -> image order).
  """
  keep = int(length * (1.0 - mask_ratio))
  if keep < 1:
    raise ValueError(f"random_masking: mask_ratio={mask_ratio} leaves no visible patch of "
                     f"{length}; use a ratio below {1 - 1 / length:.3f}.")
  noise = jax.random.uniform(rng, (batch, length))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  shuffled_mask = (jnp.arange(length) >= keep).astype(jnp.float32)
  mask = jnp.take_along_axis(jnp.broadcast_to(shuffled_mask, (batch, length)), ids_restore, axis=1)
  return ids_shuffle[:, :keep], mask, ids_restore


class MAEEncoder(vit_lib.ViTEncoderBase):
  """A plain ViT (`vision_jax.models.vit.VisionTransformer`'s layout) on the visible patches.

  Attributes are the ViT encoder's (`vit.ViTEncoderBase`); `from_vit` copies them.
  """

  @classmethod
  def from_vit(cls, vit: vit_lib.VisionTransformer, **kwargs) -> "MAEEncoder":
    """The encoder with `vit`'s architecture (a plain ViT: hybrids are refused)."""
    if not isinstance(vit, vit_lib.VisionTransformer) or vit.backbone_layers is not None:
      raise ValueError(f"MAE needs a plain ViT encoder (vision_jax.models.vit), got "
                       f"{type(vit).__name__}" + (" with a ResNet backbone (a hybrid)"
                                                  if getattr(vit, "backbone_layers", None)
                                                  is not None else "") + ".")
    return cls(**field_values(vit, vit_lib.ViTEncoderBase), **kwargs)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, ids_keep: jax.Array | None = None
               ) -> jax.Array:
    """Encodes the patches `ids_keep` (all patches when None).

    Returns:
      (B, 1 + kept patches, width) tokens after the final LayerNorm, class token first.
    """
    if x.shape[1] != self.img_size or x.shape[2] != self.img_size:
      raise ValueError(f"MAEEncoder was built for {self.img_size}x{self.img_size} inputs, got "
                       f"{x.shape[1]}x{x.shape[2]}.")
    vit_lib.check_attention_impl(self.attention_impl)
    x, grid_h, grid_w = self._patch_tokens(x, train)
    batch = x.shape[0]
    cls_token = self._cls_token()
    pos = self._pos_embed(grid_h * grid_w + 1).astype(self.dtype)
    # Position embeddings are added before masking, so each kept patch keeps its position.
    cls = jnp.broadcast_to(cls_token.astype(self.dtype), (batch, 1, self.width)) + pos[:, :1]
    x = x + pos[:, 1:]
    if ids_keep is not None:
      x = jnp.take_along_axis(x, ids_keep[..., None], axis=1)
    x = jnp.concatenate([cls, x], axis=1)
    return self._layer_norm("norm")(self._encode(x, train))


class MAEDecoder(nn.Module):
  """MAE's light decoder: encoded visible tokens + mask tokens -> pixels of every patch.

  Attributes:
    num_patches: patches per image.
    patch_pixels: p * p * C.
    width: decoder width (512 in the paper).
    depth: decoder blocks (8).
    num_heads: decoder attention heads (16).
    mlp_dim: decoder MLP width (4 x width).
    attention_impl: see `vit.Attention`.
    dtype: compute dtype; the output is float32.
  """

  num_patches: int
  patch_pixels: int
  width: int = 512
  depth: int = 8
  num_heads: int = 16
  mlp_dim: int = 2048
  attention_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, ids_restore: jax.Array, train: bool = False
               ) -> jax.Array:
    """(B, 1 + kept, D_enc) tokens and (B, L) ids_restore -> (B, L, patch_pixels) float32."""
    x = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="embed")(tokens)
    batch, length = ids_restore.shape
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.width),
                            jnp.float32)
    fill = jnp.broadcast_to(mask_token.astype(x.dtype), (batch, length + 1 - x.shape[1],
                                                          self.width))
    patches = jnp.concatenate([x[:, 1:], fill], axis=1)  # shuffled order: visible, then masked
    patches = jnp.take_along_axis(patches, ids_restore[..., None], axis=1)  # image order
    x = jnp.concatenate([x[:, :1], patches], axis=1)
    pos = self.param("pos_embed", nn.initializers.truncated_normal(0.02),
                     (1, self.num_patches + 1, self.width), jnp.float32)
    x = x + pos.astype(x.dtype)
    for i in range(self.depth):
      x = vit_lib.Block(self.num_heads, self.mlp_dim, attention_impl=self.attention_impl,
                        dtype=self.dtype, name=f"blocks_{i}")(x, train)
    x = nn.LayerNorm(epsilon=vit_lib.LN_EPS, dtype=self.dtype, name="norm")(x)
    x = nn.Dense(self.patch_pixels, dtype=self.dtype, param_dtype=jnp.float32, name="pred")(x)
    return x[:, 1:].astype(jnp.float32)


# What `MAEModel(features_only=True)` returns: the class token, or the mean of the patch tokens.
FEATURES = ("token", "avg")


class MAEModel(nn.Module):
  """Masked autoencoder: `MAEEncoder` (params['encoder']) and `MAEDecoder` (params['head']).

  Attributes:
    encoder: the ViT encoder.
    head: the decoder.
    mask_ratio: fraction of the patches hidden from the encoder (0.75).
    features: what `features_only` returns: 'token' (the class token, as
      `VisionTransformer(num_classes=0)` with its default pool) or 'avg' (the
      mean of the patch tokens after the final LayerNorm; the class token gets
      no loss of its own in MAE, and on the digits it probed no better than a
      random encoder's).
  """

  encoder: MAEEncoder
  head: MAEDecoder
  mask_ratio: float = 0.75
  features: str = "token"

  def __call__(self, images: jax.Array, train: bool, features_only: bool = False):
    """(predicted pixels (B, L, p*p*C), mask (B, L)), or the features (float32, `features`).

    The mask is drawn from the 'mask' rng stream ('dropout' when there is none,
    e.g. at init). `features_only` encodes every patch, without masking: the
    class token is the feature of `VisionTransformer(num_classes=0)`.
    """
    if features_only:
      tokens = self.encoder(images, train=train)
      pooled = tokens[:, 0] if self.features == "token" else jnp.mean(tokens[:, 1:], axis=1)
      return pooled.astype(jnp.float32)
    p = self.encoder.patch_size
    length = (images.shape[1] // p) * (images.shape[2] // p)
    rng = self.make_rng("mask") if self.has_rng("mask") else self.make_rng("dropout")
    ids_keep, mask, ids_restore = random_masking(rng, images.shape[0], length, self.mask_ratio)
    tokens = self.encoder(images, train=train, ids_keep=ids_keep)
    return self.head(tokens, ids_restore, train=train), mask


def mae_loss(images: jax.Array, pred: jax.Array, mask: jax.Array, patch_size: int,
             norm_pix_loss: bool = True) -> jax.Array:
  """Mean squared error on the masked patches (float32).

  Args:
    images: (B, H, W, C) the original images.
    pred: (B, L, p*p*C) predicted pixels of every patch.
    mask: (B, L) 1 for masked patches (the only ones that count), 0 for visible.
    patch_size: p.
    norm_pix_loss: targets are each patch's pixels normalised by the patch's
      mean and variance (eps 1e-6), the paper's default.

  Returns:
    sum over masked patches of mean_pixels (pred - target)^2, / number of masked patches.
  """
  target = patchify(images.astype(jnp.float32), patch_size)
  if norm_pix_loss:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    var = jnp.var(target, axis=-1, keepdims=True)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def mae_train_step(state: TrainState, batch: dict[str, jax.Array], *, model: MAEModel,
                   tx: optax.GradientTransformation, schedule: Callable[[Any], Any],
                   norm_pix_loss: bool = True, ema_decay: float = 0.0
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One MAE update on a global batch of single images ({'image': (B, H, W, C)}).

  Returns:
    The new state and metrics: loss, mask_fraction (masked patches / patches),
    grad_norm, learning_rate.
  """
  images = batch["image"]
  if images.ndim != 4:
    raise ValueError(f"mae_train_step: batch['image'] must be (B, H, W, C), got {images.shape}.")
  rng = jax.random.fold_in(state.rng, state.step)
  rngs = {"dropout": jax.random.fold_in(rng, 0), "mask": jax.random.fold_in(rng, 1)}

  def loss_fn(params):
    pred, mask = model.apply({"params": params}, images, train=True, rngs=rngs)
    return mae_loss(images, pred, mask, model.encoder.patch_size, norm_pix_loss), mask

  (loss, mask), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = steps.apply_gradients(state, grads, loss, state.batch_stats, tx=tx,
                                    ema_decay=ema_decay)
  metrics = {"loss": loss, "mask_fraction": jnp.mean(mask), "grad_norm": optax.tree.norm(grads),
             "learning_rate": schedule(state.step)}
  return new_state, metrics
