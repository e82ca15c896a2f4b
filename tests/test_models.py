"""Tests generated over the whole registry: pinned sizes, metadata, shapes, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import models
from vision_jax.models import flops

from tests import pins

PINNED = pins.param_counts()
ALL = models.list_models()
# timm's published counts, quoted in the model-zoo issue: an independent check on the pins.
TIMM_REFERENCE = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "resnet200": 64_673_832,
    "resnetv2_50x1_bit": 25_549_352, "resnetv2_152x4_bit": 936_533_224,
    "efficientnet_b0": 5_288_548, "efficientnet_b3": 12_233_232, "efficientnet_b7": 66_347_960,
    "vit_tiny_patch16_224": 5_717_416, "vit_base_patch16_224": 86_567_656,
    "vit_large_patch16_224": 304_326_632, "vit_base_r50_s16_384": 98_950_952,
    "vit_small_r26_s32_224": 36_431_912, "vit_large_r50_s32_224": 328_994_856,
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
    "convnext_atto": 3_695_520, "convnext_tiny": 28_589_128, "convnext_small": 50_223_688,
    "convnext_base": 88_591_464, "convnext_large": 197_767_336,
}
# timm builds these without a classifier by default, and its published count is that one.
TIMM_REFERENCE_HEADLESS = {"vit_base_r50_s16_224": 97_890_112}


def _abstract_variables(name, num_classes=1000, size=None, **kw):
  info = models.model_info(name)
  module = models.create_model(name, num_classes=num_classes, **kw)
  size = size or info.input_size
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return module, jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def test_every_registered_model_is_pinned():
  assert ALL, "no model registered"
  assert sorted(set(ALL) - set(PINNED)) == [], "registered but not pinned in tests/pinned_*.py"
  assert sorted(set(PINNED) - set(ALL)) == [], "pinned but not registered"


@pytest.mark.parametrize("name", sorted(TIMM_REFERENCE))
def test_reference_counts_are_pinned(name):
  assert PINNED.get(name) == TIMM_REFERENCE[name]


@pytest.mark.parametrize("name", sorted(TIMM_REFERENCE_HEADLESS))
def test_reference_headless_counts(name):
  _, variables = _abstract_variables(name, num_classes=0)
  assert _count(variables["params"]) == TIMM_REFERENCE_HEADLESS[name]


# num_classes=0 and the compute dtype are handled by each family's module, the same way for
# all of its variants: the headless model and the bf16 build are traced for the smallest
# variant of each family only; the others are traced once, in float32 (bf16 adds a convert
# per kernel and activation: ~20% of a MaxViT trace).
HEADLESS_CHECKED = set(pins.smallest_per_family().values())
# The quick tier traces that smallest variant of each family; the sweep over every other
# variant (~1.3 s of tracing each, 2.5 minutes in all) is in the slow tier (tests/conftest.py).
TRACED = [name if name in HEADLESS_CHECKED else pytest.param(name, marks=pytest.mark.slow)
          for name in ALL]


@pytest.mark.parametrize("name", TRACED)
def test_pinned_count_metadata_shapes_and_dtypes(name):
  """One abstract init + forward per model (nothing allocated), with 7 classes: the
  parameter count equals the pin (at 1000 classes), logits come back float32 and
  ModelInfo.classifier points at the classifier. For one model per family
  (HEADLESS_CHECKED) the trace is in bf16, where parameters must stay float32 and logits
  come back float32, and num_classes=0 gives the pooled features the classifier reads."""
  info = models.model_info(name)
  assert info.name == name
  assert info.input_size > 0 and 0 < info.crop_pct <= 1
  assert len(info.mean) == 3 and len(info.std) == 3 and min(info.std) > 0
  assert info.paper and info.family
  x = jax.ShapeDtypeStruct((2, info.input_size, info.input_size, 3), jnp.float32)
  representative = name in HEADLESS_CHECKED
  dtype = jnp.bfloat16 if representative else jnp.float32

  def init_and_apply(num_classes):
    module = models.create_model(name, num_classes=num_classes, dtype=dtype)
    return jax.eval_shape(
        lambda x: module.init_with_output(jax.random.key(0), x, train=False), x)

  logits, variables = init_and_apply(7)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  for leaf in jax.tree_util.tree_leaves(variables["params"]):
    assert leaf.dtype == jnp.float32
  node = variables["params"]
  for part in info.classifier.split("/"):
    node = node[part]
  assert node["kernel"].shape[-1] == 7, "ModelInfo.classifier must point at the classifier"
  head_in = node["kernel"].shape[0]
  head_params = head_in * 7 + (node["bias"].shape[0] if "bias" in node else 0)
  # The pins are at 1000 classes: each class adds a kernel column and a bias.
  per_class = head_in + (1 if "bias" in node else 0)
  assert _count(variables["params"]) + (1000 - 7) * per_class == PINNED[name]
  if not representative:
    return
  features, fvars = init_and_apply(0)
  assert features.shape == (2, head_in)
  assert _count(fvars["params"]) == _count(variables["params"]) - head_params


def test_unknown_model_and_override_errors():
  with pytest.raises(ValueError, match="Unknown model 'resnet5'.*Did you mean"):
    models.create_model("resnet5")
  with pytest.raises(ValueError, match="unknown override.*not_a_field"):
    models.create_model("resnet18", not_a_field=3)
  with pytest.raises(ValueError, match="num_classes"):
    models.create_model("resnet18", num_classes=-1)


def test_list_models_filters():
  assert "resnet50" in models.list_models("resnet*")
  assert all(n.startswith("vit_") for n in models.list_models("vit_*"))
  assert set(models.list_models(family="efficientnet")) == {f"efficientnet_b{i}" for i in range(8)}


def test_flops_resnet50_matches_known_figure():
  # ResNet-50 is 4.09 GMACs at 224x224 (8.18 GFLOPs). XLA's count is 7.95e9: it skips
  # the multiply-adds on the zero padding of the convolutions.
  f = flops.count_flops("resnet50")
  assert 7.8e9 < f < 8.3e9
  # FLOPs scale with the number of pixels (convolutions dominate).
  assert flops.count_flops("resnet50", image_size=112) == pytest.approx(f / 4, rel=0.02)


def test_flops_vit_b16_matches_known_figure():
  # ViT-B/16 at 224: 17.6 GMACs (timm's table) -> about 35 GFLOPs.
  f = flops.count_flops("vit_base_patch16_224")
  assert 34.0e9 < f < 36.5e9
