"""The explanation methods of issue 28 against their references, on the same random weights.

Score-CAM, Eigen-CAM, Layer-CAM, HiResCAM and XGrad-CAM against pytorch-grad-cam,
Occlusion against Captum, Guided IG against PAIR-code's `saliency`, and RISE by its
seed and on a model whose logit reads one known region. The reference model is a
timm ResNet-18 cut to one block per stage and 8-16 channels (29k parameters), so
that each method compiles once and quickly; Occlusion and Guided IG, which only call
the model, use a one-conv network with a PyTorch twin; a small ViT is traced.
"""

from __future__ import annotations

import flax.linen as nn
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tests.timm_parity import randomize_norms, relative_error, timm_state_dict  # noqa: E402
from vision_jax import explain  # noqa: E402
from vision_jax.weights import from_timm  # noqa: E402
from tests import jitted

pytestmark = pytest.mark.xdist_group("explain")

TOLERANCE = 1e-4
_TINY = dict(layers=[1, 1, 1, 1], channels=(8, 16, 16, 16))
LAYER = "layer2_0"  # 4x4 at 32 px, 16 channels: timm's layer2[-1]


@pytest.fixture(scope="module")
def tiny():
  """(timm model, our module, variables, NHWC images [2, 32, 32, 3], NCHW tensor)."""
  torch.manual_seed(0)
  model = timm.create_model("resnet18", pretrained=False, num_classes=10, **_TINY).eval()
  randomize_norms(model, 0)
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():  # a random head: every class gets its own map
    model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=g) / 4)
    model.fc.bias.copy_(0.1 * torch.randn(model.fc.bias.shape, generator=g))
  module, variables = from_timm("resnet18", timm_state_dict(model), stage_sizes=(1, 1, 1, 1),
                                widths=(8, 16, 16, 16))
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  return model, module, variables, x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _normalise(maps: np.ndarray) -> np.ndarray:
  maps = maps - maps.min(axis=(1, 2), keepdims=True)
  return maps / (1e-7 + maps.max(axis=(1, 2), keepdims=True))


