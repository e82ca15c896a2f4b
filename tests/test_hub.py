"""Pretrained weights by name (vision_jax.pretrained), offline, from a hub cache built here.

The hub cache is laid out as huggingface_hub lays it out (models--ORG--NAME/blobs,
refs/main, snapshots/<commit>/...), filled with timm's own writer (`save_for_hf`:
model.safetensors + config.json) from timm models with random weights and
perturbed norm statistics, and read with HF_HUB_OFFLINE=1: nothing is downloaded.

One tag per family. To keep CI cheap, the architectures that timm can shrink are
shrunk (ViTs to one block at 32 px, BiT to two one-block stages, VGG to the
widths of configs/transfer.py's smoke run); the tag, its config.json and every
step of resolution, conversion and caching are the real ones.
"""

from __future__ import annotations

import io
import json
import logging
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from tests.timm_parity import randomize_norms, relative_error  # noqa: E402
from tests.conftest import run_tool_here
from vision_jax.weights import WeightLoadError, hub  # noqa: E402

# One worker builds the offline hub cache (seven timm models) and runs every test on it.
pytestmark = pytest.mark.xdist_group("hub_cache")

from tests.conftest import ROOT  # noqa: E402  (the repository root)
# The VGG widths of configs/transfer.py's smoke run, so the fine-tune test loads them.
VGG_LAYERS = (8, "M", 16, "M", 16, "M", 32, "M", 32, "M")
VGG_OVERRIDES = {"layers": VGG_LAYERS, "hidden_width": 32, "pre_logits_width": 32}


def _timm_model(tag: str):
  """A timm model of `tag`'s architecture (reduced where timm allows), random weights."""
  torch.manual_seed(0)
  arch = tag.split(".")[0]
  if arch == "vgg11_bn":
    from timm.layers import ClassifierHead  # pylint: disable=import-outside-toplevel
    from timm.models.vgg import VGG, ConvMlp  # pylint: disable=import-outside-toplevel
    model = VGG(list(VGG_LAYERS), num_classes=5, norm_layer=torch.nn.BatchNorm2d)
    model.pre_logits = ConvMlp(32, 32, 7, mlp_ratio=1.0)
    model.head = ClassifierHead(32, 5)
    model.pretrained_cfg = dict(timm.models.get_pretrained_cfg(tag).to_dict(), architecture=arch)
  elif arch == "resnetv2_50x1_bit":
    from timm.models.resnetv2 import _create_resnetv2_bit  # pylint: disable=import-outside-toplevel
    model = _create_resnetv2_bit(tag, layers=(1, 1), channels=(128, 128), stem_chs=32,
                                 num_classes=5)
  elif arch.startswith("vit_"):
    model = timm.create_model(tag, pretrained=False, num_classes=5, img_size=32, depth=1)
  elif arch == "resnet18":  # 1000 classes: the photograph test compares top-5s
    model = timm.create_model(tag, pretrained=False)
  else:
    model = timm.create_model(tag, pretrained=False, num_classes=5)
  randomize_norms(model.eval())
  return model


# tag -> the create_model overrides that our side needs for the reduced architecture (the
# ViTs' depth and image size are read from the checkpoint).
FAMILIES = {
    "resnet18.a1_in1k": {},
    "resnetv2_50x1_bit.goog_in21k_ft_in1k": {"layers": (1, 1), "channels": (128, 128),
                                             "stem_chs": 32},
    "efficientnet_b0.ra_in1k": {},
    "vit_tiny_patch16_224.augreg_in21k_ft_in1k": {},
    "vit_tiny_r_s16_p8_224.augreg_in21k_ft_in1k": {},
    "vgg11_bn.tv_in1k": VGG_OVERRIDES,
    "convnext_atto.d2_in1k": {},
}


