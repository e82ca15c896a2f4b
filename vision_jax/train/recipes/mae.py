"""The MAE recipe (He et al. 2021): masked-autoencoder pretraining of a ViT.

The model is `mae.MAEModel`: the registered `config.model.name` (a plain ViT,
built with num_classes=0 and its overrides) as `mae.MAEEncoder`, which keeps
the classifier's parameter layout, plus `mae.MAEDecoder` (`config.mae.decoder`:
width, depth, num_heads, mlp_dim). Step: `mae.mae_train_step` (random masking
at `config.mae.mask_ratio`, normalised-pixel loss with `config.mae.norm_pix_loss`).
Evaluation: class-token features of the unmasked encoder, kNN at every eval
and a linear probe at the final one (`ssl_monitor`; config.mae.knn, .linear,
.memory_split). Fine-tuning: `init_from` the MAE workdir into the same ViT
with a classifier (configs/transfer.py, with config.optimizer.layer_decay): the
encoder loads, the decoder (params['head']) is dropped.
"""

from __future__ import annotations

import functools
from typing import Any

from vision_jax import models
from vision_jax.config_util import ConfigError
from vision_jax.train import mae as mae_lib
from vision_jax.train.recipes import ssl_monitor
from vision_jax.train.recipes.base import Recipe, model_overrides, register_recipe


def build_model(config: Any, dtype: Any) -> mae_lib.MAEModel:
  """`MAEModel` from config.model (a plain ViT) and config.mae."""
  vit = models.create_model(config.model.name, num_classes=0, dtype=dtype,
                            **model_overrides(config))
  try:
    encoder = mae_lib.MAEEncoder.from_vit(vit)
  except ValueError as e:
    raise ConfigError(f"config.model.name={config.model.name!r}: {e} Choose a vit_* model "
                      "without '_r' (e.g. vit_base_patch16_224).") from None
  block = config.mae
  decoder = dict(block.get("decoder", None) or {})
  width = int(decoder.get("width", 512))
  channels = int(block.get("channels", 3))
  head = mae_lib.MAEDecoder(
      num_patches=(encoder.img_size // encoder.patch_size) ** 2,
      patch_pixels=encoder.patch_size ** 2 * channels, width=width,
      depth=int(decoder.get("depth", 8)), num_heads=int(decoder.get("num_heads", 16)),
      mlp_dim=int(decoder.get("mlp_dim", 4 * width)), attention_impl=encoder.attention_impl,
      dtype=dtype)
  return mae_lib.MAEModel(encoder=encoder, head=head,
                          mask_ratio=float(block.get("mask_ratio", 0.75)),
                          features=str(block.get("features", "token")))


class MAE(Recipe):
  """Masked-autoencoder pretraining of a ViT; kNN and linear-probe monitors."""

  name = "mae"
  zero_head_on_load = False
  checkpoint_tag = "mae"

  def check(self, config: Any, dataset: Any = None) -> None:
    if "mae" not in config:
      raise ConfigError("recipe='mae' needs a config.mae block (mask_ratio, decoder, channels); "
                        "see configs/mae_digits.py.")
    ratio = config.mae.get("mask_ratio", 0.75)
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
      raise ConfigError(f"config.mae.mask_ratio={ratio!r}: must be in [0, 1) (0.75 in the paper).")
    features = config.mae.get("features", "token")
    if features not in mae_lib.FEATURES:
      raise ConfigError(f"config.mae.features={features!r}: use 'token' (the class token) or "
                        "'avg' (the mean of the patch tokens).")
    ssl_monitor.check_pretraining(config, self.name)
    if dataset is None:  # the config-only pass (config_check); the trainer passes the data
      return
    if getattr(dataset, "views", 1) != 1:
      raise ConfigError("recipe='mae' reconstructs single images: remove config.data.views=2 "
                        "or 'two_views' from config.data.preprocess_train.")
    sample = next(dataset.eval_iterator(1))["image"]
    channels = int(config.mae.get("channels", 3))
    if sample.shape[-1] != channels:
      raise ConfigError(f"config.mae.channels={channels} but the images have {sample.shape[-1]} "
                        f"channels; set config.mae.channels={sample.shape[-1]}.")

  def build_model(self, config: Any, dataset: Any, dtype: Any):
    del dataset  # no classifier
    return build_model(config, dtype)

  def train_step(self, config: Any, dataset: Any, model, tx, schedule):
    return functools.partial(mae_lib.mae_train_step, model=model, tx=tx, schedule=schedule,
                             norm_pix_loss=bool(config.mae.get("norm_pix_loss", True)),
                             ema_decay=float(config.ema_decay or 0.0))

  def make_eval(self, config: Any, dataset: Any, model, mesh, batch_size: int):
    return ssl_monitor.make_representation_eval(
        config, config.mae, dataset, model, mesh, batch_size,
        lambda state: state.ema_params if state.ema_params is not None else state.params)


register_recipe(MAE())