def _reference_cam(cam_class, model, tensor, targets, size=(4, 4)) -> np.ndarray:
  # pylint: disable-next=import-outside-toplevel
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

  class AtFeatureResolution(cam_class):
    def get_target_width_height(self, input_tensor):
      return size[1], size[0]  # no resize: pytorch-grad-cam's normalisation only

  with AtFeatureResolution(model=model, target_layers=[model.layer2[-1]]) as cam:
    cam.batch_size = 16
    return cam(input_tensor=tensor, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def test_cams_match_pytorch_grad_cam(tiny):
  import pytorch_grad_cam as pgc  # pylint: disable=import-outside-toplevel
  model, module, variables, x, tensor = tiny
  targets = [3, 7]
  references = {"xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM, "hirescam": pgc.HiResCAM,
                "scorecam": pgc.ScoreCAM}
  errors = {}
  for name, cam_class in references.items():
    ours = np.asarray(explain.METHODS[name](module, variables, x, targets, layer=LAYER))
    ref = _reference_cam(cam_class, model, tensor, targets)
    assert ours.shape == ref.shape == (2, 4, 4)
    # A map that is empty on both sides would compare equal for nothing.
    assert np.all(ref.max(axis=(1, 2)) > 0.99) and np.all(ref.std(axis=(1, 2)) > 0.05), name
    errors[name] = relative_error(_normalise(ours), ref)
  # Eigen-CAM: the SVD's sign is arbitrary in both; ours is fixed (channel weights sum
  # positive), LAPACK's is not, so ours must equal the reference or its sign-flipped twin.
  # pylint: disable-next=import-outside-toplevel
  from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
  ours = _normalise(np.asarray(explain.eigen_cam(module, variables, x, layer=LAYER)))
  ref = _reference_cam(pgc.EigenCAM, model, tensor, targets)
  with torch.no_grad():
    acts = model.layer2(model.layer1(model.maxpool(model.act1(model.bn1(model.conv1(tensor))))))
  flipped = _normalise(np.maximum(-get_2d_projection(acts.numpy()), 0))
  errors["eigencam"] = min(relative_error(ours, ref), relative_error(ours, flipped))
  assert relative_error(ref, flipped) > 0.1  # the two signs give different maps
  print("CAM relative errors vs pytorch-grad-cam:", {k: f"{v:.1e}" for k, v in errors.items()})
  assert max(errors.values()) < TOLERANCE, errors


class SmallNet(nn.Module):
  """conv 3x3 (4 channels), tanh, global mean, dense: a cheap nonlinear classifier whose
  PyTorch twin is three lines. The perturbation and path methods only call the model, so
  their parity does not need a registered family (those are traced below)."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = jnp.tanh(nn.Conv(4, (3, 3), padding=1, name="conv")(x))
    return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def small():
  """(torch twin, SmallNet, variables, NHWC images [2, 32, 32, 3], NCHW tensor)."""
  module = SmallNet()
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
  rng = np.random.default_rng(2)
  # Drawn in numpy: `init` would compile a program for nothing.
  variables = {"params": {
      "conv": {"kernel": rng.standard_normal((3, 3, 3, 4)).astype(np.float32) / 3,
               "bias": 0.1 * rng.standard_normal(4).astype(np.float32)},
      "head": {"kernel": rng.standard_normal((4, 10)).astype(np.float32),
               "bias": 0.1 * rng.standard_normal(10).astype(np.float32)}}}
  conv = torch.nn.Conv2d(3, 4, 3, padding=1)
  head = torch.nn.Linear(4, 10)
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(p["conv"]["kernel"].transpose(3, 2, 0, 1).copy()))
    conv.bias.copy_(torch.from_numpy(p["conv"]["bias"]))
    head.weight.copy_(torch.from_numpy(p["head"]["kernel"].T.copy()))
    head.bias.copy_(torch.from_numpy(p["head"]["bias"]))
  model = torch.nn.Sequential(conv, torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), head).eval()
  return model, module, variables, x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def test_occlusion_matches_captum(small):
  from captum.attr import Occlusion  # pylint: disable=import-outside-toplevel
  model, module, variables, x, tensor = small
  with torch.no_grad():
    same = relative_error(np.asarray(jitted.apply(module, variables, x)), model(tensor).numpy())
  assert same < 1e-5, same
  targets = [2, 5]
  # (32 - 8) / 5 is not whole: the last row of windows sticks out and is cut (Captum's rule).
  ours = np.asarray(explain.occlusion(module, variables, x, targets, window=(8, 6),
                                      strides=(5, 4), baseline=[0.5, -0.5, 0.0], batch_size=16))
  base = torch.tensor([0.5, -0.5, 0.0]).reshape(1, 3, 1, 1).expand_as(tensor).contiguous()
  ref = Occlusion(model).attribute(tensor, sliding_window_shapes=(3, 8, 6), strides=(3, 5, 4),
                                   baselines=base, target=targets, perturbations_per_eval=64)
  ref = ref.detach().numpy()
  np.testing.assert_array_equal(ref[:, 0], ref[:, 2])  # one value per pixel, every channel
  assert ours.shape == (2, 32, 32) and np.abs(ref).max() > 0
  error = relative_error(ours, ref[:, 0])
  print(f"Occlusion relative error vs Captum: {error:.1e}")
  assert error < TOLERANCE


class RegionModel(nn.Module):
  """Class 0's logit is the mean input over rows 4-11, columns 20-27; class 1's is minus it."""

  num_classes: int = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    region = x[:, 4:12, 20:28].mean(axis=(1, 2, 3))
    return jnp.stack([region, -region], axis=-1)


def test_rise_is_seeded_and_peaks_on_the_region_the_logit_reads():
  module = RegionModel()
  x = np.ones((2, 32, 32, 1), np.float32)
  kwargs = dict(masks=300, grid=4, score="logit", batch_size=100)
  first = np.asarray(explain.rise(module, {}, x, 0, seed=3, **kwargs))
  again = np.asarray(explain.rise(module, {}, x, 0, seed=3, **kwargs))
  other = np.asarray(explain.rise(module, {}, x, 0, seed=4, **kwargs))
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - other).max() > 1e-3
  # Same input twice in the batch: same masks, same map.
  np.testing.assert_array_equal(first[0], first[1])
  inside = np.zeros((32, 32), bool)
  inside[4:12, 20:28] = True
  for maps in (first, other):
    peak = np.unravel_index(np.argmax(maps[0]), (32, 32))
    assert inside[peak], peak
    # Away from the region a mask's weight is independent of its score: the map is the
    # mean score there (about 0.5), and higher inside.
    assert maps[0][inside].mean() > maps[0][~inside].mean() + 0.1, maps[0]


class _NumpyWithQuantileInterpolation:
  """numpy as saliency 0.2.1 expects it: `quantile(..., interpolation=)` became `method=`
  in numpy 1.22 and was removed in 2.x; everything else is numpy's."""

  def __getattr__(self, name):
    return getattr(np, name)

  @staticmethod
  def quantile(a, q, interpolation="linear", **kwargs):
    return np.quantile(a, q, method=interpolation, **kwargs)


def test_guided_ig_matches_pair_saliency(small, monkeypatch):
  import saliency.core as saliency  # pylint: disable=import-outside-toplevel
  import saliency.core.guided_ig as reference  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(reference, "np", _NumpyWithQuantileInterpolation())
  _, module, variables, x, _ = small
  targets = [4, 1]
  steps = 12
  result = explain.guided_integrated_gradients(module, variables, x, targets, steps=steps,
                                               full_output=True)
  gradient = jax.jit(jax.grad(lambda v, x, t: module.apply(v, x, train=False)[0, t],
                              argnums=1), static_argnums=2)

  def call_model(batch, call_model_args=None, expected_keys=None):
    del expected_keys
    g = gradient(variables, jnp.asarray(batch, jnp.float32), call_model_args)
    return {saliency.INPUT_OUTPUT_GRADIENTS: np.asarray(g)}

  errors = []
  for i, target in enumerate(targets):
    ref = saliency.GuidedIG().GetMask(x[i], call_model, call_model_args=target,
                                      x_baseline=np.zeros_like(x[i]), x_steps=steps,
                                      fraction=0.25, max_dist=0.02)
    errors.append(relative_error(np.asarray(result.attributions[i]), ref))
  print("Guided IG relative error vs saliency:", [f"{e:.1e}" for e in errors])
  assert max(errors) < 1e-3, errors
  # The path ends at the input: the attributions nearly sum to the score difference.
  total = np.asarray(result.attributions).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(total, np.asarray(result.score_difference), rtol=0.3)
  np.testing.assert_allclose(np.asarray(result.maps), np.asarray(result.attributions).sum(-1),
                             rtol=1e-5, atol=1e-6)


def test_every_method_traces_on_a_vit():
  """Traced (not compiled) on a small ViT's tokens: the shapes of the new programs.

  Which layer a CAM reads and how (map, final activation, tokens) is the only part that
  depends on the family, and `resolve_layer` / `forward_with_layer` are traced for every
  registered family through Grad-CAM in test_explain.py; the programs here add only
  operations on the activation [N, h, w, C] or calls of the whole model. A ResNet is
  compiled above.
  """
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from vision_jax.explain import cam, guided_ig, layers, perturbation
  t = jnp.zeros(2, jnp.int32)
  rows = jnp.zeros(4, jnp.int32)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  m = models.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, patch_size=8,
                          depth=1)
  v = jax.eval_shape(lambda x: m.init(jax.random.key(0), x), x)
  layer = layers.resolve_layer(m, None, x.shape, x.dtype)
  assert layer.map_shape == (4, 4)
  programs = {
      "eigencam": lambda v, x: cam._eigen_cam(m, v, x, t, layer)[0],
      "scorecam": lambda v, x: cam._score_cam(m, v, x, t, layer, 4)[0],
      "occlusion": lambda v, x: perturbation._occlusion(
          m, v, x, x, t, rows, rows, rows.astype(jnp.float32), (8, 8), 4, "logit")[0],
      "rise": lambda v, x: perturbation._rise(
          m, v, x, x, t, jax.random.key(0), 0.5, 4, 4, 4, "probability")[0],
      "guided-ig": lambda v, x: guided_ig._guided(m, v, x, x, t, 2, 0.25, 0.02)[0],
  }
  shapes = {k: jax.eval_shape(f, v, x).shape for k, f in programs.items()}
  assert shapes == {"eigencam": (2, 4, 4), "scorecam": (2, 4, 4), "occlusion": (2, 32, 32),
                    "rise": (2, 32, 32), "guided-ig": (2, 32, 32, 3)}, shapes


