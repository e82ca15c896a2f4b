"""MaxViT and CoAtNet: parity with timm, bias-table resampling, load errors, layer decay.

Parity uses random timm weights with perturbed norms, fp32, eval mode, at reduced width
and depth and 64 px (MaxViT's 2x2 windows and grids; CoAtNet's attention over 4x4 and
2x2 maps): one MaxViT (`_tf_` style, MaxViT blocks in its last two stages: TF
padding, tanh-GELU, (heads, 2P-1, 2P-1) tables, tanh pre-logits head) and one timm
CoAtNet (`_rw_` style: pooled stride, SE before the norm, flat tables, final norm).
Each program is compiled once, with XLA's backend optimisations off (the numbers are
the same; the compile is 2x cheaper).
The other CoAtNet styles (coatnet_{nano,1,2,bn_0}_rw, paper coatnet_0) were checked the
same way by hand, and maxvit_tiny_tf_224 / coatnet_0_rw_224 at full size (README).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.timm_parity import randomize_norms, relative_error, timm_state_dict
from vision_jax import models
from vision_jax.models import maxxvit
from vision_jax.train import optim
from vision_jax.weights import WeightLoadError, from_timm
from tests import jitted

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

_TOL = 1e-5
_SIZE = 64
# timm create_model kwargs, and ours for the same reduced layout.
_TIMM = dict(embed_dim=(16, 16, 32, 32), depths=(1, 1, 1, 1), stem_width=8,
             transformer_dim_head=8, num_classes=10, img_size=_SIZE)
_OURS = dict(embed_dims=(16, 16, 32, 32), depths=(1, 1, 1, 1), stem_width=(8, 8), dim_head=8)


def _timm_model(name, **kwargs):
  torch.manual_seed(0)
  model = timm.create_model(name, pretrained=False, **_TIMM, **kwargs).eval()
  randomize_norms(model, 0)
  return model


def _parity(name, timm_kwargs, our_kwargs):
  model = _timm_model(name, **timm_kwargs)
  x = np.random.default_rng(0).standard_normal((2, _SIZE, _SIZE, 3)).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  sd = timm_state_dict(model)
  module, variables = from_timm(f"{name}.in1k", sd, **_OURS, **our_kwargs)
  forward = jax.jit(lambda v, x: module.apply(v, x, train=False)).lower(variables, x).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  return relative_error(np.asarray(forward(variables, x)), ref), module, variables, sd


def test_maxvit_tf_parity_and_window_check():
  # MBConv-only first stages keep the compile small; stages 2 and 3 are full MaxViT blocks.
  blocks = ("C", "C", "M", "M")
  err, module, variables, _ = _parity("maxvit_tiny_tf_224",
                                      dict(head_hidden_size=24, block_type=blocks),
                                      dict(head_hidden_size=24, block_types=blocks))
  assert err < _TOL, f"maxvit_tiny_tf_224 (reduced) relative error {err}"
  assert module.img_size == _SIZE and module.num_classes == 10
  assert set(variables) == {"params", "batch_stats"}
  table = variables["params"]["stages_2_blocks_0"]["attn_grid"]["attn"]["rel_pos"]
  assert table["relative_position_bias_table"].shape == (4, 3, 3)  # heads, 2P - 1, 2P - 1
  # A window that does not tile the map is refused with the size to use.
  with pytest.raises(ValueError, match="multiple of 64"):
    jax.eval_shape(lambda v: module.apply(v, jnp.zeros((1, 96, 96, 3))), variables)


def test_coatnet_rw_parity_and_load_errors():
  err, module, _, sd = _parity("coatnet_0_rw_224", {}, {})
  assert err < _TOL, f"coatnet_0_rw_224 (reduced) relative error {err}"
  assert module.style.se_early and module.style.stride_mode == "pool"
  bad = dict(sd)
  del bad["stages.2.blocks.0.attn.rel_pos.relative_position_bias_table"]
  bad["stages.1.blocks.0.conv2_kxk.weight"] = bad["stages.1.blocks.0.conv2_kxk.weight"][:, :, :1]
  with pytest.raises(WeightLoadError) as info:
    from_timm("coatnet_0_rw_224", bad, **_OURS)
  message = str(info.value)
  assert "missing keys (1)" in message and "stages.2.blocks.0.attn.rel_pos" in message
  assert "shape mismatches (1)" in message and "conv2_kxk" in message
  # A CoAtNet checkpoint under a MaxViT name: its blocks are not MaxViT blocks.
  with pytest.raises(WeightLoadError, match=r"maxvit_tiny_tf_224[\s\S]*missing keys"):
    from_timm("maxvit_tiny_tf_224", sd, **_OURS)
  with pytest.raises(WeightLoadError, match="no relative position tables"):
    from_timm("coatnet_0_rw_224", {"head.fc.weight": np.zeros((3, 4))})


@pytest.mark.parametrize("tf_layout", [True, False])
def test_bias_tables_resample_as_timm_resizes_them(tf_layout):
  """A table stored for 7x7 windows, used at 12x12 (224 -> 384), equals timm's resized one."""
  from timm.layers import pos_embed_rel  # pylint: disable=import-outside-toplevel
  heads, src, dst = 3, 7, 12
  rng = np.random.default_rng(0)
  if tf_layout:
    table = rng.standard_normal((heads, 2 * src - 1, 2 * src - 1)).astype(np.float32)
    ref_table = pos_embed_rel.resize_rel_pos_bias_table(
        torch.from_numpy(table), (dst, dst), (heads, 2 * dst - 1, 2 * dst - 1)).numpy()
    ref_module = pos_embed_rel.RelPosBiasTf((dst, dst), heads)
  else:
    table = rng.standard_normal(((2 * src - 1) ** 2, heads)).astype(np.float32)
    ref_table = pos_embed_rel.resize_rel_pos_bias_table(
        torch.from_numpy(table), (dst, dst), ((2 * dst - 1) ** 2, heads)).numpy()
    ref_module = pos_embed_rel.RelPosBias((dst, dst), heads)
  with torch.no_grad():
    ref_module.relative_position_bias_table.copy_(torch.from_numpy(ref_table))
    ref = ref_module.get_bias().numpy().reshape(1, heads, dst * dst, dst * dst)
  ours = jitted.apply(maxxvit.RelativePositionBias(dst, src, heads, tf_layout),
                      {"params": {"relative_position_bias_table": table}})
  assert ours.shape == ref.shape == (1, heads, dst * dst, dst * dst)
  assert relative_error(np.asarray(ours), ref) < 1e-6