def _save(model, directory, **kwargs) -> dict[str, str]:
  from timm.models._hub import save_for_hf  # pylint: disable=import-outside-toplevel
  save_for_hf(model, str(directory), safe_serialization=True, model_args={}, **kwargs)
  return {n: os.path.join(str(directory), n) for n in ("config.json", "model.safetensors")}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
  """HF_HUB_CACHE (offline) holding one tag per family, a private conversion cache and
  TORCH_HOME; yields {tag: timm model}."""
  root = tmp_path_factory.mktemp("hub")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("HF_HUB_CACHE", str(root / "hf"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("VISION_JAX_CACHE", str(root / "vj"))
    mp.setenv("TORCH_HOME", str(root / "torch"))
    models = {}
    for tag in FAMILIES:
      models[tag] = _timm_model(tag)
      kwargs = {}
      if tag.startswith("convnext"):  # label names travel in config.json
        kwargs["model_config"] = {"label_names": ["ant", "bee", "cat", "dog", "eel"]}
      hub.add_to_hub_cache(f"timm/{tag}", _save(models[tag], root / "saved" / tag, **kwargs))
    yield models, root


def _logits(module, variables, x):
  from vision_jax.forward import eval_apply  # pylint: disable=import-outside-toplevel
  return np.asarray(eval_apply(module, variables, x))


def _torch_logits(model, x):
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


@pytest.mark.parametrize("tag", list(FAMILIES))
def test_every_family_loads_by_tag_with_timm_logits(hub_cache, tag):
  models, _ = hub_cache
  loaded = hub.pretrained(f"timm:{tag}", **FAMILIES[tag])
  assert loaded.source == f"hf-hub:timm/{tag}@main" and loaded.metadata_from == "config.json"
  cfg = models[tag].pretrained_cfg
  assert loaded.preprocess_cfg["crop_pct"] == cfg["crop_pct"]
  assert loaded.preprocess_cfg["mean"] == list(cfg["mean"])
  assert loaded.preprocess_cfg["interpolation"] == cfg["interpolation"]
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
  err = relative_error(_logits(loaded.module, loaded.variables, x), _torch_logits(models[tag], x))
  print(tag, f"relative error {err:.2e}")
  assert err < 1e-5, (tag, err)
  if tag.startswith("convnext"):
    assert loaded.class_names == ["ant", "bee", "cat", "dog", "eel"]


def test_name_forms_cache_and_num_classes(hub_cache):
  module, variables, preprocess = hub.pretrained("timm/convnext_atto.d2_in1k")
  assert preprocess.startswith("decode|timm_resize_crop(224, crop_pct=0.875")  # its config.json
  again = hub.pretrained("hf-hub:timm/convnext_atto.d2_in1k@main")
  assert again.from_cache and again.sha256 == hub.file_sha256(again.weights_file)
  import jax  # pylint: disable=import-outside-toplevel
  jax.tree_util.tree_map(np.testing.assert_array_equal, again.variables, variables)
  import vision_jax  # pylint: disable=import-outside-toplevel
  new = vision_jax.pretrained("convnext_atto.d2_in1k", num_classes=3)
  assert new.module.num_classes == 3 and new.variables["params"]["head"]["kernel"].shape[-1] == 3
  assert float(np.abs(new.variables["params"]["head"]["kernel"]).max()) == 0.0
  np.testing.assert_array_equal(new.variables["params"]["stem_conv"]["kernel"],
                                variables["params"]["stem_conv"]["kernel"])
  features = hub.pretrained("timm:convnext_atto.d2_in1k", num_classes=0)
  assert features.module.num_classes == 0 and "head" not in features.variables["params"]


def test_damaged_cache_entry_is_removed_and_rebuilt_with_one_warning(hub_cache, caplog):
  first = hub.pretrained("timm:efficientnet_b0.ra_in1k")
  entries = [os.path.join(hub.cache_root(), "converted", e)
             for e in os.listdir(os.path.join(hub.cache_root(), "converted"))
             if e.startswith(first.sha256)]
  assert len(entries) == 1
  # Flip bytes inside the largest array file of the orbax checkpoint.
  files = [os.path.join(d, f) for d, _, fs in os.walk(entries[0]) for f in fs]
  victim = max(files, key=os.path.getsize)
  data = bytearray(open(victim, "rb").read())
  data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
  open(victim, "wb").write(bytes(data))
  with caplog.at_level(logging.WARNING):
    caplog.clear()
    rebuilt = hub.pretrained("timm:efficientnet_b0.ra_in1k")
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1 and "damaged" in warnings[0] and "\n" not in warnings[0], warnings
  assert not rebuilt.from_cache
  import jax  # pylint: disable=import-outside-toplevel
  jax.tree_util.tree_map(np.testing.assert_array_equal, rebuilt.variables, first.variables)
  assert hub.pretrained("timm:efficientnet_b0.ra_in1k").from_cache
  # A missing model.json is damage too.
  os.remove(os.path.join(entries[0], "model.json"))
  with caplog.at_level(logging.WARNING):
    caplog.clear()
    assert not hub.pretrained("timm:efficientnet_b0.ra_in1k").from_cache
  assert sum("damaged" in r.getMessage() for r in caplog.records) == 1


def test_local_dir_without_metadata_falls_back_to_the_registry_once(hub_cache, tmp_path, caplog):
  models, root = hub_cache
  files = _save(models["resnet18.a1_in1k"], tmp_path / "mine")
  config = json.load(open(files["config.json"]))
  for key in ("mean", "std", "crop_pct"):
    del config["pretrained_cfg"][key]
  json.dump(config, open(files["config.json"], "w"))
  # The hub's resnet18 is the same file: converted here (or by an earlier test of this
  # worker), its conversion is shared with the local directory through the sha256.
  hub_r18 = hub.pretrained("timm:resnet18.a1_in1k")
  with caplog.at_level(logging.WARNING):
    caplog.clear()
    loaded = hub.pretrained(f"local-dir:{tmp_path / 'mine'}")
    hub.pretrained(f"local-dir:{tmp_path / 'mine'}")
  notes = [r.getMessage() for r in caplog.records if "registry" in r.getMessage()]
  assert len(notes) == 1 and "crop_pct, mean, std" in notes[0], notes
  assert loaded.preprocess_cfg["mean"] == [0.485, 0.456, 0.406]  # the registry's resnet18
  assert loaded.preprocess_cfg["interpolation"] == "bicubic"  # still from config.json
  assert loaded.metadata_from.startswith("config.json, with crop_pct, mean, std")
  assert loaded.from_cache and loaded.sha256 == hub_r18.sha256
  # pytorch_model.bin (read with torch.load(weights_only=True)) when there is no safetensors.
  from timm.models._hub import save_for_hf  # pylint: disable=import-outside-toplevel
  save_for_hf(models["resnet18.a1_in1k"], str(tmp_path / "bin"), safe_serialization=False,
              model_args={})
  from_bin = hub.pretrained(f"local-dir:{tmp_path / 'bin'}")
  assert from_bin.weights_file.endswith("pytorch_model.bin") and not from_bin.from_cache
  import jax  # pylint: disable=import-outside-toplevel
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_bin.variables, hub_r18.variables)


def test_torchvision_and_npz_names(hub_cache, tmp_path):
  torchvision = pytest.importorskip("torchvision")
  from vision_jax.weights import npz, torchvision as tv  # pylint: disable=import-outside-toplevel
  # The table of file names is torchvision's own.
  for arch, weights in tv.TORCHVISION_WEIGHTS.items():
    for name, (filename, resize, crop) in weights.items():
      enum = torchvision.models.get_weight(f"{torchvision.models.get_model_weights(arch).__name__}"
                                           f".{name}")
      assert enum.url == tv.TORCHVISION_URL + filename
      assert (enum.transforms().resize_size, enum.transforms().crop_size) == ([resize], [crop])
  _, root = hub_cache
  model = torchvision.models.resnet18(num_classes=1000).eval()
  randomize_norms(model)
  path = os.path.join(os.environ["TORCH_HOME"], "hub", "checkpoints", "resnet18-f37072fd.pth")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  torch.save(model.state_dict(), path)
  loaded = hub.pretrained("torchvision:resnet18.IMAGENET1K_V1")
  assert loaded.preprocess_cfg["crop_pct"] == 224 / 256
  assert loaded.preprocess_cfg["interpolation"] == "bilinear"
  x = np.random.default_rng(2).standard_normal((2, 32, 32, 3)).astype(np.float32)
  assert relative_error(_logits(loaded.module, loaded.variables, x), _torch_logits(model, x)) < 1e-5
  # big_vision's .npz layout, the architecture named in the spec.
  vit = hub.pretrained("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k")
  np.savez(tmp_path / "vit.npz", **npz.to_npz("vit_tiny_patch16_224", vit.variables))
  back = hub.pretrained(f"npz:vit_tiny_patch16_224@{tmp_path / 'vit.npz'}")
  np.testing.assert_allclose(_logits(back.module, back.variables, x),
                             _logits(vit.module, vit.variables, x), rtol=1e-6, atol=1e-6)
  with pytest.raises(hub.PretrainedError, match="does not name its architecture"):
    hub.pretrained(f"npz:{tmp_path / 'vit.npz'}")


# ---------------------------------------------------------------------------------------------
# Every bad input: one line naming the problem and the fix.


def _entries() -> list[str]:
  """The conversion cache's entries."""
  directory = os.path.join(hub.cache_root(), "converted")
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def _one_line(e) -> str:
  text = str(e.value)
  assert "\n" not in text, text
  return text


def test_errors_unknown_tag_unimplemented_architecture_and_offline(hub_cache):
  with pytest.raises(hub.PretrainedError) as e:
    hub.pretrained("timm:convnext_atto.d2_in1kk")
  assert "Nearest known tags: convnext_atto.d2_in1k" in _one_line(e)
  with pytest.raises(hub.PretrainedError) as e:
    hub.pretrained("resnext50_32x4d.a1h_in1k")
  assert "'resnext50_32x4d' is not implemented" in _one_line(e) and "resnet50," in str(e.value)
  with pytest.raises(hub.PretrainedError) as e:
    hub.pretrained("timm:convnext_tiny.fb_in22k")
  cmd = (f"`hf download timm/convnext_tiny.fb_in22k config.json model.safetensors --cache-dir "
         f"{os.environ['HF_HUB_CACHE']}`")
  assert cmd in _one_line(e) and "HF_HUB_OFFLINE" in str(e.value)
  with pytest.raises(hub.PretrainedError, match="not a hub repository name"):
    hub.pretrained("hf-hub:no_slash")
  # The trainer's config check says the same before any work (no workdir is created).
  from vision_jax import config_check  # pylint: disable=import-outside-toplevel
  from vision_jax.config_base import base_config  # pylint: disable=import-outside-toplevel
  from vision_jax.config_fields import FieldChecks  # pylint: disable=import-outside-toplevel
  from vision_jax.config_util import ConfigError  # pylint: disable=import-outside-toplevel
  for init_from, expected in [("timm:convnext_tiny.fb_in22k", "hf download"),
                              ("timm:resnext50_32x4d.a1h_in1k", "not implemented")]:
    config = base_config()
    config.init_from = init_from
    with pytest.raises(ConfigError) as e:
      config_check._check_init_from(FieldChecks(config))  # pylint: disable=protected-access
    assert expected in _one_line(e) and e.value.args[0].startswith("config.init_from=")


def test_init_from_weights_of_another_architecture_is_refused(hub_cache):
  from vision_jax.config_util import ConfigError  # pylint: disable=import-outside-toplevel
  from vision_jax.train import pretrained  # pylint: disable=import-outside-toplevel
  with pytest.raises(ConfigError) as e:
    pretrained.pretrained_variables("timm:convnext_atto.d2_in1k", "resnet18")
  assert "holds convnext_atto weights" in _one_line(e) and "'resnet18'" in str(e.value)


def test_errors_not_a_timm_repo_and_a_file_that_does_not_fit(hub_cache, tmp_path):
  models, _ = hub_cache
  (tmp_path / "bert").mkdir()
  (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
  (tmp_path / "bert" / "model.safetensors").write_bytes(b"")
  hub.add_to_hub_cache("someone/bert-ish", {n: str(tmp_path / "bert" / n)
                                            for n in ("config.json", "model.safetensors")})
  with pytest.raises(hub.PretrainedError) as e:
    hub.pretrained("hf-hub:someone/bert-ish")
  assert "not a timm model" in _one_line(e) and "'bert'" in str(e.value)
  # resnet18's config with BiT's weights: the WeightLoadError table.
  files = _save(models["resnet18.a1_in1k"], tmp_path / "r18")
  bit = _save(models["resnetv2_50x1_bit.goog_in21k_ft_in1k"], tmp_path / "bit")
  hub.add_to_hub_cache("someone/mixed", {"config.json": files["config.json"],
                                         "model.safetensors": bit["model.safetensors"]})
  before = _entries()
  with pytest.raises(WeightLoadError, match=r"(?s)^hf-hub:someone/mixed@main: from_timm\('resnet18'\)"
                     r".*missing keys \(\d+\):\n.*conv1.weight.*unexpected keys"):
    hub.pretrained("hf-hub:someone/mixed")
  assert _entries() == before  # nothing cached for a file that does not fit


def test_network_failure_mid_download_leaves_nothing(hub_cache, monkeypatch):
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  from huggingface_hub import errors  # pylint: disable=import-outside-toplevel
  monkeypatch.delenv("HF_HUB_OFFLINE")
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
  blobs = os.path.join(os.environ["HF_HUB_CACHE"], "models--timm--convnext_tiny.fb_in22k", "blobs")

  def download(repo_id, filename, local_files_only=False, **kwargs):
    if local_files_only:
      raise errors.LocalEntryNotFoundError("not cached")
    os.makedirs(blobs, exist_ok=True)  # what huggingface_hub leaves when a stream breaks
    with open(os.path.join(blobs, "0" * 64 + ".incomplete"), "wb") as f:
      f.write(b"half a file")
    raise ConnectionError("Connection reset by peer")

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
  before = _entries()
  with pytest.raises(hub.PretrainedError) as e:
    hub.pretrained("timm:convnext_tiny.fb_in22k")
  assert ("downloading config.json of timm/convnext_tiny.fb_in22k failed (ConnectionError: "
          "Connection reset by peer); nothing was kept in the cache") in _one_line(e)
  assert os.listdir(blobs) == []
  assert _entries() == before


def _run(tool: str, args: list[str], capsys):
  return run_tool_here(tool, *args, capsys=capsys)


def test_tools_exit_2_with_one_line_and_write_nothing(hub_cache, tmp_path, capsys):
  image = tmp_path / "x.png"
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  for weights, expected in [("timm:resnet50.a1_in1kk", "Nearest known tags"),
                            ("timm:resnext50_32x4d.a1h_in1k", "not implemented"),
                            ("timm:convnext_tiny.fb_in22k", "hf download"),
                            ("nonexistent_dir", "timm:nonexistent_dir")]:
    out = tmp_path / "preds.jsonl"
    code, _, err = _run("predict", ["--weights", weights, str(image), "--output", str(out)], capsys)
    assert code == 2 and err.startswith("error: ") and expected in err, err
    assert err.count("\n") == 1 and not out.exists()
  code, _, err = _run("convert_weights", ["--weights", "timm:convnext_tiny.fb_in22k", "--output",
                                          str(tmp_path / "conv")], capsys)
  assert code == 2 and "hf download" in err and not (tmp_path / "conv").exists()
  code, _, err = _run("evaluate", ["--weights", "timm:resnet50.a1_in1kk", "--data", "digits",
                                   "--confusion", str(tmp_path / "c.png")], capsys)
  assert code == 2 and "Nearest known tags" in err and not (tmp_path / "c.png").exists()
  code, _, err = _run("explain", ["--weights", "timm:resnet50.a1_in1kk", str(image),
                                  "--output-dir", str(tmp_path / "maps")], capsys)
  assert code == 2 and "Nearest known tags" in err and not (tmp_path / "maps").exists()


# ---------------------------------------------------------------------------------------------
# End to end: a photograph through our preprocessing, predict, convert, fine-tune.


def test_photograph_parity_and_predict_top5_equal_timm(hub_cache, tmp_path, capsys):
  skdata = pytest.importorskip("skimage.data")
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from timm.data import create_transform, resolve_data_config  # pylint: disable=import-outside-toplevel
  from vision_jax import inference  # pylint: disable=import-outside-toplevel
  models, _ = hub_cache
  tag = "resnet18.a1_in1k"
  reference = models[tag]
  path = tmp_path / "chelsea.png"
  Image.fromarray(skdata.chelsea()).save(path)
  model = inference.load_model(weights=f"timm:{tag}")
  _, ours_in = inference.read_images([str(path)], model.preprocess)
  timm_in = create_transform(**resolve_data_config({}, model=reference))(
      Image.open(path).convert("RGB")).numpy().transpose(1, 2, 0)[None]
  diff = np.abs(ours_in - timm_in)
  # Issue 9's bound for the preprocessing; the model itself within 1e-5 on the same input.
  assert diff.mean() <= 0.02 and np.percentile(diff, 99) <= 0.15, (diff.mean(), diff.max())
  ours = model.logits(ours_in)
  err = relative_error(ours, _torch_logits(reference, ours_in))
  print(f"photograph: preprocessing mean |diff| {diff.mean():.4f}, logits relative error {err:.2e}")
  assert err < 1e-5
  timm_top5 = list(np.argsort(-_torch_logits(reference, timm_in)[0])[:5])
  code, out, _ = _run("predict", ["--weights", f"timm:{tag}", str(path), "--top-k", "5", "--json"], capsys)
  assert code == 0
  top = json.loads(out.strip().splitlines()[-1])["top_k"]
  assert [t["class"] for t in top] == timm_top5
  assert top[0]["name"] == inference.imagenet_class_names()[timm_top5[0]]
  # The README's two lines.
  import vision_jax  # pylint: disable=import-outside-toplevel
  names = [name for name, _ in vision_jax.pretrained(f"timm:{tag}").classify(str(path))[0]]
  assert names == [inference.imagenet_class_names()[c] for c in timm_top5]
  code, out, _ = _run("convert_weights", ["--weights", f"timm:{tag}", "--output",
                                          str(tmp_path / "r18")], capsys)
  assert code == 0, out
  meta = json.load(open(tmp_path / "r18" / "model.json"))
  assert meta["model"] == "resnet18" and meta["preprocess"]["crop_pct"] == 0.95
  assert meta["preprocess"]["from"] == "config.json"


@pytest.mark.slow  # a whole transfer run; loading by tag is checked per family in the quick tier
def test_fine_tune_from_a_tag_loads_the_weights_and_trains(hub_cache, tmp_path, caplog):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from vision_jax.config_util import load_config  # pylint: disable=import-outside-toplevel
  from vision_jax.train import trainer  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for split in ("train", "val"):
    for c, name in enumerate(("red", "blue")):
      (tmp_path / "data" / split / name).mkdir(parents=True)
      for i in range(8):
        pixels = rng.integers(0, 80, (40, 40, 3), dtype=np.uint8)
        pixels[..., 0 if c == 0 else 2] += 150
        Image.fromarray(pixels).save(tmp_path / "data" / split / name / f"{i}.png")
  config = load_config(os.path.join(ROOT, "configs", "transfer.py"),
                       f"model=vgg11_bn,dataset=folder:{tmp_path / 'data'},"
                       "init_from=timm:vgg11_bn.tv_in1k,smoke")
  # The absl logger's own level too: TensorFlow's TFLite converter, run earlier in the same
  # worker (tests/test_export.py), leaves it at WARNING.
  with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="absl"):
    final = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  text = "\n".join(r.getMessage() for r in caplog.records)
  table = text[text.index("Loaded timm:vgg11_bn.tv_in1k"):]
  loaded = int(table.split("\nloaded")[1].split()[0])
  skipped = table.split("\nskipped")[1].splitlines()[0]
  assert loaded >= 20 and "params/head/kernel" in skipped, table[:600]
  assert " 0  " in table.split("\nmissing")[1].splitlines()[0]
  assert final["eval_count"] == 16 and np.isfinite(final["eval_loss"])
