"""ConvNeXt: parity with timm, weight-import errors, metadata; layer-wise lr decay (ViT, ConvNeXt).

Parity uses random weights with perturbed LayerNorm affines and layer scales (timm starts
gamma at 1e-6, which would hide every block), fp32, eval mode: convnext_atto as registered
(its MLP is stored as 1x1 convs) and a convnext_tiny of reduced depth and width (Linear MLP).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.timm_parity import randomize_norms, relative_error, timm_state_dict
from vision_jax import models
from vision_jax.train import optim
from vision_jax.weights import WeightLoadError, from_timm

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

_TOL = 1e-4
_TINY = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40))  # convnext_tiny's layout, reduced


def _timm_model(name: str, seed: int, **kwargs):
  torch.manual_seed(seed)
  model = timm.create_model(name, pretrained=False, **kwargs).eval()
  randomize_norms(model, seed)
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if pname.endswith("gamma"):
        p.copy_(0.5 + torch.rand(p.shape, generator=g))
  return model


@pytest.fixture(scope="module")
def atto():
  return _timm_model("convnext_atto", seed=0, num_classes=10)


@pytest.mark.parametrize("name,size", [("convnext_atto", 64), ("convnext_tiny", 32)])
def test_parity_with_timm(atto, name, size):
  if name == "convnext_atto":
    model, overrides = atto, {}
  else:
    model = _timm_model(name, seed=1, num_classes=10, **_TINY)
    overrides = dict(depths=_TINY["depths"], widths=_TINY["dims"])
  x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  module, variables = from_timm(f"{name}.fb_in1k", timm_state_dict(model), **overrides)
  assert module.num_classes == 10 and set(variables) == {"params"}
  ours = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, jnp.asarray(x))
  err = relative_error(np.asarray(ours), ref)
  assert err < _TOL, f"{name} @ {size}: relative error {err}"


def test_headless_features_and_load_errors(atto):
  sd = timm_state_dict(atto)
  headless = {k: v for k, v in sd.items() if not k.startswith("head.fc.")}
  module, variables = from_timm("convnext_atto", headless)
  out = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, jnp.zeros((1, 32, 32, 3)))
  assert module.num_classes == 0 and out.shape == (1, 320)
  bad = dict(sd)
  del bad["stages.2.blocks.5.gamma"]
  bad["stages.1.downsample.1.weight"] = bad["stages.1.downsample.1.weight"][:, :, :1]
  with pytest.raises(WeightLoadError) as info:
    from_timm("convnext_atto", bad)
  message = str(info.value)
  assert "missing keys (1)" in message and "stages.2.blocks.5.gamma" in message
  assert "shape mismatches (1)" in message and "stages.1.downsample.1.weight" in message
  # An atto checkpoint under the tiny name: wrong widths everywhere.
  with pytest.raises(WeightLoadError, match=r"convnext_tiny[\s\S]*shape mismatches"):
    from_timm("convnext_tiny", sd)


def test_registry_metadata_and_train_mode():
  assert models.list_models(family="convnext") == [
      "convnext_atto", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny"]
  info = models.model_info("convnext_tiny")
  assert (info.input_size, info.crop_pct, info.interpolation) == (224, 0.875, "bicubic")
  assert "2201.03545" in info.paper and info.classifier == "head"
  # Drop-path acts in training only, and needs the dropout rng there (layer scale 1, so that
  # the dropped branches show).
  module = models.create_model("convnext_atto", num_classes=4, drop_path_rate=0.5,
                               depths=(1, 1, 1, 1), widths=(8, 8, 8, 8), layer_scale_init=1.0)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)), jnp.float32)
  rng = np.random.default_rng(1)  # numpy-filled: compiling the initialisers costs more
  variables = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.3, s.dtype),
      jax.eval_shape(module.init, jax.random.key(0), x))
  apply = jax.jit(lambda v, x, key: module.apply(v, x, train=True, rngs={"dropout": key}))
  a, b = apply(variables, x, jax.random.key(1)), apply(variables, x, jax.random.key(2))
  assert a.shape == (4, 4) and not np.allclose(a, b)
  evaluate = jax.jit(lambda v, x: module.apply(v, x, train=False))
  np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))


# ---------------------------------------------------------------------------------------------
# Layer-wise lr decay.


@functools.lru_cache(maxsize=None)
def _abstract_params(name, size, **kwargs):
  module = models.create_model(name, num_classes=3, **kwargs)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))["params"]


_SMALL_CONVNEXT = dict(depths=(2, 1, 1, 1), widths=(8, 8, 8, 8))


def test_layer_decay_scales_follow_the_rule():
  d = 0.5
  # ViT with 3 blocks: embeddings d^4, block i d^(4 - (i + 1)), final norm and head 1.
  params = _abstract_params("vit_tiny_patch16_224", 32, img_size=32, depth=3)
  scales = optim.layer_decay_scales(params, d)
  assert scales["cls_token"] == scales["pos_embed"] == scales["patch_embed"]["proj"]["kernel"] \
      == d ** 4
  for i in range(3):
    assert scales[f"blocks_{i}"]["attn"]["qkv"]["kernel"] == d ** (3 - i)
  assert scales["norm"]["scale"] == scales["head"]["kernel"] == 1.0
  # ConvNeXt (2, 1, 1, 1 blocks -> L = 5): stem d^6; blocks in order d^5 .. d^1; a
  # stage's downsample with its first block; head norm and head 1.
  params = _abstract_params("convnext_atto", 32, **_SMALL_CONVNEXT)
  scales = optim.layer_decay_scales(params, d)
  assert scales["stem_conv"]["kernel"] == scales["stem_norm"]["scale"] == d ** 6
  order = ["stages_0_blocks_0", "stages_0_blocks_1", "stages_1_blocks_0", "stages_2_blocks_0",
           "stages_3_blocks_0"]
  for layer, block in enumerate(order, start=1):
    assert scales[block]["gamma"] == scales[block]["mlp_fc1"]["kernel"] == d ** (6 - layer)
  assert scales["stages_1_downsample_conv"]["kernel"] == d ** 3
  assert scales["head_norm"]["scale"] == scales["head"]["bias"] == 1.0
  # A ViT hybrid's ResNet backbone is part of the embedding.
  hybrid = optim.layer_decay_scales(_abstract_params("vit_small_r26_s32_224", 64, img_size=64,
                                                     depth=2), d)
  assert hybrid["patch_embed"]["backbone"]["stages_0_blocks_0"]["conv1"]["kernel"] == d ** 3


def test_layer_decay_scales_the_optimizer_updates():
  params = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape, s.dtype),
                                  _abstract_params("convnext_atto", 32, **_SMALL_CONVNEXT))
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  config = {"name": "sgd", "momentum": 0.0, "layer_decay": 0.5}
  tx = optim.make_optimizer(_Config(config), optax.constant_schedule(1.0))
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert float(updates["stem_conv"]["kernel"][0, 0, 0, 0]) == pytest.approx(-0.5 ** 6)
  assert float(updates["stages_3_blocks_0"]["gamma"][0]) == pytest.approx(-0.5)
  assert float(updates["head"]["bias"][0]) == pytest.approx(-1.0)
  with pytest.raises(optim.ConfigError, match="numbered blocks"):
    tx = optim.make_optimizer(_Config(config), optax.constant_schedule(1.0))
    plain = {"dense": {"kernel": jnp.ones((2, 2))}}
    tx.update(plain, tx.init(plain), plain)
  with pytest.raises(optim.ConfigError, match=r"in \(0, 1\]"):
    optim.make_optimizer(_Config(dict(config, layer_decay=1.5)), optax.constant_schedule(1.0))


class _Config(dict):
  """The subset of ConfigDict that make_optimizer reads: .get and attribute access."""

  def __getattr__(self, name):
    return self[name]


def test_flops_convnext_tiny_matches_known_figure():
  from vision_jax.models import flops  # pylint: disable=import-outside-toplevel
  # ConvNeXt-T is 4.5 GMACs at 224 (paper, Table 1): about 9 GFLOPs; XLA's 9.49e9 also
  # counts the LayerNorm, GELU and layer-scale elementwise work.
  assert 8.9e9 < flops.count_flops("convnext_tiny") < 9.8e9
