"""Tests of the ViT family: timm parity, counts, weight-import errors, options, pos-embed resize."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.pinned_vit import PARAM_COUNTS
from tests.timm_parity import compare_with_timm, randomize_norms, relative_error, timm_state_dict
from vision_jax import models
from vision_jax.models import vit
from vision_jax.weights import WeightLoadError, from_timm
from vision_jax.weights import timm_vit
from tests import jitted

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

_TOL = 1e-4


@functools.lru_cache(maxsize=None)
def _timm_state_dict(name: str, img_size: int, depth: int) -> dict:
  torch.manual_seed(0)
  model = timm.create_model(name, pretrained=False, img_size=img_size, depth=depth).eval()
  randomize_norms(model)
  return timm_state_dict(model)


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _abstract_init(module, size: int):
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


# --- parity with timm ------------------------------------------------------------------------

@pytest.mark.parametrize("name,size,kwargs", [
    ("vit_tiny_patch16_224", 32, dict(depth=2)),
    ("vit_small_patch32_224", 64, dict(depth=2)),
    # Not registered: imported as vit_base_patch16_224 with patch_size=8.
    ("vit_base_patch8_224", 32, dict(depth=1)),
    # Stem-only hybrid (its timm backbone keys have no 'stem.' level).
    ("vit_tiny_r_s16_p8_224", 64, dict(depth=2)),
])
def test_parity_with_timm(name, size, kwargs):
  err, ours, ref = compare_with_timm(name, size, img_size=size, **kwargs)
  assert ours.shape == ref.shape == (2, 1000)
  assert err < _TOL, f"{name} @ {size}: relative error {err}"


def test_parity_with_timm_resnet_hybrid():
  # R26 backbone with stages, single block; jitted because eager GroupNorm / weight
  # standardisation op-by-op is slow on CPU.
  name, size = "vit_small_r26_s32_224", 64
  torch.manual_seed(1)
  model = timm.create_model(name, pretrained=False, img_size=size, depth=1).eval()
  randomize_norms(model, seed=1)
  x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  module, variables = from_timm(name, timm_state_dict(model))
  assert module.img_size == size and module.depth == 1 and module.backbone_layers == (2, 2, 2, 2)
  ours = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, jnp.asarray(x))
  err = relative_error(np.asarray(ours), ref)
  assert err < _TOL, f"{name} @ {size}: relative error {err}"


# --- the self-supervised checkpoints (feature models, num_classes=0) --------------------------

def _ssl_timm_model(tag: str, seed: int = 0, **kwargs):
  """A reduced timm model of `tag` (random weights, perturbed norms; layer scales, class
  and register tokens drawn from [0.5, 1.5): at their init values of 1e-5 / 1e-6 the
  blocks would be near-identities and hide layout mistakes)."""
  torch.manual_seed(seed)
  model = timm.create_model(tag, pretrained=False, **kwargs).eval()
  randomize_norms(model, seed)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for key, p in model.named_parameters():
      if key.endswith(".gamma") or key in ("cls_token", "reg_token"):
        p.copy_(0.5 + torch.rand(p.shape, generator=g))
  return model


def _features_and_tokens(module, variables, x):
  return jax.jit(lambda v, x: (module.apply(v, x), module.apply(v, x, tokens=True)))(
      variables, jnp.asarray(x))


@pytest.mark.parametrize("tag,size", [
    # The .dino and .mae tags of vit_base_patch16_224 are this architecture at B width
    # (checked at full size by hand: docs/self_supervised.md).
    ("vit_small_patch16_224.dino", 32),
    ("vit_small_patch14_dinov2.lvd142m", 28),
    ("vit_small_patch14_reg4_dinov2.lvd142m", 28),
])
def test_self_supervised_tags_match_timm_features(tag, size):
  model = _ssl_timm_model(tag, img_size=size, depth=1)
  assert model.num_classes == 0  # the tags are feature extractors
  x = np.random.default_rng(2).standard_normal((2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    tokens_ref = model.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    pooled_ref = model.forward_head(tokens_ref, pre_logits=True).numpy()
  module, variables = from_timm(tag, timm_state_dict(model))
  assert module.num_classes == 0 and module.img_size == size
  pooled, tokens = _features_and_tokens(module, variables, x)
  assert relative_error(pooled, pooled_ref) < 1e-5
  assert relative_error(tokens, tokens_ref.numpy()) < 1e-5
  assert tokens.shape[1] == module.num_prefix_tokens + (size // module.patch_size) ** 2


def test_dynamic_img_size_resamples_position_embedding_as_timm():
  # Built for 28 px (2x2 grid of 14 px patches), run on 42 px (3x3): timm resamples the
  # grid-only embedding bicubically; so must we.
  tag = "vit_small_patch14_reg4_dinov2.lvd142m"
  model = _ssl_timm_model(tag, seed=3, img_size=28, depth=1, dynamic_img_size=True)
  x = np.random.default_rng(3).standard_normal((2, 42, 42, 3)).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  module, variables = from_timm(tag, timm_state_dict(model), dynamic_img_size=True)
  pooled, tokens = _features_and_tokens(module, variables, x)
  assert tokens.shape == (2, 5 + 9, 384)
  assert relative_error(pooled, ref) < 1e-5
  with pytest.raises(ValueError, match="dynamic_img_size=True"):
    jitted.apply(from_timm(tag, timm_state_dict(model))[0], variables, x)


def test_avg_pool_with_fc_norm_matches_timm():
  # MAE's fine-tuning layout: mean of the grid tokens, LayerNorm after the pool; the
  # checkpoint's fc_norm tells from_timm.
  torch.manual_seed(4)
  model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1,
                            global_pool="avg").eval()
  randomize_norms(model, 4)
  x = np.random.default_rng(4).standard_normal((2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  module, variables = from_timm("vit_tiny_patch16_224", timm_state_dict(model))
  assert (module.global_pool, module.fc_norm) == ("avg", True)
  assert "fc_norm" in variables["params"] and "norm" not in variables["params"]
  ours = jax.jit(lambda v, x: module.apply(v, x))(variables, jnp.asarray(x))
  assert relative_error(ours, ref) < _TOL
  with pytest.raises(ValueError, match="global_pool"):
    jitted.init(_tiny(global_pool="max"), jax.random.key(0), _X)


def test_self_supervised_tags_load_by_name(tmp_path, monkeypatch):
  # The whole pretrained() path, offline, from a hub cache written by timm's save_for_hf.
  from timm.models._hub import save_for_hf  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import hub  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("VISION_JAX_CACHE", str(tmp_path / "vj"))
  x = np.random.default_rng(5).standard_normal((1, 28, 28, 3)).astype(np.float32)
  tag = "vit_small_patch14_reg4_dinov2.lvd142m"
  model = _ssl_timm_model(tag, img_size=28, depth=1)
  save_for_hf(model, str(tmp_path / tag), safe_serialization=True, model_args={})
  hub.add_to_hub_cache(f"timm/{tag}", {n: str(tmp_path / tag / n)
                                        for n in ("config.json", "model.safetensors")})
  loaded = hub.pretrained(f"timm:{tag}")
  assert loaded.num_classes == 0 and loaded.metadata_from == "config.json"
  assert loaded.model_name == "vit_small_patch14_reg4_dinov2"
  assert (loaded.preprocess_cfg["mean"], loaded.preprocess_cfg["crop_pct"]) == (
      [0.485, 0.456, 0.406], 1.0)
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  ours = jitted.apply(loaded.module, loaded.variables, jnp.asarray(x))
  assert relative_error(ours, ref) < 1e-5


# --- registry, counts, metadata ----------------------------------------------------------------

def test_every_registered_variant_is_pinned():
  assert set(models.list_models(family="vit")) == set(PARAM_COUNTS)
  assert len(PARAM_COUNTS) == 29


@pytest.mark.parametrize("name", [
    "vit_tiny_patch16_224", "vit_large_patch32_224", "vit_base_patch16_384",
    "vit_tiny_r_s16_p8_384", "vit_base_r50_s16_224", "vit_large_r50_s32_224",
])
def test_param_count_matches_timm(name):
  # Every variant is checked by the central test; these cover each kind here too.
  module = models.create_model(name)
  assert _count(_abstract_init(module, models.model_info(name).input_size)) == PARAM_COUNTS[name]


def test_model_info():
  info = models.model_info("vit_base_patch16_384")
  assert (info.input_size, info.crop_pct, info.mean, info.std) == (
      384, 1.0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
  assert info.classifier == "head" and "2010.11929" in info.paper
  assert info.timm_name == "vit_base_patch16_384" and info.license == "apache-2.0"
  info = models.model_info("vit_small_r26_s32_224")
  assert (info.input_size, info.crop_pct) == (224, 0.9)
  for name in models.list_models(family="vit"):
    info = models.model_info(name)
    size = vit.DINOV2_IMG_SIZE if name.endswith("_dinov2") else int(name[-3:])
    assert info.input_size == size and info.source and info.paper
  info = models.model_info("vit_small_patch14_reg4_dinov2")
  assert (info.input_size, info.crop_pct, info.mean) == (518, 1.0, (0.485, 0.456, 0.406))
  assert "2309.16588" in info.paper and info.timm_name == "vit_small_patch14_reg4_dinov2"


def test_vit_config_parses_specs():
  assert vit.vit_config("B/16") == dict(width=768, depth=12, mlp_dim=3072, num_heads=12,
                                        patch_size=16)
  assert vit.vit_config("Ti/8")["patch_size"] == 8
  with pytest.raises(ValueError, match="B/16"):
    vit.vit_config("XL/16")


# --- weight import -----------------------------------------------------------------------------

def test_resolve_reads_image_size_and_depth_from_state_dict():
  def sd(tokens, width, depth):
    out = {"pos_embed": np.zeros((1, tokens, width), np.float32)}
    out.update({f"blocks.{i}.norm1.weight": np.zeros((width,)) for i in range(depth)})
    return out
  # A 224 name holding a 384 checkpoint (24x24 grid of 16px patches).
  assert timm_vit.resolve("vit_base_patch16_224", sd(577, 768, 12)) == (
      "vit_base_patch16_224", {"img_size": 384, "depth": 12})
  assert timm_vit.resolve("vit_base_patch8_224", sd(785, 768, 12)) == (
      "vit_base_patch16_224", {"patch_size": 8, "img_size": 224, "depth": 12})
  # Hybrids: grid x patch x backbone stride (R50 with 3 stages: 16; R26: 32; stem: 4 x p8).
  assert timm_vit.resolve("vit_base_r50_s16_384", sd(577, 768, 12))[1]["img_size"] == 384
  assert timm_vit.resolve("vit_small_r26_s32_224", sd(50, 384, 12))[1]["img_size"] == 224
  assert timm_vit.resolve("vit_tiny_r_s16_p8_384", sd(145, 192, 12))[1]["img_size"] == 384


def test_from_timm_accepts_tags_and_other_resolutions():
  module, variables = from_timm("vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                                _timm_state_dict("vit_tiny_patch16_224", 48, 1))
  assert (module.img_size, module.depth, module.num_classes) == (48, 1, 1000)
  assert variables["params"]["pos_embed"].shape == (1, 10, 192)


def _expect_load_error(name: str, sd: dict, key: str, what: str) -> None:
  with pytest.raises(WeightLoadError) as info:
    from_timm(name, sd)
  message = str(info.value)
  assert what in message and key in message, message


@pytest.mark.parametrize("name,size,keys", [
    ("vit_tiny_patch16_224", 32, ["blocks.0.attn.qkv.weight", "patch_embed.proj.weight"]),
    ("vit_tiny_r_s16_p8_224", 64, ["patch_embed.backbone.norm.weight", "cls_token"]),
    ("vit_small_r26_s32_224", 64,
     ["patch_embed.backbone.stages.1.blocks.0.downsample.conv.weight", "norm.bias"]),
])
def test_from_timm_missing_key(name, size, keys):
  sd = dict(_timm_state_dict(name, size, 1))
  for key in keys:
    del sd[key]
  with pytest.raises(WeightLoadError) as info:
    from_timm(name, sd)
  message = str(info.value)
  assert "missing keys (2)" in message
  for key in keys:
    assert key in message, message


def test_from_timm_unexpected_key():
  sd = dict(_timm_state_dict("vit_tiny_patch16_224", 32, 1))
  sd["blocks.0.attn.q_norm.weight"] = np.ones((64,), np.float32)
  _expect_load_error("vit_tiny_patch16_224", sd, "blocks.0.attn.q_norm.weight",
                     "unexpected keys")


def test_from_timm_wrong_shape():
  sd = dict(_timm_state_dict("vit_tiny_patch16_224", 32, 1))
  sd["blocks.0.mlp.fc1.weight"] = sd["blocks.0.mlp.fc1.weight"][:, :100]
  _expect_load_error("vit_tiny_patch16_224", sd, "blocks.0.mlp.fc1.weight", "shape mismatches")


def test_from_timm_headless_checkpoint_gives_features():
  sd = {k: v for k, v in _timm_state_dict("vit_tiny_patch16_224", 32, 1).items()
        if not k.startswith("head.")}
  module, variables = from_timm("vit_tiny_patch16_224", sd)
  out = jitted.apply(module, variables, jnp.zeros((1, 32, 32, 3)), train=False)
  assert module.num_classes == 0 and out.shape == (1, 192)


# --- module options ----------------------------------------------------------------------------

def _tiny(**kwargs):
  return models.create_model("vit_tiny_patch16_224", img_size=32, depth=2, **kwargs)


_X = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)


@functools.lru_cache(maxsize=None)
def _tiny_variables():
  return jitted.init(_tiny(), jax.random.key(0), _X, train=False)


def test_img_size_sets_the_position_grid_and_input_size():
  variables = _tiny_variables()
  assert variables["params"]["pos_embed"].shape == (1, 1 + 2 * 2, 192)
  assert set(variables) == {"params"}
  with pytest.raises(ValueError, match="img_size=64"):
    jitted.apply(_tiny(), variables, jnp.zeros((1, 64, 64, 3)), train=False)
  hybrid = models.create_model("vit_base_r50_s16_224", img_size=64)
  assert hybrid.grid_size == 4
  assert _abstract_init(hybrid, 64)["params"]["pos_embed"].shape == (1, 17, 768)


def test_num_classes_zero_gives_pooled_features():
  variables = jitted.init(_tiny(num_classes=0), jax.random.key(0), _X, train=False)
  out = jitted.apply(_tiny(num_classes=0), variables, _X, train=False)
  assert out.shape == (2, 192)
  hybrid = models.create_model("vit_small_r26_s32_224", num_classes=0)
  features = jax.eval_shape(
      lambda v, x: hybrid.apply(v, x, train=False), _abstract_init(hybrid, 224),
      jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  assert features.shape == (2, 384)


def test_bfloat16_computation_float32_params_and_logits():
  model = _tiny(dtype=jnp.bfloat16)
  variables = jitted.init(model, jax.random.key(0), _X, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  logits = jitted.apply(model, variables, _X, train=False)
  assert logits.dtype == jnp.float32
  ref = jitted.apply(_tiny(), variables, _X, train=False)
  assert 0 < relative_error(logits, ref) < 0.1  # computed in bf16, yet close to fp32
  features = jitted.apply(_tiny(num_classes=0, dtype=jnp.bfloat16), variables, _X, train=False)
  assert features.dtype == jnp.bfloat16
  # Every intermediate Dense / LayerNorm output is bf16.
  _, state = jitted.apply(model, variables, _X, train=False, capture_intermediates=True,
                         mutable=["intermediates"])
  inner = {k: v for k, v in state["intermediates"].items() if k != "__call__"}  # not the logits
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(inner)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("rates", [
    dict(drop_path_rate=0.5), dict(drop_rate=0.5), dict(attn_drop_rate=0.5),
    dict(proj_drop_rate=0.5), dict(pos_drop_rate=0.5)])
def test_dropout_and_drop_path_only_in_training(rates):
  variables = _tiny_variables()
  ref = jitted.apply(_tiny(), variables, _X, train=False)
  model = _tiny(**rates)
  np.testing.assert_array_equal(jitted.apply(model, variables, _X, train=False), ref)
  rngs = {"dropout": jax.random.key(3)}
  out = jitted.apply(model, variables, _X, train=True, rngs=rngs)
  assert not np.allclose(out, ref)
  np.testing.assert_array_equal(jitted.apply(model, variables, _X, train=True, rngs=rngs), out)
  with pytest.raises(Exception):
    jitted.apply(model, variables, _X, train=True)  # needs the 'dropout' rng
  # Without any rate, train=True is deterministic and needs no rng.
  np.testing.assert_allclose(jitted.apply(_tiny(), variables, _X, train=True), ref, rtol=1e-6)


def test_drop_path_rate_rises_linearly_over_blocks():
  model = models.create_model("vit_tiny_patch16_224", img_size=32, depth=3, drop_path_rate=0.2)
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, vit.Block) and context.method_name == "__call__":
      rates.append(context.module.drop_path_rate)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jitted.init(model, jax.random.key(0), _X, train=False)
  np.testing.assert_allclose(rates, [0.0, 0.1, 0.2])


# --- position-embedding resampling -------------------------------------------------------------

@pytest.mark.parametrize("old,new", [(7, 12), (12, 7), (4, 10)])
def test_resample_pos_embed_bicubic_matches_timm(old, new):
  from timm.layers import resample_abs_pos_embed  # pylint: disable=import-outside-toplevel
  pe = np.random.default_rng(old).standard_normal((1, 1 + old * old, 16)).astype(np.float32)
  # timm's defaults: bicubic, antialias=True.
  ref = resample_abs_pos_embed(torch.from_numpy(pe), [new, new], num_prefix_tokens=1).numpy()
  ours = vit.resample_pos_embed(jnp.asarray(pe), new, method="bicubic")
  assert ours.shape == (1, 1 + new * new, 16)
  assert relative_error(ours, ref) < 1e-5
  np.testing.assert_array_equal(ours[:, :1], pe[:, :1])  # class token kept


@pytest.mark.parametrize("old,new,antialias", [(7, 12, False), (7, 12, True), (12, 7, False),
                                               (12, 7, True)])
def test_resample_pos_embed_bilinear_matches_torch(old, new, antialias):
  from timm.layers import resample_abs_pos_embed  # pylint: disable=import-outside-toplevel
  pe = np.random.default_rng(new).standard_normal((1, 2 + old * old, 8)).astype(np.float32)
  ref = resample_abs_pos_embed(torch.from_numpy(pe), [new, new], num_prefix_tokens=2,
                               interpolation="bilinear", antialias=antialias).numpy()
  ours = vit.resample_pos_embed(jnp.asarray(pe), (new, new), num_prefix_tokens=2,
                                antialias=antialias)
  assert relative_error(ours, ref) < 1e-5


def test_resample_pos_embed_loads_weights_at_a_new_resolution():
  variables = _tiny_variables()
  pe = variables["params"]["pos_embed"]
  assert vit.resample_pos_embed(pe, 2) is pe  # same grid: unchanged
  big = models.create_model("vit_tiny_patch16_224", img_size=64, depth=2)
  grid = big.grid_size
  params = dict(variables["params"], pos_embed=vit.resample_pos_embed(pe, grid))
  out = jitted.apply(big, {"params": params}, jnp.zeros((1, 64, 64, 3)), train=False)
  assert out.shape == (1, 1000) and bool(jnp.all(jnp.isfinite(out)))
  with pytest.raises(ValueError, match="square"):
    vit.resample_pos_embed(pe[:, :4], 3)