def test_bad_requests_get_one_line(tiny):
  _, module, variables, x, _ = tiny
  checks = [
      (lambda: explain.score_cam(module, variables, x, layer="layer9"),
       r"'layer9' is not a submodule of ResNet.*Available layers"),
      (lambda: explain.eigen_cam(module, variables, x, layer="layer4_0"),
       r"'layer4_0' has output shape \(2, 1, 1, 16\), not a feature map"),
      (lambda: explain.occlusion(module, variables, x, baseline=np.zeros((2, 3))),
       r"baseline of shape \(2, 3\) does not broadcast to the images \(2, 32, 32, 3\)"),
      (lambda: explain.guided_integrated_gradients(module, variables, x,
                                                   baseline=np.zeros((5, 5, 3))),
       r"baseline of shape \(5, 5, 3\) does not broadcast"),
      (lambda: explain.occlusion(module, variables, x, window=40),
       r"window \(40, 40\) is larger than the images"),
      (lambda: explain.occlusion(module, variables, x, window=4, strides=6),
       r"strides \(6, 6\) larger than the window"),
      (lambda: explain.rise(module, variables, x, keep=0.0), r"keep must be in \(0, 1\]"),
      (lambda: explain.rise(module, variables, x, targets=[1, 12]), r"target 12 .*\[0, 9\]"),
      (lambda: explain.attention_rollout(module, variables, x), "rollout needs attention"),
  ]
  for call, message in checks:
    with pytest.raises(explain.ExplainError, match=message) as info:
      call()
    assert "\n" not in str(info.value)
