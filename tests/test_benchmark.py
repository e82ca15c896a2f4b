"""Throughput tools: peers of our train step (timm, a plain Flax step), the accelerator report
(its CPU smoke run, its budget, its out-of-memory back-off), and the host pipeline's knobs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import run_tool_process, tool_module

from tests.conftest import ROOT  # noqa: E402  (the repository root)
# One model of each family, at sizes where every one of them runs.
FAMILIES = ["resnet18", "resnetv2_50x1_bit", "efficientnet_b0", "vit_tiny_patch16_224",
            "vit_tiny_r_s16_p8_224", "vgg11", "convnext_atto"]


# benchmark_input pins the process to --cores CPUs: it runs in a process of its own.
run_tool = run_tool_process


def tool_main(script):
  return tool_module(script).main


# ---------------------------------------------------------------------------
# tools/benchmark.py --compare timm / flax
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_timm_and_flax_from_the_command_line(capsys, monkeypatch):
  pytest.importorskip("timm")
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # what the tool sets
  code = tool_main("benchmark.py")([
      "--model", "resnet18", "--batch-size", "2", "--image-size", "32", "--compare", "timm",
      "--compare", "flax", "--no-trainer", "--steps", "1", "--repeats", "1",
      "--torch-threads", "1"])
  out = capsys.readouterr()
  assert code == 0, out.err
  row = json.loads(out.out.strip().splitlines()[-1])
  assert row["model"] == "resnet18" and row["batch_size"] == 2 and row["image_size"] == 32
  assert row["devices"] == 1, "with a peer, our step runs on one device like the peers"
  assert row["dtype"] == "float32" and row["timm_precision"] == "fp32"
  assert row["timm_name"] == "resnet18" and row["timm_channels_last"] is True
  assert row["timm_compiled"] is False and row["timm_device"] == "cpu"
  assert row["timm_threads"] == 1 and row["timm_params"] == 11_689_512
  for key in ("images_per_sec", "timm_images_per_sec", "flax_images_per_sec", "jax_over_timm",
              "ours_over_flax", "compile_s", "flax_compile_s", "timm_compile_s", "mfu",
              "train_gflops_per_image", "peak_memory_mb", "flax_peak_memory_mb"):
    assert row[key] > 0, key
  assert row["jax_over_timm"] == pytest.approx(
      row["images_per_sec"] / row["timm_images_per_sec"], rel=2e-3)
  assert row["ours_over_flax"] == pytest.approx(
      row["images_per_sec"] / row["flax_images_per_sec"], rel=2e-3)
  # XLA's count for a forward and backward pass: about 3x the forward's 2 x 0.56 GMACs at 224.
  assert 0.05 < row["train_gflops_per_image"] < 0.2


@pytest.mark.parametrize("model_name", FAMILIES)
def test_timm_peer_of_every_family_has_our_architecture_and_trains(model_name):
  """timm's side, for one model of each family at 32 px: our parameter count, one step.

  (Ours and the flax step are the same code for every model; the two tests above run them.)
  """
  pytest.importorskip("timm")
  import jax
  import jax.numpy as jnp
  from vision_jax import models
  from vision_jax.bench import trials as benchmark
  ours = models.create_model(model_name, **benchmark.model_overrides(model_name, 32))
  shapes = jax.eval_shape(lambda: ours.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                            train=False))
  ours_count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))
  images, labels = benchmark.synthetic_batch(2, 32)
  trial = benchmark.timm_trial(model_name, images, labels, amp_bf16=False, threads=1, warmup=0)
  try:
    assert trial.info["timm_params"] == ours_count
    assert trial.info["timm_channels_last"] == (model_name != "vit_tiny_patch16_224")
    assert trial.run(1) > 0 and trial.compile_s > 0
  finally:
    trial.close()


def test_benchmark_errors_are_clear(capsys):
  main = tool_main("benchmark.py")
  cases = [
      (["--model", "resnet_18"], "Unknown model 'resnet_18'"),
      (["--model", "cifar_resnet20", "--compare", "timm"], "'cifar_resnet20' has no timm "
       "counterpart"),
      (["--model", "resnet18", "--compare", "torch"], "unknown peer(s) ['torch']"),
      (["--model", "resnet18", "--batch-size", "0"], "batch size 0: must be a positive integer"),
      (["--model", "resnet18", "--compare", "flax", "--num-devices", "2"], "the peers train on "
       "one device"),
      (["--model", "vit_tiny_patch16_224", "--image-size", "8"], "too small for "
       "vit_tiny_patch16_224"),
  ]
  for args, message in cases:
    argv = ["--batch-size", "2", "--image-size", "32", "--no-trainer", *args]
    assert main(argv) == 2, args
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, (args, err)
    assert "Traceback" not in err


# ---------------------------------------------------------------------------
# tools/accelerator_report.py
# ---------------------------------------------------------------------------
BLOCKED = ("tensorflow", "tensorflow_datasets", "ml_collections", "clu", "orbax")


def without_training_only_packages(tmp_path):
  """An environment where the packages the GPU machine may lack cannot be imported."""
  blocker = tmp_path / "blocker"
  blocker.mkdir()
  (blocker / "sitecustomize.py").write_text(
      "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED))
  env = dict(os.environ)
  return env, str(blocker)


@pytest.mark.slow
def test_accelerator_report_smoke(tmp_path):
  pytest.importorskip("timm")
  env, blocker = without_training_only_packages(tmp_path)
  out_dir = tmp_path / "report"
  env["PYTHONPATH"] = os.pathsep.join([blocker, ROOT])
  env["OMP_NUM_THREADS"] = "1"  # PyTorch's two threads crawl on a shared 2-core machine
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "accelerator_report.py"),
                         "--smoke", "--out-dir", str(out_dir), "--budget-s", "300"],
                        capture_output=True, text=True, env=env, timeout=600)
  log = (out_dir / "accelerator_report.log").read_text()
  assert proc.returncode == 0, proc.stderr + log
  report = json.loads((out_dir / "accelerator_report.json").read_text())
  assert report["complete"] and report["status"] == "complete", log
  assert [e["model"] for e in report["models"]] == ["resnet18", "vit_tiny_r_s16_p8_224"]
  for entry in report["models"]:
    for side in ("ours", "timm"):
      result = entry[side]
      assert result["status"] == "ok", (entry["model"], side, result, log)
      assert result["batch_size"] == 2, "batch 4 is a simulated out-of-memory: backed off to 2"
      assert [t["batch_size"] for t in result["tried"]] == [4]
      assert "simulated" in result["tried"][0]["error"]
      assert result["images_per_sec"] > 0 and result["compile_s"] > 0 and result["mfu"] > 0
    assert entry["ours"]["peak_memory_bytes"] > 0 and entry["ours"]["platform"] == "cpu"
    assert entry["timm"]["peak_memory_bytes"] is None, "no CUDA: no torch memory figure"
    assert entry["ours_over_timm"] == pytest.approx(
        entry["ours"]["images_per_sec"] / entry["timm"]["images_per_sec"])
  table = (out_dir / "accelerator_report.md").read_text()
  assert "| resnet18 | 32 | 2 / 2 |" in table and "| vit_tiny_r_s16_p8_224 | 32 | 2 / 2 |" in table
  assert "batch 4 did not fit" in table and "complete" in table


def test_accelerator_report_stops_cleanly_when_the_budget_runs_out(tmp_path, capsys,
                                                                  monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # what the tool sets for itself
  out_dir = tmp_path / "report"
  main = tool_main("accelerator_report.py")
  assert main(["--smoke", "--out-dir", str(out_dir), "--budget-s", "0.5"]) == 0
  assert "stopped: the budget ran out" in capsys.readouterr().out
  report = json.loads((out_dir / "accelerator_report.json").read_text())
  assert not report["complete"] and report["status"].startswith("stopped: the budget ran out")
  first = report["models"][0]
  assert first["model"] == "resnet18" and first["timm"]["status"] == "budget"
  assert "| resnet18 | 32 | - / budget |" in (out_dir / "accelerator_report.md").read_text()
  main = tool_main("accelerator_report.py")
  assert main(["--models", "cifar_resnet20@32", "--out-dir", str(tmp_path)]) == 2
  assert "'cifar_resnet20' has no timm counterpart" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Host input pipeline: config.data.num_parallel_calls and prefetch_batches.
# ---------------------------------------------------------------------------
def _pipeline_constants(ds, op):
  """The constant inputs of every `op` node in a tf.data graph."""
  import tensorflow as tf
  graph = tf.compat.v1.GraphDef()
  graph.ParseFromString(ds._as_serialized_graph().numpy())  # pylint: disable=protected-access
  consts = {n.name: tf.make_ndarray(n.attr["value"].tensor) for n in graph.node
            if n.op == "Const" and n.attr["dtype"].type != tf.string.as_datatype_enum}
  return [[consts[i.split(":")[0]].tolist() for i in n.input if i.split(":")[0] in consts]
          for n in graph.node if n.op == op]


def test_parallelism_and_prefetch_reach_tf_data(tmp_path):
  import ml_collections
  import tensorflow as tf
  from vision_jax.data import DatasetError, get_dataset
  for split, count in (("train", 8), ("val", 2)):
    for i in range(count):
      path = tmp_path / split / f"c{i % 2}" / f"{i}.png"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(tf.io.encode_png(np.full((8, 8, 3), 10 * i, np.uint8)).numpy())

  def dataset(**knobs):
    config = ml_collections.ConfigDict(dict(
        name=f"folder:{tmp_path}", preprocess_train="decode|flip_lr|value_range(0, 1)",
        preprocess_eval="decode|value_range(0, 1)", **knobs))
    return get_dataset(config)

  chosen = dataset(num_parallel_calls=3, prefetch_batches=5).train_dataset(4, seed=0)
  assert _pipeline_constants(chosen, "ParallelMapDatasetV2")[0][-1] == 3
  assert _pipeline_constants(chosen, "ParallelBatchDataset") == [[4, 3, True]]  # batch, calls
  assert _pipeline_constants(chosen, "PrefetchDataset")[0] == [5]
  auto = dataset().train_dataset(4, seed=0)
  assert _pipeline_constants(auto, "ParallelMapDatasetV2")[0][-1] == tf.data.AUTOTUNE
  assert _pipeline_constants(auto, "PrefetchDataset")[0] == [tf.data.AUTOTUNE]
  # Speed knobs only: the batches are the same.
  for a, b in zip(chosen.take(3).as_numpy_iterator(), auto.take(3).as_numpy_iterator()):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  with pytest.raises(DatasetError, match=r"config.data.prefetch_batches=0: must be a positive "
                     "integer, or unset for tf.data.AUTOTUNE"):
    dataset(prefetch_batches=0)


@pytest.mark.parametrize("field", ["num_parallel_calls", "prefetch_batches"])
def test_parallelism_knobs_are_validated(field):
  import ml_collections
  from vision_jax import config_check
  from vision_jax.config_util import ConfigError
  config = ml_collections.ConfigDict({
      "model": {"name": "cifar_resnet20"}, "data": {"name": "digits"}, "batch_size": 16,
      "total_steps": 10, "schedule": {"base_lr": 0.1}, "optimizer": {"name": "sgd"}})
  config_check.validate(config)
  for good in (None, 1, 64):
    config.data[field] = good
    config_check.validate(config)
  for bad in (0, -1, 2.5, "8", True):
    with config.data.ignore_type():
      config.data[field] = bad
    with pytest.raises(ConfigError, match=rf"config.data.{field}={bad!r}: must be a positive "
                       "integer"):
      config_check.validate(config)


def test_input_benchmark_per_core(tmp_path):
  out = run_tool("benchmark_input.py", "--images", "10", "--batch-size", "5", "--batches", "2",
                 "--size", "32", "--repeats", "1", "--cores", "1")
  assert out.returncode == 0, out.stderr
  row = json.loads(out.stdout.strip().splitlines()[-1])
  assert row["cores"] == 1 and row["crop"] == 32
  assert row["fused_images_per_s_per_core"] == pytest.approx(row["fused_images_per_s"], abs=0.1)
  assert row["decode_then_crop_images_per_s_per_core"] > 0
  assert row["fused_images_per_cpu_s"] > 0 and row["decode_then_crop_images_per_cpu_s"] > 0
  out = run_tool("benchmark_input.py", "--cores", "100000")
  assert out.returncode == 2 and "--cores 100000: this process may use 1 to" in out.stderr


def test_time_trials_settles_each_side_before_timing_it():
  """One untimed step of a side before its timed steps, every round (timing.alternate)."""
  from vision_jax.bench import trials as benchmark  # pylint: disable=import-outside-toplevel
  calls = []

  def trial(name, seconds_per_step):
    def run(n):
      calls.append((name, n))
      return n * seconds_per_step
    return benchmark.Trial(name, 2, 0.0, run, None, lambda: None, {})

  seconds = benchmark.time_trials([trial("ours", 0.5), trial("timm", 0.25)], steps=3, repeats=2)
  assert calls == [("ours", 1), ("ours", 3), ("timm", 1), ("timm", 3)] * 2
  assert seconds == {"ours": 0.5, "timm": 0.25}
