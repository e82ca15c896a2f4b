"""ConvNeXt V1 and V2: parity with timm, weight-import errors, metadata; layer-wise lr decay.

Parity uses random weights with perturbed LayerNorm affines and layer scales (timm starts
gamma at 1e-6, which would hide every block), fp32, eval mode: convnext_atto as registered
(its MLP is stored as 1x1 convs) and a convnext_tiny of reduced depth and width (Linear MLP).
ConvNeXt V2 likewise, with random GRN weights (timm starts them at zero, where GRN is the
identity): a reduced convnextv2_tiny loaded by tag from an offline hub cache and a
convnextv2_atto (1x1-conv MLP) of the same reduced layout, both through one compiled apply.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import ROOT
from tests.timm_parity import randomize_norms, relative_error, timm_state_dict
import vision_jax
from vision_jax import config_util, models
from vision_jax.explain import layers as explain_layers
from vision_jax.train import optim
from vision_jax.weights import WeightLoadError, from_timm, hub

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
      if ".grn." in pname:  # V2: zero GRN weights would make it the identity
        p.copy_(0.5 * torch.randn(p.shape, generator=g))
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
  # Only the shape is asserted: a trace does, a compile of the whole atto would add nothing.
  out = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
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
      "convnext_atto", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny",
      "convnextv2_atto", "convnextv2_base", "convnextv2_femto", "convnextv2_huge",
      "convnextv2_large", "convnextv2_nano", "convnextv2_pico", "convnextv2_tiny"]
  info = models.model_info("convnext_tiny")
  assert (info.input_size, info.crop_pct, info.interpolation) == (224, 0.875, "bicubic")
  assert "2201.03545" in info.paper and info.classifier == "head"
  info = models.model_info("convnextv2_tiny")
  assert "2301.00808" in info.paper and info.license == "cc-by-nc-4.0"
  assert "convnextv2_tiny.fcmae_ft_in1k" in info.source and info.timm_name == "convnextv2_tiny"
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


# ---------------------------------------------------------------------------------------------
# ConvNeXt V2.

_V2_TAG = "convnextv2_tiny.fcmae_ft_in1k"
_V2 = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40))  # reduced; atto and tiny alike
_V2_OURS = dict(depths=_V2["depths"], widths=_V2["dims"])


@pytest.fixture(scope="module")
def v2_hub(tmp_path_factory):
  """An offline hub cache holding a reduced convnextv2_tiny under its real tag, and the
  environment that makes `vision_jax.pretrained` read it; yields the timm models."""
  from timm.models._hub import save_for_hf  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("hub_v2")
  tiny = _timm_model("convnextv2_tiny", seed=2, num_classes=10, **_V2)
  atto = _timm_model("convnextv2_atto", seed=3, num_classes=10, **_V2)
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("HF_HUB_CACHE", str(root / "hf"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("VISION_JAX_CACHE", str(root / "vj"))
    saved = root / "saved"
    save_for_hf(tiny, str(saved), safe_serialization=True, model_args={})
    hub.add_to_hub_cache(f"timm/{_V2_TAG}", {n: os.path.join(saved, n)
                                             for n in ("config.json", "model.safetensors")})
    yield {"convnextv2_tiny": tiny, "convnextv2_atto": atto}


def test_v2_parity_by_tag_and_from_timm(v2_hub):
  """GRN, no layer scale and both MLP layouts (Linear in tiny, 1x1 conv in atto) against
  timm; the tiny weights come through `vision_jax.pretrained` by tag."""
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  loaded = vision_jax.pretrained(f"timm:{_V2_TAG}", **_V2_OURS)
  module = loaded.module
  assert (module.grn, module.layer_scale_init, module.num_classes) == (True, None, 10)
  block = loaded.variables["params"]["stages_2_blocks_1"]
  assert "gamma" not in block and block["mlp_grn"]["scale"].shape == (32 * 4,)
  atto_module, atto_variables = from_timm("convnextv2_atto.fcmae_ft_in1k",
                                          timm_state_dict(v2_hub["convnextv2_atto"]), **_V2_OURS)
  assert atto_module == module  # the same architecture: one compiled apply serves both
  apply = jax.jit(lambda v, x: module.apply(v, x, train=False))
  for name, variables in [("convnextv2_tiny", loaded.variables),
                          ("convnextv2_atto", atto_variables)]:
    with torch.no_grad():
      ref = v2_hub[name](torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    err = relative_error(np.asarray(apply(variables, jnp.asarray(x))), ref)
    assert err < 1e-5, f"{name}: relative error {err}"
  # num_classes=0 drops the classifier and returns the pooled, normalised features.
  features = vision_jax.pretrained(f"timm:{_V2_TAG}", num_classes=0, **_V2_OURS)
  assert features.module.num_classes == 0 and "head" not in features.variables["params"]
  out = jax.eval_shape(lambda v, x: features.module.apply(v, x, train=False),
                       features.variables, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert out.shape == (1, 40)


def test_v2_load_errors(atto, v2_hub):
  # A V1 checkpoint under a V2 name: GRN missing, layer scales left over.
  with pytest.raises(WeightLoadError) as info:
    from_timm("convnextv2_atto", timm_state_dict(atto))
  message = str(info.value)
  assert "missing keys (24)" in message and "stages.0.blocks.0.mlp.grn.weight" in message
  assert "unexpected keys (12)" in message and "stages.0.blocks.0.gamma" in message
  # The self-supervised `fcmae` tags have neither head norm nor classifier.
  sd = {k: v for k, v in timm_state_dict(v2_hub["convnextv2_atto"]).items()
        if not k.startswith("head.")}
  with pytest.raises(WeightLoadError, match=r"missing keys \(2\)[\s\S]*head\.norm\.weight"):
    from_timm("convnextv2_atto.fcmae", sd, **_V2_OURS)
  with pytest.raises(WeightLoadError, match="unknown timm model 'convnextv2_small'"):
    from_timm("convnextv2_small", sd)


def test_v2_transfer_recipe_layer_decay_and_default_cam_layer():
  """The family's tools reach V2 through family 'convnext': transfer.py's AdamW with layer
  decay (its GRN parameters decay with their block) and Grad-CAM's default layer."""
  transfer = config_util.load_config_module(os.path.join(ROOT, "configs", "transfer.py"))
  config = transfer.get_config("smoke,model=convnextv2_atto")
  assert (config.optimizer.name, config.optimizer.layer_decay) == ("adamw", 0.8)
  assert config.model.overrides.depths == (1, 1, 1, 1)
  params = _abstract_params("convnextv2_atto", 32, **_SMALL_CONVNEXT)
  scales = optim.layer_decay_scales(params, 0.5)
  assert scales["stages_0_blocks_1"]["mlp_grn"]["scale"] == 0.5 ** 4
  assert scales["stages_3_blocks_0"]["mlp_grn"]["bias"] == 0.5
  # The last block's output, as for V1 (at 64 px its map is 2x2; at 32 px it would be 1x1).
  module = models.create_model("convnextv2_atto", num_classes=3, **_SMALL_CONVNEXT)
  assert explain_layers.default_layer(module, (1, 64, 64, 3)) == "stages_3_blocks_0"


class _Config(dict):
  """The subset of ConfigDict that make_optimizer reads: .get and attribute access."""

  def __getattr__(self, name):
    return self[name]


def test_flops_convnext_tiny_matches_known_figure():
  from vision_jax.models import flops  # pylint: disable=import-outside-toplevel
  # ConvNeXt-T is 4.5 GMACs at 224 (paper, Table 1): about 9 GFLOPs; XLA's 9.49e9 also
  # counts the LayerNorm, GELU and layer-scale elementwise work.
  assert 8.9e9 < flops.count_flops("convnext_tiny") < 9.8e9
