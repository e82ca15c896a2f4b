"""int8 through qwix: post-training int8 logits stay close to float32 and pick the same class;
the quantization-aware model keeps the float parameters; bad input is one line."""

import sys

import jax
import numpy as np
import pytest

pytest.importorskip("qwix")

from vision_jax import models, quantize  # noqa: E402


# The module fixture below is built once, by one worker, for every test of this file.
pytestmark = pytest.mark.xdist_group("quantize")


@pytest.fixture(scope="module")
def tiny():
  """A 3-block CIFAR ResNet with BatchNorm, and float32, int8 and QAT logits from one program."""
  module = models.create_model("cifar_resnet20", num_classes=10, stage_sizes=(1, 1, 1))
  images = jax.random.normal(jax.random.key(0), (64, 16, 16, 1))
  variables = jax.jit(module.init)(jax.random.key(1), images[:1])  # eager: op by op, slower
  int8_module = quantize.int8_model(module)
  int8_variables = quantize.quantize_variables(int8_module, variables, images)
  qat_module = quantize.qat_model(module)

  @jax.jit
  def logits(variables, int8_variables, images):
    return (module.apply(variables, images), int8_module.apply(int8_variables, images),
            qat_module.apply(variables, images))

  fp32, int8, qat = jax.device_get(logits(variables, int8_variables, images))
  return {"module": module, "variables": variables, "int8_variables": int8_variables,
          "qat_module": qat_module, "images": images, "fp32": fp32, "int8": int8, "qat": qat}


def test_int8_weights_are_stored_as_int8(tiny):
  dtypes = {str(leaf.dtype) for leaf in jax.tree.leaves(tiny["int8_variables"]["params"])}
  assert "int8" in dtypes
  # The int8 tree is about a quarter of the float one (scales and BatchNorm stay float32).
  assert quantize.param_bytes(tiny["int8_variables"]) < 0.4 * quantize.param_bytes(
      tiny["variables"])


def test_int8_logits_are_close_to_float32_and_agree_on_top1(tiny):
  fp32, int8 = tiny["fp32"], tiny["int8"]
  assert int8.shape == fp32.shape == (64, 10)
  relative = np.linalg.norm(int8 - fp32) / np.linalg.norm(fp32)
  assert 0 < relative < 0.05  # rounding happened, and it stayed small
  assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9


def test_quantization_aware_model_keeps_the_float_parameters(tiny):
  abstract = jax.eval_shape(tiny["qat_module"].init, jax.random.key(1), tiny["images"][:1])
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, str(a.dtype)), tree)  # noqa: E731
  assert shapes(abstract["params"]) == shapes(tiny["variables"]["params"])
  # Its forward pass simulates the int8 rounding: close to float32, not equal to it.
  relative = np.linalg.norm(tiny["qat"] - tiny["fp32"]) / np.linalg.norm(tiny["fp32"])
  assert 0 < relative < 0.05


def test_missing_qwix_is_one_line_with_the_install_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "qwix", None)  # `import qwix` raises ImportError
  with pytest.raises(quantize.QuantizationError, match=r'pip install -e "\.\[quantize\]"'):
    quantize.int8_model(models.create_model("cifar_resnet20", num_classes=10))


def test_quantize_eval_refuses_a_missing_workdir(run_tool, tmp_path):
  code, out, err = run_tool("quantize_eval", "--workdir", tmp_path / "no_run")
  assert code == 2 and not out
  assert err.strip().splitlines()[-1].startswith("error: --workdir")
