"""torchvision ResNet state dicts and the .npz layout of google-research ViT / BiT checkpoints.

Parity is measured against the reference implementations themselves: torchvision's
ResNets for `from_torchvision`, and timm's own `.npz` loaders (`load_pretrained`)
for what `to_npz` writes. Weights are random (numpy-filled, no compiled init), inputs
tiny, depths reduced.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests.timm_parity import randomize_norms, relative_error, timm_state_dict
from vision_jax import models
from vision_jax.weights import WeightLoadError, from_npz, from_timm, from_torchvision, to_npz

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

_TOL = 1e-4


def _abstract(module, size: int):
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def _random_variables(module, size: int, seed: int = 0):
  """Variables of the init's shapes drawn with numpy: O(1) activations, no 0/1 norms."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":  # fan-in scaled, so activations stay O(1) through the depth
      return rng.standard_normal(leaf.shape) * np.sqrt(1.0 / np.prod(leaf.shape[:-1]))
    if name in ("scale", "var"):
      return 0.5 + rng.random(leaf.shape)
    if name in ("cls_token", "pos_embed"):
      return 0.5 * rng.standard_normal(leaf.shape)
    return 0.1 * rng.standard_normal(leaf.shape)

  return jax.tree_util.tree_map_with_path(
      lambda p, leaf: jnp.asarray(draw(p, leaf), leaf.dtype), _abstract(module, size))


def _images(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


def _torch_logits(model, x_nhwc: np.ndarray, double: bool = False) -> np.ndarray:
  xt = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2))
  with torch.no_grad():
    if double:
      return copy.deepcopy(model).double()(xt.double()).numpy()
    return model(xt).numpy()


def _ours(module, variables, x: np.ndarray) -> np.ndarray:
  # Jitted: eager GroupNorm / weight standardisation op by op is slow on the CPU.
  return np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables,
                                                                          jnp.asarray(x)))


def _assert_same_variables(a, b):
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert set(fa) == set(fb), sorted(set(fa) ^ set(fb))
  for path in fa:
    np.testing.assert_array_equal(np.asarray(fa[path]), np.asarray(fb[path]), err_msg=str(path))


# ---------------------------------------------------------------------------------------------
# torchvision ResNets.


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("resnet50", 64)])
def test_torchvision_parity(name, size):
  """Random weights and BN statistics, eval mode, fp32."""
  torch.manual_seed(0)
  model = getattr(torchvision.models, name)(weights=None).eval()
  randomize_norms(model, seed=0)
  x = _images(size)
  ref = _torch_logits(model, x)
  module, variables = from_torchvision(name, model.state_dict())  # torch tensors accepted
  assert module.num_classes == 1000 and "batch_stats" in variables
  ours = _ours(module, variables, x)
  err = relative_error(ours, ref)
  assert ours.shape == ref.shape == (2, 1000)
  assert err < _TOL, f"torchvision {name} @ {size}: relative error {err}"


@pytest.fixture(scope="module")
def resnet18_state_dict():
  return timm_state_dict(torchvision.models.resnet18(weights=None, num_classes=10))


def test_torchvision_num_classes_tag_and_features(resnet18_state_dict):
  module, variables = from_torchvision("resnet18.IMAGENET1K_V1", resnet18_state_dict)
  assert module.num_classes == 10
  np.testing.assert_array_equal(variables["params"]["layer3_0"]["downsample_conv"]["kernel"],
                                resnet18_state_dict["layer3.0.downsample.0.weight"]
                                .transpose(2, 3, 1, 0))
  headless = {k: v for k, v in resnet18_state_dict.items() if not k.startswith("fc.")}
  module, variables = from_torchvision("resnet18", headless)
  assert module.num_classes == 0 and "head" not in variables["params"]


def test_torchvision_mismatches_are_listed(resnet18_state_dict):
  sd = dict(resnet18_state_dict)
  del sd["layer2.1.bn1.running_var"]
  sd["layer4.0.conv9.weight"] = np.zeros((1,), np.float32)
  sd["layer1.0.conv1.weight"] = np.zeros((64, 64, 1, 1), np.float32)
  with pytest.raises(WeightLoadError) as info:
    from_torchvision("resnet18", sd)
  message = str(info.value)
  assert message.startswith("from_torchvision('resnet18')")
  assert "'resnet18'" in message
  assert "missing keys (1)" in message and "layer2.1.bn1.running_var" in message
  assert "unexpected keys (1)" in message and "layer4.0.conv9.weight" in message
  assert "shape mismatches (1)" in message and "layer1.0.conv1.weight (64, 64, 1, 1)" in message


@pytest.mark.parametrize("name,reason", [("wide_resnet50_2", "twice as wide"),
                                         ("resnext50_32x4d", "grouped"),
                                         ("resnet26", "unknown torchvision model")])
def test_torchvision_unsupported_names(name, reason):
  with pytest.raises(WeightLoadError, match=reason):
    from_torchvision(name, {})


