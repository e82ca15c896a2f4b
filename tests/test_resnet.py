"""ResNet v1.5 and CIFAR ResNets: timm parity, sizes, weight-import errors, modes and dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.pinned_resnet import PARAM_COUNTS
from tests.timm_parity import compare_with_timm, relative_error, timm_state_dict
from vision_jax import models
from vision_jax.models import resnet
from vision_jax.weights import WeightLoadError, from_timm
from tests import jitted


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _abstract_init(module, size):
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def _init(module, x):
  # RBG keys: XLA compiles their random draws far faster than threefry's on CPU.
  return jax.jit(lambda x: module.init(jax.random.key(0, impl="rbg"), x, train=False))(x)


def _images(size=32, batch=2, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, size, size, 3)),
                     jnp.float32)


def _random_variables(module, size, seed=0):
  """Variables of the init's shapes, drawn with numpy: every BN scale non-zero, stats not 0/1."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":  # He-scaled, so activations stay O(1) through the depth
      return rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    if name in ("scale", "var"):
      return 0.5 + rng.random(leaf.shape)
    return 0.1 * rng.standard_normal(leaf.shape)

  shapes = _abstract_init(module, size)
  return jax.tree_util.tree_map_with_path(
      lambda p, leaf: jnp.asarray(draw(p, leaf), leaf.dtype), shapes)


# ---------------------------------------------------------------------------------------------
# Parity with timm (random weights, randomised BN statistics, eval mode, fp32).


@pytest.mark.parametrize("timm_name,size", [("resnet18", 32), ("resnet50", 64)])
def test_parity_with_timm(timm_name, size):
  err, ours, ref = compare_with_timm(timm_name, size)
  assert ours.shape == ref.shape == (2, 1000)
  assert err < 1e-4, err


def test_parity_with_timm_features_only():
  # A checkpoint without 'fc.*' loads as num_classes=0: pooled features match timm's.
  err, ours, _ = compare_with_timm("resnet18", 32, num_classes=0)
  assert ours.shape == (2, 512)
  assert err < 1e-4, err


# ---------------------------------------------------------------------------------------------
# Sizes.


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_pinned_param_count(name):
  module = models.create_model(name)
  variables = _abstract_init(module, models.model_info(name).input_size)
  assert _count(variables["params"]) == PARAM_COUNTS[name]
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))


def test_every_registered_resnet_is_pinned():
  assert set(models.list_models(family="resnet")) == set(PARAM_COUNTS)


def _cifar_resnet_params_by_hand(n: int, num_classes: int) -> int:
  """He et al. section 4.2 network (6n+2 layers) with option-B shortcuts, counted by hand."""
  def conv(k, c_in, c_out):
    return k * k * c_in * c_out

  def bn(c):
    return 2 * c  # scale and bias; running statistics are not parameters

  def basic_block(c_in, c_out):
    total = conv(3, c_in, c_out) + bn(c_out) + conv(3, c_out, c_out) + bn(c_out)
    if c_in != c_out:  # the first block of stages 2 and 3 also halves the resolution
      total += conv(1, c_in, c_out) + bn(c_out)
    return total

  total = conv(3, 3, 16) + bn(16)
  c_in = 16
  for width in (16, 32, 64):
    for _ in range(n):
      total += basic_block(c_in, width)
      c_in = width
  return total + 64 * num_classes + num_classes


@pytest.mark.parametrize("name,n", [("cifar_resnet20", 3), ("cifar_resnet32", 5),
                                    ("cifar_resnet56", 9)])
def test_cifar_param_counts_by_hand(name, n):
  assert _cifar_resnet_params_by_hand(n, 1000) == PARAM_COUNTS[name]
  module = models.create_model(name, num_classes=10)
  count = _count(_abstract_init(module, 32)["params"])
  assert count == _cifar_resnet_params_by_hand(n, 10)
  assert count == {3: 272_474, 5: 466_906, 9: 855_770}[n]  # written out: ~0.27M / 0.46M / 0.85M


def test_model_info():
  info = models.model_info("resnet50")
  assert (info.input_size, info.crop_pct, info.classifier, info.timm_name) == (
      224, 0.95, "head", "resnet50")  # timm's default tag resnet50.a1_in1k
  assert "1512.03385" in info.paper and "1706.02677" in info.paper
  assert models.model_info("resnet200").crop_pct == 0.875  # timm's 'untrained' config
  cifar = models.model_info("cifar_resnet20")
  assert (cifar.input_size, cifar.crop_pct, cifar.timm_name) == (32, 1.0, None)
  assert cifar.mean == (0.4914, 0.4822, 0.4465) and cifar.std == (0.2470, 0.2435, 0.2616)


# ---------------------------------------------------------------------------------------------
# Weight import errors.


@pytest.fixture(scope="module")
def resnet18_state_dict():
  timm = pytest.importorskip("timm")
  return timm_state_dict(timm.create_model("resnet18", pretrained=False))


