"""VGG: parity with timm (ConvMlp head) and torchvision (adaptive pool to 7x7), both head styles.

Every registered VGG has over 130M parameters, so the forward passes here use the
real layer sequence of vgg11_bn (8 convs, 5 max-pools, BN) at 1/8 of its widths
and a narrower classifier; the registered sizes are checked abstractly
(tests/test_models.py pins their counts). Weights and BN statistics are random,
fp32, eval mode.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.timm_parity import randomize_norms, relative_error, timm_state_dict
from vision_jax import models
from vision_jax.models import vgg
from vision_jax.weights import WeightLoadError, from_timm, from_torchvision

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

_TOL = 1e-4
# vgg11's sequence at 1/8 width; classifier 32 -> 16 -> 10 instead of 4096 -> 4096 -> 1000.
_LAYERS = tuple(c if c == "M" else c // 8 for c in vgg.LAYERS["vgg11"])
_HIDDEN, _PRE_LOGITS, _CLASSES = 32, 16, 10
_OVERRIDES = dict(layers=_LAYERS, hidden_width=_HIDDEN, pre_logits_width=_PRE_LOGITS)


def _images(size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((2, size, size, 3)).astype(np.float32)


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


def _ours(module, variables, x: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x))


@pytest.fixture(scope="module")
def timm_vgg():
  from timm.layers import ClassifierHead  # pylint: disable=import-outside-toplevel
  from timm.models.vgg import VGG, ConvMlp  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = VGG(list(_LAYERS), num_classes=_CLASSES, norm_layer=torch.nn.BatchNorm2d)
  # timm fixes the pre-logits width at 4096; the same classes at a smaller width.
  model.pre_logits = ConvMlp(_LAYERS[-2], _PRE_LOGITS, 7, mlp_ratio=_HIDDEN / _PRE_LOGITS)
  model.head = ClassifierHead(_PRE_LOGITS, _CLASSES)
  model.eval()
  randomize_norms(model, seed=0)
  return model


@pytest.fixture(scope="module")
def torchvision_vgg():
  tv = torchvision.models.vgg
  torch.manual_seed(1)
  model = tv.VGG(tv.make_layers(list(_LAYERS), batch_norm=True), num_classes=_CLASSES)
  # torchvision fixes Linear(512 * 7 * 7, 4096); the same Sequential at a smaller width.
  nn = torch.nn
  model.classifier = nn.Sequential(
      nn.Linear(_LAYERS[-2] * 49, _HIDDEN), nn.ReLU(True), nn.Dropout(),
      nn.Linear(_HIDDEN, _PRE_LOGITS), nn.ReLU(True), nn.Dropout(),
      nn.Linear(_PRE_LOGITS, _CLASSES))
  model.eval()
  randomize_norms(model, seed=1)
  return model


# 32: a 1x1 map pooled up to 7x7 (CIFAR), the same in both heads; 288: a 9x9 map, where
# timm slides the 7x7 layer (3x3 outputs, averaged) and torchvision pools down to 7x7 first.
@pytest.mark.parametrize("size", [32, 288])
def test_timm_parity(timm_vgg, size):
  module, variables = from_timm("vgg11_bn.tv_in1k", timm_state_dict(timm_vgg), **_OVERRIDES)
  assert module.head_style == "timm" and module.num_classes == _CLASSES
  x = _images(size)
  err = relative_error(_ours(module, variables, x), _torch_logits(timm_vgg, x))
  assert err < _TOL, f"timm vgg11_bn (1/8 width) @ {size}: relative error {err}"


@pytest.mark.parametrize("size", [32, 288])
def test_torchvision_parity(torchvision_vgg, size):
  module, variables = from_torchvision("vgg11_bn", torchvision_vgg.state_dict(), **_OVERRIDES)
  assert module.head_style == "torchvision" and module.num_classes == _CLASSES
  x = _images(size, seed=1)
  err = relative_error(_ours(module, variables, x), _torch_logits(torchvision_vgg, x))
  assert err < _TOL, f"torchvision vgg11_bn (1/8 width) @ {size}: relative error {err}"


def test_adaptive_pool_matches_pytorch():
  x = np.random.default_rng(3).standard_normal((1, 9, 3, 4)).astype(np.float32)
  ours = np.asarray(vgg.adaptive_avg_pool(jnp.asarray(x), 7, 7))
  ref = torch.nn.functional.adaptive_avg_pool2d(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), (7, 7)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_torchvision_and_timm_keys_load_the_same_weights(timm_vgg, torchvision_vgg):
  # torchvision's Linear(C*7*7) kernel becomes the 7x7 conv of timm's layout.
  _, ours = from_torchvision("vgg11_bn", torchvision_vgg.state_dict(), **_OVERRIDES)
  w = torchvision_vgg.classifier[0].weight.detach().numpy()
  np.testing.assert_array_equal(ours["params"]["pre_logits"]["fc1"]["kernel"],
                                w.reshape(_HIDDEN, -1, 7, 7).transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(ours["batch_stats"]["features_1"]["var"],
                                torchvision_vgg.features[1].running_var.numpy())
  # Either loader builds the other head on request.
  module, _ = from_timm("vgg11_bn", timm_state_dict(timm_vgg), head_style="torchvision",
                        **_OVERRIDES)
  assert module.head_style == "torchvision"


def test_headless_checkpoint_gives_pre_logits_features(timm_vgg):
  sd = {k: v for k, v in timm_state_dict(timm_vgg).items() if not k.startswith("head.")}
  module, variables = from_timm("vgg11_bn", sd, **_OVERRIDES)
  out = _ours(module, variables, _images(32))
  assert module.num_classes == 0 and out.shape == (2, _PRE_LOGITS)


def test_load_errors(timm_vgg, torchvision_vgg):
  sd = timm_state_dict(timm_vgg)
  # A BN checkpoint under the plain name: every BN key is unexpected.
  with pytest.raises(WeightLoadError,
                     match=r"unexpected keys \(\d+\)[\s\S]*features\.1\.running_mean"):
    from_timm("vgg11", sd, **_OVERRIDES)
  with pytest.raises(WeightLoadError, match=r"missing keys \(1\)[\s\S]*classifier\.3\.bias"):
    tv = dict(torchvision_vgg.state_dict())
    del tv["classifier.3.bias"]
    from_torchvision("vgg11_bn", tv, **_OVERRIDES)
  with pytest.raises(WeightLoadError, match="unknown timm model 'vgg12'"):
    from_timm("vgg12", {})


def test_registered_variants_and_metadata():
  names = models.list_models(family="vgg")
  assert names == sorted(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn"))
  info = models.model_info("vgg16_bn")
  assert (info.input_size, info.crop_pct, info.interpolation, info.license) == (
      224, 0.875, "bilinear", "bsd-3-clause")
  # 13 / 16 convs for D and E plus the three classifier layers.
  assert sum(1 for c in vgg.LAYERS["vgg16"] if c != "M") + 3 == 16
  assert sum(1 for c in vgg.LAYERS["vgg19"] if c != "M") + 3 == 19


def test_flops_vgg16_matches_known_figure():
  from vision_jax.models import flops  # pylint: disable=import-outside-toplevel
  # VGG-16 is 15.5 GMACs at 224 (31 GFLOPs); XLA skips the multiply-adds on the zero padding.
  assert 29.0e9 < flops.count_flops("vgg16") < 31.5e9
