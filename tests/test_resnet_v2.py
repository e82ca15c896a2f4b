"""ResNetV2 (BiT, and the ViT-hybrid backbone flavour): parity with timm, counts, weight import."""

import copy
import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests.pinned_resnet_v2 import PARAM_COUNTS
from tests.timm_parity import compare_with_timm, randomize_norms, relative_error, timm_state_dict
from vision_jax import models
from vision_jax.models.layers import DropPath
from vision_jax.models.resnet_v2 import ResNetV2
from vision_jax.weights import WeightLoadError, from_timm
from vision_jax.weights.timm import timm_family
from vision_jax.weights.timm_resnet_v2 import resnet_v2_leaf_key
from tests import jitted

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _abstract(module, size=64):
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def _tiny(**kw):
  """Two stages, one block each: fast real forwards on 32x32 inputs."""
  return ResNetV2(layers=(1, 1), channels=(128, 256), stem_chs=32, **kw)


def _images(size=32, batch=2, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, size, size, 3)),
                     jnp.float32)


def _noise_floor(timm_model, x_nhwc: np.ndarray) -> float:
  """Relative error of timm itself in float32 against float64, same weights and input."""
  xt = torch.from_numpy(np.asarray(x_nhwc, np.float32).transpose(0, 3, 1, 2))
  with torch.no_grad():
    ref32 = timm_model(xt).numpy()
    ref64 = copy.deepcopy(timm_model).double()(xt.double()).numpy()
  return relative_error(ref32, ref64)


# ---------------------------------------------------------------- parity


def test_bit_parity_resnetv2_50x1_bit():
  """Random weights and norm statistics, eval mode, fp32, 64x64 input."""
  seed, size = 0, 64
  err, ours, ref = compare_with_timm("resnetv2_50x1_bit", size, seed=seed)
  # The same timm model again (same seed) to measure float32's own error.
  torch.manual_seed(seed)
  model = timm.create_model("resnetv2_50x1_bit", pretrained=False).eval()
  randomize_norms(model, seed)
  x = np.random.default_rng(seed).standard_normal((2, size, size, 3)).astype(np.float32)
  floor = _noise_floor(model, x)
  assert ours.shape == ref.shape == (2, 1000)
  assert err < max(1e-4, 10 * floor), (err, floor)


def _load_backbone(module, state_dict, size, prefix, stem_only):
  """Our variables for `module` from a timm state dict, checking every backbone key is used."""
  shapes = _abstract(module, size)
  leaves, used = {}, set()
  for path, leaf in traverse_util.flatten_dict(shapes["params"]).items():
    key, transform = resnet_v2_leaf_key("params", path, prefix=prefix, stem_only=stem_only)
    value = transform(state_dict[key])
    assert value.shape == leaf.shape, (key, value.shape, leaf.shape)
    leaves[path] = jnp.asarray(value)
    used.add(key)
  backbone_keys = {k for k in state_dict if k.startswith(prefix)}
  assert used == backbone_keys, sorted(backbone_keys ^ used)
  return {"params": traverse_util.unflatten_dict(leaves)}