def test_from_timm_accepts_a_tag(resnet18_state_dict):
  module, variables = from_timm("resnet18.a1_in1k", resnet18_state_dict)
  assert module.num_classes == 1000
  np.testing.assert_array_equal(variables["params"]["layer2_0"]["downsample_bn"]["scale"],
                                resnet18_state_dict["layer2.0.downsample.1.weight"])
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"],
                                resnet18_state_dict["bn1.running_var"])


def test_from_timm_missing_key(resnet18_state_dict):
  sd = dict(resnet18_state_dict)
  del sd["layer3.1.bn2.running_mean"]
  with pytest.raises(WeightLoadError,
                     match=r"missing keys \(1\)[\s\S]*layer3\.1\.bn2\.running_mean"):
    from_timm("resnet18", sd)


def test_from_timm_unexpected_key(resnet18_state_dict):
  sd = dict(resnet18_state_dict)
  sd["layer5.0.conv1.weight"] = np.zeros((8, 8, 3, 3), np.float32)
  with pytest.raises(WeightLoadError,
                     match=r"unexpected keys \(1\)[\s\S]*layer5\.0\.conv1\.weight"):
    from_timm("resnet18", sd)


def test_from_timm_wrong_shape(resnet18_state_dict):
  sd = dict(resnet18_state_dict)
  sd["layer2.0.downsample.0.weight"] = np.zeros((128, 64, 3, 3), np.float32)
  with pytest.raises(WeightLoadError, match=r"shape mismatches \(1\)[\s\S]*"
                     r"layer2\.0\.downsample\.0\.weight \(128, 64, 3, 3\)"):
    from_timm("resnet18", sd)


def test_from_timm_wrong_architecture(resnet18_state_dict):
  # A resnet18 checkpoint under the resnet34 name: resnet34's extra blocks are missing.
  with pytest.raises(WeightLoadError,
                     match=r"missing keys \(\d+\)[\s\S]*layer1\.2\.bn1\.running_mean"):
    from_timm("resnet34", resnet18_state_dict)


def test_from_timm_unknown_name():
  with pytest.raises(WeightLoadError, match="unknown timm model 'resnet19'"):
    from_timm("resnet19", {})


# ---------------------------------------------------------------------------------------------
# Features, dtypes, training mode.


def test_num_classes_zero_gives_pooled_features():
  module = models.create_model("resnet18", num_classes=0)
  x = _images(32)
  variables = _random_variables(module, 32)
  assert "head" not in variables["params"]
  features = jitted.apply(module, variables, x, train=False)
  assert features.shape == (2, 512) and features.dtype == jnp.float32
  # The same features feed the classifier of the 1000-class model.
  full = models.create_model("resnet18")
  head = {"kernel": jnp.ones((512, 1000)), "bias": jnp.zeros((1000,))}
  logits = jitted.apply(full, {**variables, "params": {**variables["params"], "head": head}}, x,
                      train=False)
  np.testing.assert_allclose(logits[:, 0], features.sum(-1), rtol=1e-5)
  # Bottleneck width, without allocating ResNet-50.
  wide = models.create_model("resnet50", num_classes=0)
  out = jax.eval_shape(lambda v, x: wide.apply(v, x, train=False), _abstract_init(wide, 64),
                       jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  assert out.shape == (2, 2048)


def test_bfloat16_computation_float32_params_and_logits():
  module = models.create_model("cifar_resnet20", num_classes=10, dtype=jnp.bfloat16)
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(_abstract_init(module, 32)))
  x = _images(32)
  variables = _random_variables(module, 32)
  logits, state = jitted.apply(module, variables, x, train=False, capture_intermediates=True,
                               mutable=["intermediates"])
  assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
  inter = state["intermediates"]
  assert inter["conv1"]["__call__"][0].dtype == jnp.bfloat16
  assert inter["layer3_2"]["__call__"][0].dtype == jnp.bfloat16
  ref = jitted.apply(models.create_model("cifar_resnet20", num_classes=10), variables, x, train=False)
  assert relative_error(logits, ref) < 0.05
  # Training mode in bf16 keeps the running statistics in float32.
  _, updates = jitted.apply(module, variables, x, train=True, mutable=["batch_stats"])
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(updates))


