"""EfficientNet B0-B7: timm parity, scaling, pinned sizes, weight-import errors, dtypes, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.pinned_efficientnet import PARAM_COUNTS
from tests.timm_parity import compare_with_timm, timm_state_dict
from vision_jax import models
from vision_jax.models import efficientnet
from vision_jax.weights import WeightLoadError, from_timm
from vision_jax.weights.timm import resolve
from tests import jitted

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

SMALL = 32  # input side for real forwards


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _images(size=SMALL, batch=4, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, size, size, 3)),
                     jnp.float32)


# A cut-down stage table for the behaviour tests (CPU compile time grows with the number of
# distinct layers): an expansion-free block, a strided MBConv and two residual MBConvs.
TINY = dict(stages=(efficientnet.StageSpec(repeats=1, kernel=3, stride=1, expand=1, features=16),
                    efficientnet.StageSpec(repeats=3, kernel=5, stride=2, expand=6, features=24)),
            head_width=64)


def _tiny(**overrides):
  return models.create_model("efficientnet_b0", **TINY, **overrides)


@pytest.fixture(scope="module")
def tiny_variables():
  """Random variables of the tiny net, drawn in numpy (jax's eager init compiles per shape)."""
  shapes = jax.eval_shape(lambda x: _tiny().init(jax.random.key(0), x, train=False),
                          jax.ShapeDtypeStruct((1, SMALL, SMALL, 3), jnp.float32))
  rng = np.random.default_rng(0)
  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":  # unit-variance activations: N(0, 1 / fan_in)
      return rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    if name in ("scale", "var"):
      return 0.5 + rng.random(leaf.shape)
    return 0.2 * rng.standard_normal(leaf.shape)
  return jax.tree_util.tree_map_with_path(
      lambda p, l: jnp.asarray(draw(p, l), jnp.float32), shapes)


@pytest.fixture(scope="module")
def timm_b0_state_dict():
  torch.manual_seed(0)
  return timm_state_dict(timm.create_model("tf_efficientnet_b0", pretrained=False))


# --- parity with timm -----------------------------------------------------------------------

@pytest.mark.parametrize("timm_name,size", [
    ("tf_efficientnet_b0", 64),  # even sizes: SAME pads strided convs (0, 1), k // 2 would not
    ("efficientnet_b0", 64),     # PyTorch-style symmetric padding, BN eps 1e-5
    ("tf_efficientnet_b1", 33),  # depth 1.1: a residual in the expansion-free first stage
])
def test_parity_with_timm(timm_name, size):
  err, ours, _ = compare_with_timm(timm_name, size)
  assert ours.shape == (2, 1000) and ours.dtype == np.float32
  assert err < 1e-4, f"{timm_name} at {size}x{size}: relative error {err:.2e}"


# --- scaling and sizes ----------------------------------------------------------------------

def test_compound_scaling_rounding():
  # Channels: nearest multiple of 8, never more than 10% down.
  assert efficientnet.round_channels(32, 1.1) == 32      # 35.2 -> 32
  assert efficientnet.round_channels(16, 1.8) == 32      # 28.8 -> 32 (24 would be > 10% down)
  assert efficientnet.round_channels(1280, 2.0) == 2560
  assert efficientnet.round_repeats(1, 1.1) == 2         # depth rounds up
  # B7 (TF reference): 4, 7, 7, 10, 10, 13, 4 blocks; 64-channel stem; 640-channel last stage.
  configs = efficientnet.block_configs(2.0, 3.1, 0.2)
  per_stage = [sum(c.stage == s for c in configs) for s in range(7)]
  assert per_stage == [4, 7, 7, 10, 10, 13, 4]
  assert configs[0].in_features == 64 and configs[-1].out_features == 640
  # Only the first block of a stage strides; SE width comes from the block input.
  assert [c.stride for c in configs if c.stage == 1] == [2] + [1] * 6
  assert all(c.se_features == c.in_features // 4 for c in configs)


def test_drop_path_schedule():
  configs = efficientnet.block_configs(1.0, 1.0, 0.2)
  n = len(configs)
  assert n == 16
  assert [c.drop_path_rate for c in configs] == pytest.approx([0.2 * i / n for i in range(n)])


def test_pinned_counts_match_our_models():
  # tests/test_models.py checks every pin; here the smallest and the largest.
  assert sorted(PARAM_COUNTS) == models.list_models(family="efficientnet")
  x = jax.ShapeDtypeStruct((1, SMALL, SMALL, 3), jnp.float32)
  for name in ("efficientnet_b0", "efficientnet_b7"):
    count = PARAM_COUNTS[name]
    module = models.create_model(name)
    variables = jax.eval_shape(lambda x, m=module: m.init(jax.random.key(0), x, train=False), x)
    assert _count(variables["params"]) == count, name


def test_pinned_counts_match_timm():
  for name, count in PARAM_COUNTS.items():
    variant = name.rsplit("_", 1)[1]
    for timm_name in (f"tf_efficientnet_{variant}", f"efficientnet_{variant}"):
      with torch.device("meta"):
        reference = timm.create_model(timm_name)
      assert sum(p.numel() for p in reference.parameters()) == count, timm_name


def test_model_info():
  info = models.model_info("efficientnet_b3")
  assert (info.input_size, info.crop_pct, info.timm_name) == (300, 0.904, "tf_efficientnet_b3")
  assert "1905.11946" in info.paper and info.classifier == "head"
  assert models.model_info("efficientnet_b7").input_size == 600


# --- timm import: names and errors ----------------------------------------------------------

def test_resolve_names(timm_b0_state_dict):
  assert resolve("tf_efficientnet_b0.ns_jft_in1k", timm_b0_state_dict) == (
      "efficientnet_b0", 1000, {})
  assert resolve("efficientnet_b5.sw_in12k", {}) == (
      "efficientnet_b5", 0, {"padding": "symmetric", "bn_epsilon": 1e-5})


@pytest.mark.parametrize("name", ["efficientnet_b3_pruned", "tf_efficientnet_b8",
                                  "efficientnet_b0_gn", "tf_efficientnet_lite0"])
def test_unsupported_timm_names(name):
  with pytest.raises(WeightLoadError, match=name):
    from_timm(name, {})


def test_from_timm_missing_key(timm_b0_state_dict):
  sd = dict(timm_b0_state_dict)
  del sd["blocks.2.1.se.conv_expand.bias"]
  with pytest.raises(WeightLoadError,
                     match=r"missing keys \(1\)[\s\S]*blocks\.2\.1\.se\.conv_expand\.bias"):
    from_timm("tf_efficientnet_b0", sd)


def test_from_timm_unexpected_key(timm_b0_state_dict):
  sd = dict(timm_b0_state_dict, **{"blocks.6.0.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(WeightLoadError,
                     match=r"unexpected keys \(1\)[\s\S]*blocks\.6\.0\.extra\.weight"):
    from_timm("tf_efficientnet_b0", sd)


def test_from_timm_wrong_shape(timm_b0_state_dict):
  sd = dict(timm_b0_state_dict)
  sd["blocks.1.0.conv_dw.weight"] = np.zeros((96, 1, 5, 5), np.float32)  # a 3x3 depthwise
  with pytest.raises(WeightLoadError,
                     match=r"shape mismatches \(1\)[\s\S]*blocks\.1\.0\.conv_dw\.weight"):
    from_timm("tf_efficientnet_b0", sd)


def test_from_timm_wrong_variant(timm_b0_state_dict):
  # A B0 checkpoint under a B1 name: B1's extra blocks are missing.
  with pytest.raises(WeightLoadError, match=r"blocks\.0\.1\.conv_dw\.weight"):
    from_timm("tf_efficientnet_b1", timm_b0_state_dict)


# --- features, dtypes, train mode -----------------------------------------------------------

def test_num_classes_zero_gives_pooled_features(tiny_variables):
  variables = {"params": {k: v for k, v in tiny_variables["params"].items() if k != "head"},
               "batch_stats": tiny_variables["batch_stats"]}
  features = jitted.apply(_tiny(num_classes=0), variables, _images(), train=False)
  assert features.shape == (4, 64)
  # The classifier of the full model is a Dense on exactly these features.
  head = tiny_variables["params"]["head"]
  logits = jitted.apply(_tiny(), tiny_variables, _images(), train=False)
  np.testing.assert_allclose(features @ head["kernel"] + head["bias"], logits, rtol=1e-5, atol=1e-5)
  # Registered variants: round(1280 * width) features.
  x = jax.ShapeDtypeStruct((2, SMALL, SMALL, 3), jnp.float32)
  for name, width in (("efficientnet_b0", 1280), ("efficientnet_b3", 1536),
                      ("efficientnet_b7", 2560)):
    module = models.create_model(name, num_classes=0)
    out = jax.eval_shape(lambda x, m=module: m.init_with_output(
        jax.random.key(0), x, train=False)[0], x)
    assert out.shape == (2, width), name


def test_bfloat16_compute_float32_params_and_logits(tiny_variables):
  module = _tiny(dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False),
                          jax.ShapeDtypeStruct((2, SMALL, SMALL, 3), jnp.float32))
  assert {l.dtype for l in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}
  logits, state = jitted.apply(module, tiny_variables, _images(), train=False,
                               capture_intermediates=True, mutable=["intermediates"])
  assert logits.dtype == jnp.float32
  inter = state["intermediates"]
  for layer in ("conv_stem", "blocks_0_0", "blocks_1_2", "conv_head"):
    assert inter[layer]["__call__"][0].dtype == jnp.bfloat16, layer
  reference = jitted.apply(_tiny(), tiny_variables, _images(), train=False)
  assert float(jnp.max(jnp.abs(logits - reference))) < 0.05 * float(jnp.max(jnp.abs(reference)))


def test_dropout_and_drop_path_only_in_training(tiny_variables):
  x = _images()
  def run(train, rng=None, **rates):
    rngs = {"dropout": rng} if rng is not None else {}
    out = jitted.apply(_tiny(**rates), tiny_variables, x, train=train, rngs=rngs,
                               mutable=["batch_stats"] if train else False)
    return out[0] if train else out

  plain = run(False, drop_rate=0.0, drop_path_rate=0.0)
  # Evaluation is deterministic whatever the rates, with or without an rng.
  np.testing.assert_array_equal(run(False, drop_rate=0.5, drop_path_rate=0.9), plain)
  np.testing.assert_array_equal(run(False, jax.random.key(1), drop_rate=0.5), plain)
  train_plain = run(True, drop_rate=0.0, drop_path_rate=0.0)
  assert not np.allclose(train_plain, plain)  # batch statistics instead of running ones
  for rates in ({"drop_rate": 0.5, "drop_path_rate": 0.0},
                {"drop_rate": 0.0, "drop_path_rate": 0.9}):
    a = run(True, jax.random.key(1), **rates)
    b = run(True, jax.random.key(2), **rates)
    assert not np.allclose(a, train_plain), rates
    assert not np.allclose(a, b), rates
    with pytest.raises(Exception, match="dropout"):
      run(True, None, **rates)


def test_train_updates_batch_stats(tiny_variables):
  _, state = jitted.apply(_tiny(), tiny_variables, _images(), train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(0)})
  before = tiny_variables["batch_stats"]["blocks_1_0"]["bn2"]["mean"]
  after = state["batch_stats"]["blocks_1_0"]["bn2"]["mean"]
  assert after.shape == before.shape and not np.allclose(after, before)


def test_bad_padding_is_rejected():
  with pytest.raises(ValueError, match="padding"):
    jax.eval_shape(lambda x: _tiny(padding="valid").init(jax.random.key(0), x, train=False),
                   jax.ShapeDtypeStruct((1, SMALL, SMALL, 3), jnp.float32))