@pytest.mark.parametrize("timm_name,layers,size", [
    ("vit_small_r26_s32_224", (2, 2, 2, 2), 64),  # R26 backbone, even sizes: asymmetric SAME pads
    ("vit_tiny_r_s16_p8_224", (), 42),            # stem only (layers=()), odd sizes
])
def test_hybrid_backbone_parity(timm_name, layers, size):
  """The non-preact, 'same'-padded flavour against the backbone inside a timm ViT-hybrid."""
  seed = 0
  torch.manual_seed(seed)
  # The backbone alone takes any input size; the ViT around it is only built for 64.
  vit = timm.create_model(timm_name, pretrained=False, img_size=64).eval()
  randomize_norms(vit, seed)
  backbone = vit.patch_embed.backbone
  module = ResNetV2(layers=layers, num_classes=0, preact=False, stem_type="same",
                    global_pool=False)
  variables = _load_backbone(module, timm_state_dict(vit), size, "patch_embed.backbone.",
                             stem_only=not layers)
  x = np.random.default_rng(seed).standard_normal((2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    ref = backbone(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  ours = np.asarray(jitted.apply(module, variables, jnp.asarray(x), train=False))
  floor = _noise_floor(backbone, x)
  assert ours.shape == ref.shape
  assert relative_error(ours, ref) < max(1e-4, 10 * floor), (relative_error(ours, ref), floor)


# ---------------------------------------------------------------- sizes


# The central tests/test_models.py checks every pin; these two are timm's quoted counts.
@pytest.mark.parametrize("name", ["resnetv2_50x1_bit", "resnetv2_152x4_bit"])
def test_pinned_parameter_count(name):
  module = models.create_model(name)
  assert _count(_abstract(module)) == PARAM_COUNTS[name]


def test_every_variant_is_pinned():
  assert set(models.list_models(family="resnet_v2")) == set(PARAM_COUNTS)


def test_model_info():
  for name in PARAM_COUNTS:
    info = models.model_info(name)
    assert info.timm_name == name and info.classifier == "head"
    assert info.crop_pct == 1.0 and info.mean == (0.5,) * 3 and info.std == (0.5,) * 3
    assert "1912.11370" in info.paper and info.license == "apache-2.0"
    assert info.input_size == (480 if name == "resnetv2_152x4_bit" else 448)


@pytest.mark.parametrize("name,width", [("resnetv2_50x1_bit", 2048), ("resnetv2_50x3_bit", 6144)])
def test_num_classes_zero_gives_pooled_features(name, width):
  module = models.create_model(name, num_classes=0)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  out = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x)[0], x)
  assert out.shape == (2, width)
  assert "head" not in _abstract(module)["params"]


def test_feature_map_without_global_pool():
  module = models.create_model("resnetv2_50x1_bit", num_classes=0, global_pool=False)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  out = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x)[0], x)
  assert out.shape == (2, 2, 2, 2048)  # stride 32, after the final norm


def test_invalid_settings_raise():
  with pytest.raises(ValueError, match="num_classes=0"):
    _abstract(_tiny(num_classes=10, global_pool=False))
  with pytest.raises(ValueError, match="stem_type"):
    _abstract(_tiny(stem_type="deep"))


# ---------------------------------------------------------------- dtypes and randomness


@pytest.fixture(scope="module")
def tiny_variables():
  """Random variables for every tiny model below (they share these shapes).

  Drawn with numpy from the abstract shapes: compiling `init` (its random
  initialisers) costs far more on CPU than these tests themselves.
  """
  rng = np.random.default_rng(0)
  shapes = _abstract(_tiny(num_classes=10), size=32)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.5 + (s.shape == (10,)), s.dtype),
      shapes)


@pytest.fixture(scope="module")
def tiny_eval_logits(tiny_variables):
  """float32 eval logits of the tiny model; its dropout rates must not matter in eval."""
  noisy = _tiny(num_classes=10, drop_rate=0.5, drop_path_rate=0.5)
  return np.asarray(jax.jit(noisy.apply)(tiny_variables, _images()))


def test_bfloat16_compute_float32_params_and_logits(tiny_variables, tiny_eval_logits):
  x = _images()
  bf16 = _tiny(num_classes=10, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda x: bf16.init(jax.random.key(0), x), x)
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(shapes))
  apply = jax.jit(bf16.apply)
  logits = apply(tiny_variables, x)
  assert logits.dtype == jnp.float32
  # The computation itself runs in bf16: every conv takes bf16 operands.
  jaxpr = jax.make_jaxpr(apply)(tiny_variables, x)
  convs = [line for line in str(jaxpr).splitlines() if "conv_general_dilated" in line]
  assert len(convs) == 9 and all("bf16" in line and "f32" not in line for line in convs), convs
  features_module = _tiny(num_classes=0, global_pool=False, dtype=jnp.bfloat16)
  features = jax.eval_shape(features_module.apply, {"params": {
      k: v for k, v in tiny_variables["params"].items() if k != "head"}}, x)
  assert features.dtype == jnp.bfloat16 and features.shape == (2, 4, 4, 256)
  assert relative_error(np.asarray(logits), tiny_eval_logits) < 0.1


