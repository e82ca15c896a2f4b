"""tools/explain_report.py and tools/explain.py --metrics on a small digits classifier.

The report page is opened in a real headless browser (Debian's
chromium-headless-shell, installed by .ci/run): a script in the page counts the
pictures that decoded and the tables once it has loaded, and --dump-dom hands
back the DOM with those counts.
"""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from tests.conftest import run_tool_here

pytestmark = pytest.mark.xdist_group("explain_report")

IMAGES = 3
SIZE = 8
# One basic block of 4 channels: top-level parameterised layers conv1, bn1, layer1_0, head.
OVERRIDES = {"stage_sizes": (1,), "widths": (4,), "stem_width": 4}


@pytest.fixture(scope="module", autouse=True)
def cheap_random_bits():
  """JAX's 'rbg' generator while these tests run, its default (threefry) restored after.

  The tool draws fresh parameters (sanity checks) and random pixel subsets (metrics);
  XLA on the CPU takes seconds to compile threefry's rounds and a fraction of that for
  'rbg'. Nothing here depends on which bits are drawn, only on their being drawn.
  """
  import jax  # pylint: disable=import-outside-toplevel
  previous = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")
  yield
  jax.config.update("jax_default_prng_impl", previous)


@pytest.fixture(scope="module")
def digits_weights(tmp_path_factory):
  """Converted weights of a one-block cifar_resnet20 for 8 px digits, and a folder of PNGs.

  The report and the --metrics option do not depend on the model's depth or width: a
  ResNet with one 4-channel block (stem conv, its BatchNorm, the block, the head) runs
  every code path that cifar_resnet20 does, at a fraction of the compile time. Its
  weights are drawn in numpy (`init` would compile a random-number program for nothing).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from vision_jax import models  # pylint: disable=import-outside-toplevel
  from vision_jax.data import digits_dataset  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import io as weights_io  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("report")
  module = models.create_model("cifar_resnet20", num_classes=10, **OVERRIDES)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, np.float32) if path[-1].key == "var" else
                       0.5 * rng.standard_normal(s.shape).astype(np.float32)), shapes)
  weights = weights_io.save_converted(str(root / "weights"), variables, "cifar_resnet20", 10,
                                      overrides=OVERRIDES)
  # Read the PNGs at 8 px, whole, in [-1, 1]: the digits model's input.
  meta_path = os.path.join(weights, weights_io.METADATA_FILE)
  with open(meta_path, encoding="utf-8") as f:
    meta = json.load(f)
  meta["preprocess"] = {"input_size": SIZE, "crop_pct": 1.0, "interpolation": "bilinear",
                        "mean": [0.5] * 3, "std": [0.5] * 3}
  with open(meta_path, "w", encoding="utf-8") as f:
    json.dump(meta, f)
  folder = root / "images"
  folder.mkdir()
  images, _ = digits_dataset(image_size=SIZE).eval
  for i in range(IMAGES):
    pixels = np.round((np.asarray(images[i, ..., 0]) + 1) * 127.5).astype(np.uint8)
    Image.fromarray(pixels).save(folder / f"digit{i}.png")
  return weights, str(folder), root


class _Page(html.parser.HTMLParser):
  """Counts images (and their data URIs), tables and the rows of each table by id."""

  def __init__(self):
    super().__init__()
    self.images, self.tables, self.rows, self.cells = [], [], {}, []
    self._table = None
    self._cell = None

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "img":
      self.images.append(attrs.get("src", ""))
    elif tag == "table":
      self._table = attrs.get("id")
      self.tables.append(self._table)
      self.rows[self._table] = []
    elif tag == "tr":
      self.rows[self._table].append([])
    elif tag in ("td", "th"):
      self._cell = ""

  def handle_data(self, data):
    if self._cell is not None:
      self._cell += data

  def handle_endtag(self, tag):
    if tag in ("td", "th") and self._cell is not None:
      self.rows[self._table][-1].append(self._cell.strip())
      self._cell = None


def test_report_page_shows_maps_metrics_and_sanity_curves_in_a_browser(digits_weights, capsys,
                                                                        tmp_path):
  weights, folder, _ = digits_weights
  out = tmp_path / "report.html"
  args = ["--weights", weights, folder, "--methods", "gradcam,saliency", "--metrics",
          "deletion,faithfulness_correlation", "--sanity", "cascading", "--out", str(out)]
  code, stdout, err = run_tool_here("explain_report", *args, capsys=capsys)
  assert code == 0, err
  assert f"{out}: report on {IMAGES} images" in stdout
  page = _Page()
  page.feed(out.read_text(encoding="utf-8"))
  # Per image: the input and one overlay per method; then the sanity plot.
  assert len(page.images) == IMAGES * 3 + 1
  assert all(src.startswith("data:image/png;base64,") for src in page.images)
  assert page.tables == ["maps", "metrics", "sanity"]
  metrics_rows = page.rows["metrics"]
  assert [r[0] for r in metrics_rows] == ["method", "gradcam", "saliency", "random"]
  saved = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
  for row in metrics_rows[1:]:
    assert float(row[1]) == pytest.approx(saved["metrics"][row[0]]["deletion"], abs=5e-4)
  cascade = saved["sanity"][0]
  assert cascade["mode"] == "cascading" and cascade["steps"][:2] == ["original", "head"]
  # Every parameterised layer is re-drawn, from the head down.
  assert cascade["steps"] == ["original", "head", "layer1_0", "bn1", "conv1"]
  assert cascade["ssim"]["gradcam"][0] == 1.0
  # The same file again is refused; a metric that needs boxes without them is one line.
  code, _, err = run_tool_here("explain_report", *args, capsys=capsys)
  assert code == 2 and "exists; pass --overwrite" in err
  code, _, err = run_tool_here("explain_report", "--weights", weights, folder, "--metrics",
                               "pointing_game", "--out", str(tmp_path / "b.html"), capsys=capsys)
  assert code == 2 and err.strip().count("\n") == 0 and "needs --boxes" in err

  browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
  if browser is None:
    pytest.skip("no headless Chromium (.ci/run installs chromium-headless-shell): the page "
                "was checked by parsing only")
  dom = subprocess.run([browser, "--no-sandbox", "--disable-gpu", "--dump-dom",
                        out.resolve().as_uri()], capture_output=True, text=True, timeout=120,
                       check=True).stdout
  shown = _Page()
  shown.feed(dom)
  body = dom[dom.index("<body"):dom.index(">", dom.index("<body"))]
  assert f'data-images="{IMAGES * 3 + 1}"' in body, body
  assert f'data-images-shown="{IMAGES * 3 + 1}"' in body, body  # every picture decoded
  assert 'data-tables="3"' in body, body
  assert [r[0] for r in shown.rows["metrics"]][1:] == ["gradcam", "saliency", "random"]


def test_explain_metrics_option_writes_the_table_and_needs_boxes_for_pointing(digits_weights,
                                                                             capsys, tmp_path):
  weights, folder, _ = digits_weights
  boxes = tmp_path / "boxes.json"
  boxes.write_text(json.dumps({f"digit{i}.png": [0, 0, SIZE, SIZE // 2] for i in range(IMAGES)}))
  code, _, err = run_tool_here("explain", "--weights", weights, folder, "--out",
                               str(tmp_path / "maps"), "--metrics", "pointing_game",
                               capsys=capsys)
  assert code == 2 and "--metrics pointing_game needs --boxes" in err
  code, stdout, err = run_tool_here("explain", "--weights", weights, folder, "--out",
                                    str(tmp_path / "maps"), "--method", "saliency",
                                    "--size", "input", "--metrics", "deletion,pointing_game",
                                    "--boxes", str(boxes), capsys=capsys)
  assert code == 0, err
  table = json.loads((tmp_path / "maps" / "metrics_saliency.json").read_text())
  assert set(table) == {"saliency", "random"}
  assert set(table["saliency"]) == {"deletion", "pointing_game"}
  assert 0 <= table["saliency"]["deletion"] <= 1
  assert table["saliency"]["pointing_game"] in [k / IMAGES for k in range(IMAGES + 1)]
  assert "deletion (lower better)" in stdout and "random" in stdout
  with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
    run_tool_here("explain", "--weights", weights, folder, "--out", str(tmp_path / "m2"),
                  "--metrics", "auc", capsys=capsys)
  assert exit_info.value.code == 2 and "unknown metric 'auc'" in capsys.readouterr().err
