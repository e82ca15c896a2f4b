"""tools/benchmark_export.py: the latency rows (resnet18 at 32 px), the arguments' errors.

Speed itself is not asserted (that is the benchmark's job); the rows' fields,
their arithmetic and the command line's errors are.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")
pytest.importorskip("timm")

from vision_jax.bench import export_latency  # noqa: E402


@pytest.mark.slow  # a whole benchmark run (~45 s: three exports, three compiles, timm)
def test_rows_time_every_side_and_compare_with_timm(run_tool):
  code, out, err = run_tool("benchmark_export", "--model", "resnet18", "--image-size", 32,
                            "--batch-sizes", "1,2",
                            "--sides", "jax,stablehlo,onnx,tflite-int8,timm",
                            "--rounds", 1, "--warmup", 0, "--threads", 1)
  assert code == 0, err
  rows = [json.loads(line) for line in out.splitlines()]
  assert [r["batch_size"] for r in rows] == [1, 2]
  for row in rows:
    assert (row["model"], row["image_size"], row["threads"], row["rounds"]) == (
        "resnet18", 32, 1, 1)
    for side in ("jax", "stablehlo", "onnx", "tflite-int8", "timm"):
      assert row[f"{side}_ms"] > 0, side
    for side in ("jax", "stablehlo", "onnx", "tflite-int8"):
      # Rounded to 4 digits on print: the ratio is timm's time over the side's.
      np.testing.assert_allclose(row[f"{side}_over_timm"], row["timm_ms"] / row[f"{side}_ms"],
                                 rtol=2e-3)
    assert "timm_over_timm" not in row


@pytest.mark.parametrize("args, message", [
    (["--sides", "jax,tensorrt"], "unknown side 'tensorrt'; choose from jax, stablehlo"),
    (["--batch-sizes", "1,x"], "--batch-sizes '1,x': give whole numbers"),
    (["--batch-sizes", "0"], "--batch-sizes and --rounds must be at least 1"),
])
def test_bad_arguments_are_one_line(run_tool, args, message):
  code, out, err = run_tool("benchmark_export", "--model", "convnext_atto", *args)
  assert code == 2 and out == ""
  assert err.count("\n") == 1 and message in err, err


def test_unknown_model_is_one_line(run_tool):
  code, _, err = run_tool("benchmark_export", "--model", "convnext_nano_typo")
  assert code == 2 and err.startswith("error: ") and "convnext_nano_typo" in err


def test_exportable_for_has_random_weights_of_the_model():
  model = export_latency.exportable_for("convnext_atto", 32, depths=(1, 1, 1, 1),
                                        widths=(8, 8, 16, 16))
  assert model.input_shape == (32, 32, 3) and model.family == "convnext"
  assert len(model.class_names) == 1000
  assert model.variables["params"]["head"]["kernel"].shape[-1] == 1000
