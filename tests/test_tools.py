"""Command-line tools: weight conversion, FLOPs, and init_from a converted checkpoint."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from tests import jitted



def test_convert_timm_safetensors_then_load(tmp_path, run_tool):
  timm = pytest.importorskip("timm")
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file
  from vision_jax import models
  from vision_jax.weights import io
  from tests.timm_parity import randomize_norms, relative_error

  model = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
  randomize_norms(model)
  path = str(tmp_path / "resnet18.safetensors")
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
  out = run_tool("convert_weights.py", "--from", "timm", "--model", "resnet18.a1_in1k",
                 "--input", path, "--output", str(tmp_path / "converted"))
  assert out.returncode == 0, out.stderr
  meta, variables = io.load_converted(str(tmp_path / "converted"))
  assert meta["model"] == "resnet18" and meta["num_classes"] == 7
  assert meta["info"]["input_size"] == 224 and meta["num_params"] > 11_000_000
  module = models.create_model("resnet18", num_classes=7)
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  ours = jitted.apply(module, variables, jnp.asarray(x), train=False)
  with torch.no_grad():
    ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  assert relative_error(ours, ref) < 1e-4

  again = run_tool("convert_weights.py", "--from", "timm", "--model", "resnet18",
                   "--input", path, "--output", str(tmp_path / "converted"))
  assert again.returncode == 2 and "already exists" in again.stderr


def test_convert_reports_bad_input(tmp_path, run_tool):
  out = run_tool("convert_weights.py", "--from", "timm", "--model", "resnet18",
                 "--input", str(tmp_path / "nope.safetensors"), "--output", str(tmp_path / "o"))
  assert out.returncode == 2 and "does not exist" in out.stderr
  from safetensors.numpy import save_file
  path = str(tmp_path / "wrong.safetensors")
  save_file({"fc.weight": np.zeros((10, 512), np.float32)}, path)
  out = run_tool("convert_weights.py", "--from", "timm", "--model", "resnet18",
                 "--input", path, "--output", str(tmp_path / "o"))
  assert out.returncode == 2 and "missing keys (" in out.stderr and "bn1.running_mean" in out.stderr
  assert not os.path.exists(tmp_path / "o"), "nothing is written for a checkpoint that does not fit"
  out = run_tool("convert_weights.py", "--from", "timm", "--model", "resnet_9000",
                 "--input", path, "--output", str(tmp_path / "o"))
  assert out.returncode == 2 and "unknown timm model 'resnet_9000'" in out.stderr


def test_load_converted_rejects_other_directories(tmp_path):
  from vision_jax.weights import io
  with pytest.raises(FileNotFoundError, match="not a converted-weights directory"):
    io.load_converted(str(tmp_path))


def test_flops_tool(run_tool):
  out = run_tool("flops.py", "--model", "resnet50", "--image-size", "112")
  assert out.returncode == 0, out.stderr
  row = json.loads(out.stdout.strip().splitlines()[-1])
  assert row["model"] == "resnet50" and row["image_size"] == 112
  assert 1.9 < row["gflops_per_image"] < 2.1
  out = run_tool("flops.py", "--model", "resnet5")
  assert out.returncode == 2 and "Unknown model" in out.stderr