def test_train_mode_updates_batch_stats_with_momentum():
  module = models.create_model("cifar_resnet20", num_classes=10, bn_momentum=0.8)
  x = _images(32)
  variables = _random_variables(module, 32)
  _, state = jitted.apply(module, variables, x, train=True, mutable=["batch_stats", "intermediates"],
                          capture_intermediates=True)
  stem = state["intermediates"]["conv1"]["__call__"][0]
  # flax convention: new = momentum * old + (1 - momentum) * batch statistic.
  old = variables["batch_stats"]["bn1"]
  new = state["batch_stats"]["bn1"]
  np.testing.assert_allclose(new["mean"], 0.8 * old["mean"] + 0.2 * jnp.mean(stem, axis=(0, 1, 2)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.8 * old["var"] + 0.2 * jnp.var(stem, axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  # Eval mode uses the running statistics: other statistics, other output.
  out = jitted.apply(module, variables, x, train=False)
  moved = {**variables, "batch_stats": state["batch_stats"]}
  assert not np.allclose(out, jitted.apply(module, moved, x, train=False))


def test_zero_init_last_bn():
  for block, last in [("basic", "bn2"), ("bottleneck", "bn3")]:
    for zero in (True, False):
      module = resnet.ResNet(stage_sizes=(1, 1), block=block, widths=(4, 8), stem_width=8,
                             num_classes=3, zero_init_last_bn=zero)
      params = _init(module, _images(16))["params"]
      for name in ("layer1_0", "layer2_0"):
        np.testing.assert_array_equal(params[name][last]["scale"], 0.0 if zero else 1.0)
        np.testing.assert_array_equal(params[name]["bn1"]["scale"], 1.0)
        np.testing.assert_array_equal(params[name]["downsample_bn"]["scale"], 1.0)


@pytest.mark.parametrize("field", ["drop_rate", "drop_path_rate"])
def test_dropout_and_drop_path_only_in_training_with_rng(field):
  x = _images(32, batch=4)
  plain = models.create_model("cifar_resnet20", num_classes=10)
  dropped = models.create_model("cifar_resnet20", num_classes=10, **{field: 0.5})
  # Random (non-zero) last-BN scales: with zero-initialised ones every branch is 0 and
  # dropping it would change nothing.
  variables = _random_variables(plain, 32)
  np.testing.assert_array_equal(jitted.apply(dropped, variables, x, train=False),
                                jitted.apply(plain, variables, x, train=False))
  ref, _ = jitted.apply(plain, variables, x, train=True, mutable=["batch_stats"])
  out, _ = jitted.apply(dropped, variables, x, train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.key(3)})
  assert not np.allclose(out, ref)
  with pytest.raises(Exception, match="dropout"):
    jitted.apply(dropped, variables, x, train=True, mutable=["batch_stats"])


def test_drop_path_rates_increase_linearly_as_in_timm():
  rates = resnet.drop_path_rates((2, 2, 2, 2), 0.1)
  np.testing.assert_allclose(rates, [0.1 * i / 7 for i in range(8)])
  assert resnet.drop_path_rates((1,), 0.3) == [0.0]


# ---------------------------------------------------------------------------------------------
# Stems and configuration errors.


def test_cifar_stem_override_keeps_resolution():
  x = _images(32)
  for stem, final_side, kernel in [("imagenet", 1, 7), ("cifar", 4, 3)]:
    module = models.create_model("resnet18", num_classes=10, stem=stem)
    variables = _abstract_init(module, 32)
    assert variables["params"]["conv1"]["kernel"].shape == (kernel, kernel, 3, 64)
    _, state = jax.eval_shape(
        lambda v, x, m=module: m.apply(v, x, train=False, capture_intermediates=True,
                                       mutable=["intermediates"]), variables, x)
    final = state["intermediates"]["layer4_1"]["__call__"][0]
    assert final.shape == (2, final_side, final_side, 512)
  # Only the stem kernel differs: 64 * 3 * (7 * 7 - 3 * 3) parameters.
  counts = [_count(_abstract_init(models.create_model("resnet18", stem=s), 32)["params"])
            for s in ("imagenet", "cifar")]
  assert counts[0] - counts[1] == 64 * 3 * 40


def test_cifar_resnet_shapes():
  module = models.create_model("cifar_resnet20", num_classes=10)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = _abstract_init(module, 32)
  _, state = jax.eval_shape(
      lambda v, x: module.apply(v, x, train=False, capture_intermediates=True,
                                mutable=["intermediates"]), variables, x)
  inter = state["intermediates"]
  assert inter["conv1"]["__call__"][0].shape == (2, 32, 32, 16)  # no max-pool
  assert inter["layer1_2"]["__call__"][0].shape == (2, 32, 32, 16)
  assert inter["layer2_0"]["__call__"][0].shape == (2, 16, 16, 32)
  assert inter["layer3_2"]["__call__"][0].shape == (2, 8, 8, 64)
  # Projections only where the shape changes (option B).
  with_projection = sorted(k for k, v in variables["params"].items() if "downsample_conv" in v)
  assert with_projection == ["layer2_0", "layer3_0"]
  assert sum(k.startswith("layer") for k in variables["params"]) == 9


def test_bad_configuration_errors():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  for kwargs, message in [({"block": "wide"}, "block must be one of"),
                          ({"stem": "deep"}, "stem must be"),
                          ({"widths": (64, 128)}, "4 stages but 2 widths")]:
    module = models.create_model("resnet18", **kwargs)
    with pytest.raises(ValueError, match=message):
      jax.eval_shape(lambda x, m=module: m.init(jax.random.key(0), x, train=False), x)