# ---------------------------------------------------------------------------------------------
# .npz: what to_npz writes, read by timm's own loaders.

# (registry = timm name, input size, create_model / timm.create_model kwargs)
_NPZ_CASES = [
    ("vit_tiny_patch16_224", 32, dict(img_size=32, depth=2)),
    ("vit_tiny_r_s16_p8_224", 64, dict(img_size=64, depth=2)),   # stem-only hybrid
    ("vit_small_r26_s32_224", 64, dict(img_size=64, depth=1)),   # hybrid with block1..4/unit*
    ("resnetv2_50x1_bit", 64, dict()),                           # BiT, under 'resnet/'
]


@pytest.mark.parametrize("name,size,kwargs", _NPZ_CASES, ids=[c[0] for c in _NPZ_CASES])
def test_npz_export_loads_in_timm_and_round_trips(name, size, kwargs, tmp_path):
  module = models.create_model(name, **kwargs)
  variables = _random_variables(module, size)
  arrays = to_npz(name, variables)
  assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in arrays.values())
  path = tmp_path / "checkpoint.npz"
  np.savez(path, **arrays)

  # timm's .npz loader (vision_transformer._load_weights / resnetv2._load_weights).
  torch.manual_seed(0)
  model = timm.create_model(name, pretrained=False, **kwargs).eval()
  model.load_pretrained(str(path))
  # Every timm parameter came from the file: importing timm's state dict gives ours back.
  _, back = from_timm(name, timm_state_dict(model))
  _assert_same_variables(back, variables)
  x = _images(size)
  ref = _torch_logits(model, x)
  ours = _ours(module, variables, x)
  err = relative_error(ours, ref)
  tol = _TOL
  if name.startswith("resnetv2") and err >= _TOL:
    # Weight-standardised convs: allow 10x timm's own fp32-vs-fp64 error (see test_resnet_v2);
    # the float64 run is only needed when 1e-4 is exceeded.
    tol = max(_TOL, 10 * relative_error(ref, _torch_logits(model, x, double=True)))
  assert ours.shape == ref.shape == (2, 1000)
  assert err < tol, f"{name} @ {size}: relative error {err} (tolerance {tol})"

  # Round trip, from the mapping and from the file: the same module and variables.
  for source in (arrays, path, np.load(path)):
    module2, variables2 = from_npz(name, source)
    assert module2 == module
    _assert_same_variables(variables2, variables)


@pytest.fixture(scope="module")
def tiny_vit():
  module = models.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5)
  variables = _random_variables(module, 32)
  return module, variables, to_npz("vit_tiny_patch16_224", variables)


def test_npz_vit_layout(tiny_vit):
  module, variables, arrays = tiny_vit
  width, heads = module.width, module.num_heads
  hd = width // heads
  block = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/"
  qkv = variables["params"]["blocks_1"]["attn"]["qkv"]
  for i, n in enumerate(("query", "key", "value")):
    assert arrays[f"{block}{n}/kernel"].shape == (width, heads, hd)
    assert arrays[f"{block}{n}/bias"].shape == (heads, hd)
    np.testing.assert_array_equal(arrays[f"{block}{n}/kernel"].reshape(width, width),
                                  qkv["kernel"][:, i * width:(i + 1) * width])
    np.testing.assert_array_equal(arrays[f"{block}{n}/bias"].reshape(width),
                                  qkv["bias"][i * width:(i + 1) * width])
  assert arrays[f"{block}out/kernel"].shape == (heads, hd, width)
  assert arrays["embedding/kernel"].shape == (16, 16, 3, width)
  assert arrays["cls"].shape == (1, 1, width)
  assert arrays["Transformer/posembed_input/pos_embedding"].shape == (1, 5, width)
  assert arrays["head/kernel"].shape == (width, 5)
  assert "Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias" in arrays
  assert "Transformer/encoder_norm/scale" in arrays
  assert len(arrays) == 8 + 16 * 2  # embedding, cls, pos, encoder_norm, head; 16 per block


def test_npz_headless_gives_features(tiny_vit):
  _, _, arrays = tiny_vit
  module, variables = from_npz("vit_tiny_patch16_224",
                               {k: v for k, v in arrays.items() if not k.startswith("head/")})
  assert module.num_classes == 0 and "head" not in variables["params"]


def test_npz_mismatches_are_listed(tiny_vit):
  _, _, arrays = tiny_vit
  bad = dict(arrays)
  key = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/key/kernel"
  del bad[key]
  bad["pre_logits/kernel"] = np.zeros((192, 192), np.float32)
  bad["Transformer/encoderblock_0/LayerNorm_2/scale"] = np.zeros((191,), np.float32)
  with pytest.raises(WeightLoadError) as info:
    from_npz("vit_tiny_patch16_224", bad)
  message = str(info.value)
  assert message.startswith("from_npz('vit_tiny_patch16_224')")
  assert "missing keys (1)" in message and key in message
  assert "blocks_1/attn/qkv/kernel" in message  # which of our leaves needs it
  assert "unexpected keys (1)" in message and "pre_logits/kernel" in message
  assert "pre_logits' layer" in message
  assert "shape mismatches (1)" in message
  assert "Transformer/encoderblock_0/LayerNorm_2/scale (191,)" in message