def test_dropout_and_drop_path_only_in_training(tiny_variables, tiny_eval_logits):
  x = _images()
  noisy = _tiny(num_classes=10, drop_rate=0.5, drop_path_rate=0.5)
  with pytest.raises(flax.errors.InvalidRngError):  # train=True needs the "dropout" rng
    jax.eval_shape(functools.partial(noisy.apply, train=True), tiny_variables, x)
  train = jax.jit(functools.partial(noisy.apply, train=True))
  a = train(tiny_variables, x, rngs={"dropout": jax.random.key(1)})
  b = train(tiny_variables, x, rngs={"dropout": jax.random.key(2)})
  a2 = train(tiny_variables, x, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(a, tiny_eval_logits) and not np.allclose(a, b)
  np.testing.assert_array_equal(a, a2)


def test_drop_path_alone_changes_training_output(tiny_variables, tiny_eval_logits):
  dp = _tiny(num_classes=10, drop_path_rate=0.9)
  out = jax.jit(functools.partial(dp.apply, train=True))(
      tiny_variables, _images(), rngs={"dropout": jax.random.key(3)})
  assert out.shape == (2, 10) and not np.allclose(out, tiny_eval_logits)


def test_drop_path_rates_rise_linearly():
  """As timm: 0 at the first block, the full rate at the last one."""
  module = ResNetV2(layers=(2, 3), channels=(128, 256), stem_chs=32, drop_path_rate=0.4)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  rates = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, DropPath):
      rates[context.module.scope.path[0]] = context.module.rate
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
  assert sorted(rates) == [f"stages_{i}_blocks_{j}" for i, j in ((0, 0), (0, 1), (1, 0), (1, 1),
                                                                   (1, 2))]
  np.testing.assert_allclose([rates[k] for k in sorted(rates)], [0.0, 0.1, 0.2, 0.3, 0.4],
                             atol=1e-7)


# ---------------------------------------------------------------- weight import errors


@pytest.fixture(scope="module")
def bit_state_dict():
  torch.manual_seed(0)
  return timm_state_dict(timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=7))


def test_from_timm_builds_the_right_module(bit_state_dict):
  module, variables = from_timm("resnetv2_50x1_bit.goog_in21k_ft_in1k", bit_state_dict)
  assert module.num_classes == 7 and module.layers == (3, 4, 6, 3)
  assert variables["params"]["head"]["kernel"].shape == (2048, 7)
  np.testing.assert_array_equal(
      variables["params"]["stem"]["conv"]["kernel"],
      bit_state_dict["stem.conv.weight"].transpose(2, 3, 1, 0))


def test_from_timm_missing_key(bit_state_dict):
  sd = dict(bit_state_dict)
  del sd["stages.2.blocks.3.conv2.weight"]
  with pytest.raises(WeightLoadError, match=r"missing keys \(1\)[\s\S]*stages\.2\.blocks\.3\.conv2\.weight"):
    from_timm("resnetv2_50x1_bit", sd)


def test_from_timm_unexpected_key(bit_state_dict):
  sd = dict(bit_state_dict, **{"stages.1.blocks.0.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(WeightLoadError, match=r"unexpected keys \(1\)[\s\S]*stages\.1\.blocks\.0\.extra\.weight"):
    from_timm("resnetv2_50x1_bit", sd)


def test_from_timm_wrong_shape(bit_state_dict):
  sd = dict(bit_state_dict)
  sd["norm.weight"] = np.zeros(1024, np.float32)
  with pytest.raises(WeightLoadError, match=r"shape mismatches \(1\)[\s\S]*norm\.weight"):
    from_timm("resnetv2_50x1_bit", sd)


def test_from_timm_wrong_architecture(bit_state_dict):
  # A 50x1 checkpoint under the 101x1 name: the 17 extra blocks of stage 3 are missing.
  with pytest.raises(WeightLoadError,
                     match=r"missing keys \(153\)[\s\S]*stages\.2\.blocks\.10\.conv1\.weight"):
    from_timm("resnetv2_101x1_bit", bit_state_dict)


def test_timm_name_resolution():
  family = timm_family("resnetv2_152x4_bit.goog_in21k")
  assert family.name == "resnet_v2"
  assert family.resolve("resnetv2_152x4_bit", {}) == ("resnetv2_152x4_bit", {})
  # A width without a registered name reuses the same depth with its width factor.
  name, overrides = family.resolve("resnetv2_50x2_bit", {})
  assert name.startswith("resnetv2_50x") and overrides == {"width_factor": 2}
  with pytest.raises(WeightLoadError, match="unknown timm model"):
    timm_family("resnetv2_50x1_bitx")


def test_leaf_key_prefix_and_head():
  key, transform = resnet_v2_leaf_key("params", ("head", "kernel"))
  assert key == "head.fc.weight"
  assert transform(np.ones((5, 8, 1, 1))).shape == (8, 5)
  assert resnet_v2_leaf_key("params", ("stages_3_blocks_2", "norm3", "scale"),
                            prefix="patch_embed.backbone.")[0] == (
                                "patch_embed.backbone.stages.3.blocks.2.norm3.weight")
  assert resnet_v2_leaf_key("params", ("stem", "conv", "kernel"), prefix="p.",
                            stem_only=True)[0] == "p.conv.weight"