def test_registry_layer_decay_and_rollout_refusal():
  assert len(models.list_models(family="maxvit")) == 15
  assert models.list_models(family="coatnet") == sorted(
      [f"coatnet_{k}_224" for k in "0123"] + [f"coatnet_{k}_rw_224" for k in
                                               ("nano", "0", "1", "2", "bn_0")])
  info = models.model_info("maxvit_tiny_tf_384")
  assert (info.input_size, info.crop_pct, info.mean) == (384, 1.0, (0.5, 0.5, 0.5))
  assert "2204.01697" in info.paper and info.classifier == "head"
  assert "2106.04803" in models.model_info("coatnet_0_rw_224").paper
  # Layer-wise lr decay: stem first, blocks in order, head last.
  module = models.create_model("maxvit_tiny_tf_224", num_classes=3, img_size=64,
                               head_hidden_size=8, **_OURS)
  params = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  scales = optim.layer_decay_scales(params, 0.5)
  assert scales["stem_conv1"]["kernel"] == 0.5 ** 5
  assert scales["stages_0_blocks_0"]["attn_grid"]["attn"]["qkv"]["kernel"] == 0.5 ** 4
  assert scales["stages_3_blocks_0"]["conv"]["pre_norm"]["scale"] == 0.5
  assert scales["head_pre_logits"]["kernel"] == scales["head"]["kernel"] == 1.0
  # pylint: disable-next=import-outside-toplevel
  from vision_jax.explain import ExplainError, attention_rollout
  with pytest.raises(ExplainError, match="block and grid attention"):
    attention_rollout(module, {"params": params}, np.zeros((1, 64, 64, 3), np.float32))