def test_npz_wrong_model_and_unknown_name(tiny_vit):
  _, variables, arrays = tiny_vit
  # ViT-S needs wider arrays than the ViT-Ti file holds.
  with pytest.raises(WeightLoadError, match=r"shape mismatches \(39\):\n"
                     r"    Transformer/encoder_norm/bias \(192,\) -> params/norm/bias: "
                     r"expected \(384,\)"):
    from_npz("vit_small_patch16_224", arrays)
  with pytest.raises(WeightLoadError, match=r"to_npz\('vit_small_patch16_224'\)[\s\S]*"
                     r"shape mismatches"):
    to_npz("vit_small_patch16_224", variables)
  for fn, arg in ((from_npz, arrays), (to_npz, variables)):
    with pytest.raises(WeightLoadError, match="not a vision_jax model with an .npz layout"):
      fn("resnet50", arg)


def test_npz_bit_accepts_broadcast_norm_shapes():
  # BiT: GroupNorm gammas/betas stored as (1, 1, 1, C) load as (C,); the head is a 1x1 conv.
  name = "resnetv2_50x1_bit"
  module = models.create_model(name, num_classes=7)
  variables = _random_variables(module, 64)
  arrays = to_npz(name, variables)
  assert arrays["resnet/head/conv2d/kernel"].shape == (1, 1, 2048, 7)
  assert arrays["resnet/block1/unit01/a/proj/standardized_conv2d/kernel"].shape == (1, 1, 64, 256)
  assert "resnet/block4/unit03/c/group_norm/beta" in arrays
  padded = {k: (v.reshape(1, 1, 1, -1) if "group_norm" in k else v) for k, v in arrays.items()}
  module2, variables2 = from_npz(name, padded)
  assert module2.num_classes == 7
  _assert_same_variables(variables2, variables)


# ---------------------------------------------------------------------------------------------
# The shared matching core: every loader error is a WeightLoadError.


def test_unmapped_leaf_is_a_weight_load_error_not_a_key_error(resnet18_state_dict):
  # A leaf the resnet mapping has no timm key for (before the core, its KeyError escaped).
  from vision_jax.weights import core, timm_resnet  # pylint: disable=import-outside-toplevel
  leaf = jax.ShapeDtypeStruct((64,), jnp.float32)
  target = {"params": {"bn1": {"scale": leaf, "gamma": leaf}}}

  def lookup(collection, path, shape):
    return core.Slot.single(*timm_resnet.leaf_key(collection, path))

  sd = {"bn1.weight": resnet18_state_dict["bn1.weight"]}
  with pytest.raises(WeightLoadError) as info:
    core.match(target, lookup, sd, header="test:")
  assert not isinstance(info.value, KeyError)
  message = str(info.value)
  assert "variables without a counterpart in the checkpoint (1):\n    params/bn1/gamma" in message
  assert "missing keys" not in message and "unexpected keys" not in message
  # Not strict: the report comes back with the leaf that did load.
  variables, report = core.match(target, lookup, sd, strict=False)
  assert report.unmapped == ["params/bn1/gamma"] and not report.missing
  np.testing.assert_array_equal(variables["params"]["bn1"]["scale"], sd["bn1.weight"])


def test_bad_keys_and_layouts_are_weight_load_errors(resnet18_state_dict):
  sd = dict(resnet18_state_dict)
  sd["conv1.weight"] = np.zeros((64,), np.float32)  # 1-D where a conv is expected
  with pytest.raises(WeightLoadError, match=r"shape mismatches \(1\)[\s\S]*conv1\.weight \(64,\)"):
    from_timm("resnet18", sd)
  with pytest.raises(WeightLoadError, match="cannot build 'resnet18'"):
    from_timm("resnet18", resnet18_state_dict, not_a_field=1)
  # A position embedding that is no square grid is reported by the one inference helper.
  with pytest.raises(WeightLoadError, match="not a square grid"):
    from_timm("vit_tiny_patch16_224", {"pos_embed": np.zeros((1, 7, 192), np.float32)})


def test_infer_architecture_reads_classes_depth_and_image_size():
  from vision_jax.weights.core import infer_architecture  # pylint: disable=import-outside-toplevel
  shapes = {"head.weight": (7, 192), "blocks.0.x": (1,), "blocks.11.x": (1,),
            "pos_embed": (1, 1 + 24 * 24, 192)}
  assert infer_architecture(shapes, "t", classifier=("head.weight", 0),
                            block_pattern=r"blocks\.(\d+)\.", pos_embed="pos_embed",
                            pixels_per_token=16) == {"num_classes": 7, "depth": 12,
                                                     "img_size": 384}
  assert infer_architecture({}, "t", classifier=("head.weight", 0)) == {"num_classes": 0}
