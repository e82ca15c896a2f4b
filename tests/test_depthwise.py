"""DepthwiseConv: both paths equal nn.Conv(feature_group_count=C) in values and gradients,
with nn.Conv's parameters, at the kernels, strides and paddings the families use."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax.models import depthwise
from vision_jax.models.depthwise import DepthwiseConv
from tests import jitted

# (kernel, stride, padding): EfficientNet's TF 'SAME' (asymmetric when strided) and
# PyTorch k // 2 at strides 1 and 2, ConvNeXt's 7x7 with 3 on every side, and a stride that
# leaves the last column unread (VALID, 3x3/2 on 10: its input gradient must be zero).
CASES = [(3, 2, "SAME"), (5, 2, "SAME"), (5, 1, ((2, 2), (2, 2))), (3, 2, ((1, 1), (1, 1))),
         (7, 1, ((3, 3), (3, 3))), (3, 2, "VALID")]
SHAPE = (2, 9, 10, 8)  # odd and even sides: SAME pads differ between the two axes at stride 2


def _modules(kernel, stride, padding, impl, use_bias):
  ours = DepthwiseConv(SHAPE[-1], (kernel, kernel), strides=stride, padding=padding,
                       use_bias=use_bias, impl=impl)
  reference = nn.Conv(SHAPE[-1], (kernel, kernel), strides=stride, padding=padding,
                      feature_group_count=SHAPE[-1], use_bias=use_bias)
  return ours, reference


# The module fixture below is built once, by one worker, for every test of this file.
pytestmark = pytest.mark.xdist_group("depthwise")


@pytest.fixture(scope="module")
def parity():
  """Every case, both paths and the reference: outputs and gradients from one compiled program."""
  x = jax.random.normal(jax.random.key(0), SHAPE)
  cotangents = {}
  variables = {}
  for n, (kernel, stride, padding) in enumerate(CASES):
    use_bias = n % 2 == 0  # ConvNeXt's has a bias, EfficientNet's none
    _, reference = _modules(kernel, stride, padding, "xla", use_bias)
    variables[n] = jitted.init(reference, jax.random.key(n), x)
    out_shape = jax.eval_shape(reference.apply, variables[n], x).shape
    cotangents[n] = jax.random.normal(jax.random.key(100 + n), out_shape)

  @jax.jit
  def run(x, variables, cotangents):
    results = {}
    for n, (kernel, stride, padding) in enumerate(CASES):
      use_bias = n % 2 == 0
      shifted, reference = _modules(kernel, stride, padding, "shifted", use_bias)
      for name, module in (("shifted", shifted), ("reference", reference)):
        y, vjp = jax.vjp(lambda v, x, m=module: m.apply(v, x), variables[n], x)
        results[(n, name)] = (y, vjp(cotangents[n]))
      # The xla path is nn.Conv's own lax call: its values are checked, its gradient is XLA's.
      xla_module = _modules(kernel, stride, padding, "xla", use_bias)[0]
      results[(n, "xla")] = xla_module.apply(variables[n], x)
    return results

  return jax.device_get(run(x, variables, cotangents))


def test_xla_path_values_equal_grouped_conv(parity):
  for n, case in enumerate(CASES):
    np.testing.assert_allclose(parity[(n, "xla")], parity[(n, "reference")][0], rtol=1e-5,
                               atol=1e-5, err_msg=str(case))


def test_shifted_values_and_gradients_equal_grouped_conv(parity):
  for n, case in enumerate(CASES):
    want_y, (want_dv, want_dx) = parity[(n, "reference")]
    got_y, (got_dv, got_dx) = parity[(n, "shifted")]
    assert got_y.shape == want_y.shape, case
    np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5, err_msg=str(case))
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-5, atol=1e-5, err_msg=str(case))
    for name in want_dv["params"]:
      np.testing.assert_allclose(got_dv["params"][name], want_dv["params"][name], rtol=1e-5,
                                 atol=1e-4, err_msg=f"{case} d{name}")


def test_output_shapes_follow_the_padding():
  # 9x10 at stride 2: SAME gives ceil(9/2) x ceil(10/2); k//2 padding gives the same here;
  # VALID gives (9 - 3) // 2 + 1 = (10 - 3) // 2 + 1 = 4.
  x = jax.ShapeDtypeStruct(SHAPE, jnp.float32)
  for kernel, stride, padding in CASES:
    module = DepthwiseConv(SHAPE[-1], (kernel, kernel), strides=stride, padding=padding,
                           impl="shifted")
    y = jax.eval_shape(lambda x, m=module: m.init_with_output(jax.random.key(0), x)[0], x)
    want = SHAPE if stride == 1 else (2, 4, 4, 8) if padding == "VALID" else (2, 5, 5, 8)
    assert y.shape == want, (kernel, stride, padding)


@pytest.mark.parametrize("use_bias", [True, False])
def test_parameters_are_those_of_nn_conv(use_bias):
  x = jax.ShapeDtypeStruct(SHAPE, jnp.float32)
  ours, reference = _modules(5, 2, "SAME", "auto", use_bias)
  shapes = lambda m: jax.tree.map(lambda a: a.shape,  # noqa: E731
                                  jax.eval_shape(m.init, jax.random.key(0), x))
  assert shapes(ours) == shapes(reference)
  assert shapes(ours)["params"]["kernel"] == (5, 5, 1, 8)


def test_bfloat16_compute_keeps_float32_parameters():
  module = DepthwiseConv(8, (3, 3), dtype=jnp.bfloat16, impl="shifted")
  y, variables = jax.eval_shape(
      lambda x: module.init_with_output(jax.random.key(0), x),
      jax.ShapeDtypeStruct(SHAPE, jnp.float32))
  assert y.dtype == jnp.bfloat16 and variables["params"]["kernel"].dtype == jnp.float32


def test_auto_is_shifted_on_cpu_and_xla_on_accelerators(monkeypatch):
  monkeypatch.delenv(depthwise.ENV_VAR, raising=False)
  assert depthwise.resolve_impl("auto", "cpu") == "shifted"
  assert depthwise.resolve_impl("auto", "gpu") == "xla"
  assert depthwise.resolve_impl("auto", "tpu") == "xla"
  assert depthwise.resolve_impl("xla", "cpu") == "xla"
  monkeypatch.setenv(depthwise.ENV_VAR, "xla")
  assert depthwise.resolve_impl("auto", "cpu") == "xla"
  assert depthwise.resolve_impl("shifted", "gpu") == "shifted"  # explicit beats the variable
  monkeypatch.setenv(depthwise.ENV_VAR, "fast")
  with pytest.raises(ValueError, match="VISION_JAX_DEPTHWISE='fast'"):
    depthwise.resolve_impl("auto", "cpu")
  with pytest.raises(ValueError, match="impl must be one of"):
    depthwise.resolve_impl("winograd", "cpu")
  # use_impl beats the variable and the backend for 'auto', inside its block only.
  with depthwise.use_impl("xla"):
    assert depthwise.resolve_impl("auto", "cpu") == "xla"
    assert depthwise.resolve_impl("shifted", "cpu") == "shifted"
  monkeypatch.delenv(depthwise.ENV_VAR)
  assert depthwise.resolve_impl("auto", "cpu") == "shifted"
  with pytest.raises(ValueError, match="use_impl: impl must be 'shifted' or 'xla'"):
    with depthwise.use_impl("auto"):
      pass


def test_bad_input_is_named():
  module = DepthwiseConv(8, (3, 3), impl="shifted")
  with pytest.raises(ValueError, match="expected NHWC input with 8 channels"):
    jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((2, 9, 9, 4), jnp.float32))
  with pytest.raises(ValueError, match="padding 'CIRCULAR' is not supported"):
    depthwise.explicit_pads("CIRCULAR", (9, 9), (3, 3), (1, 1))


def test_benchmark_finds_every_depthwise_conv_of_a_model():
  from vision_jax.bench import depthwise as bench  # pylint: disable=import-outside-toplevel
  found = bench.model_depthwise_shapes("convnext_atto", 2, 32)
  # convnext_atto: depths (2, 2, 6, 2), widths (40, 80, 160, 320), 7x7 pad 3 at 8, 4, 2, 1 px.
  assert sum(found.values()) == 12
  assert {(s.height, s.channels, s.kernel, s.stride, s.pads): n for s, n in found.items()} == {
      (8, 40, 7, 1, ((3, 3), (3, 3))): 2, (4, 80, 7, 1, ((3, 3), (3, 3))): 2,
      (2, 160, 7, 1, ((3, 3), (3, 3))): 6, (1, 320, 7, 1, ((3, 3), (3, 3))): 2}


def test_benchmark_tool_refuses_a_model_without_depthwise_conv(run_tool):
  code, _, err = run_tool("benchmark_depthwise", "--models", "vgg11", "--image-size", "32",
                          "--batch-size", "1")
  assert code == 2
  assert err.strip().splitlines()[-1].startswith("error: --models: vgg11 has no depthwise")


def test_alternate_settles_each_side_before_timing_it():
  """`settle` calls a side untimed right before each timed call (its steady state)."""
  from vision_jax.bench import timing  # pylint: disable=import-outside-toplevel
  calls = []
  sides = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
  times = timing.alternate(sides, rounds=2, warmup=1, settle=1)
  assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 2
  assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}
  calls.clear()
  timing.alternate(sides, rounds=1)
  assert calls == ["a", "b"]
