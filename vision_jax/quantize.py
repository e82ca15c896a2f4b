"""int8 inference of a trained model, and quantization-aware fine-tuning, through qwix.

qwix (github.com/google/qwix) rewrites a flax module's matmuls and convolutions
(`dot_general`, `conv_general_dilated`) as it runs: the same module class, the same
call, the same non-weight variables. We use two of its providers:

- post-training quantization (`int8_model` + `quantize_variables`): each weight is
  stored as int8 with a per-output-channel float scale (absmax), and each activation
  entering a matmul or convolution is quantized to int8 on the fly, per example
  (dynamic range: no calibration set needed), so the product runs int8 x int8 with
  int32 accumulation. BatchNorm, activations, pooling and the shifted depthwise path
  (vision_jax.models.depthwise, elementwise multiply-adds) stay float32.
- quantization-aware training (`qat_model`): the forward pass simulates the same
  int8 rounding (fake quantization with a straight-through gradient) while the
  parameters stay float32 and keep their tree, so the trainer's step, optimizer and
  checkpoints work unchanged and `quantize_variables` turns the result into int8.

tools/quantize_eval.py measures what int8 costs in top-1 on a trained run.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

class QuantizationError(RuntimeError):
  """qwix is missing, or a model cannot be quantized; the message says what to do."""


def _qwix():
  try:
    import qwix  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise QuantizationError("int8 needs qwix: pip install -e \".[quantize]\" "
                            "(or pip install qwix).") from None
  return qwix


def int8_rules(module_path: str = ".*") -> list[Any]:
  """qwix rules: int8 weights and int8 (dynamic, per-example) activations for matching modules."""
  qwix = _qwix()
  return [qwix.QuantizationRule(module_path=module_path, weight_qtype=jnp.int8,
                                act_qtype=jnp.int8)]


def int8_model(module: nn.Module, module_path: str = ".*") -> nn.Module:
  """The post-training int8 version of `module` (its parameters: `quantize_variables`)."""
  qwix = _qwix()
  return qwix.quantize_model(module, qwix.PtqProvider(int8_rules(module_path)))


def quantize_variables(qmodule: nn.Module, variables: Any, sample: jax.Array) -> Any:
  """`variables` of the float model with their weights converted for `qmodule` (`int8_model`).

  Args:
    qmodule: the quantized module.
    variables: the float model's variables ({'params': ..., 'batch_stats': ...}).
    sample: an input of the shape the model runs on (only its shape and dtype are used).
  """
  qwix = _qwix()
  abstract = jax.eval_shape(qmodule.init, jax.random.key(0), sample)
  params = qwix.quantize_params(variables["params"], abstract["params"])
  return {**variables, "params": params}


def qat_model(module: nn.Module, module_path: str = ".*") -> nn.Module:
  """`module` with int8 fake quantization of weights and activations, for fine-tuning.

  Its parameters are the float model's (same names, shapes and dtypes), so the
  trained variables load into it and its fine-tuned ones back into `module` or
  through `quantize_variables` into `int8_model(module)`.
  """
  qwix = _qwix()
  rules = [qwix.QtRule(module_path=module_path, weight_qtype=jnp.int8, act_qtype=jnp.int8)]
  return qwix.quantize_model(module, qwix.QtProvider(rules))


def param_bytes(variables: Any) -> int:
  """Bytes of the parameters as stored (int8 weights and their scales count as they are)."""
  leaves = jax.tree.leaves(variables["params"])
  return int(sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in leaves))
