"""One HTML page that says how far a model's attribution maps can be trusted.

  python tools/explain_report.py --workdir /tmp/digits images/ --out report.html
  python tools/explain_report.py --weights weights/r50 photos/ --methods gradcam,ig \\
      --metrics deletion,insertion --sanity cascading --out r50.html

The page is self-contained (pictures embedded as data URIs, no scripts or files
from elsewhere), so it can be mailed or attached to an issue. It holds:
- every method's map on every image (at most --max-images), side by side, drawn
  on the model's input;
- the metrics table (vision_jax.explain.metrics) of each method against maps
  drawn at random, the baseline a method must beat;
- the sanity-check curves (vision_jax.explain.sanity): SSIM and Spearman rank
  correlation of each method's maps as the model's layers are re-initialised
  from the top down (--sanity cascading,independent), and, with
  --permuted-workdir or --permuted-weights (the same model trained on shuffled
  labels, e.g. by sanity.train_with_permuted_labels), the data-randomisation test.
The same numbers are written beside the page as JSON (NAME.json).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import sys

import numpy as np

from vision_jax.cli import common
from vision_jax.cli import explain as explain_cli

SANITY_MODES = ("cascading", "independent")


def _names(choices, what):
  def parse(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in choices] or ([] if names else [text])
    if bad:
      raise argparse.ArgumentTypeError(f"unknown {what} {bad[0]!r}; choose from "
                                       f"{', '.join(choices)}")
    return names
  return parse


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  common.add_model_args(parser)
  parser.add_argument("images", nargs="+", help="image files, globs or folders")
  # pylint: disable=import-outside-toplevel
  from vision_jax import explain
  from vision_jax.explain import metrics
  parser.add_argument("--methods", type=_names(tuple(explain.METHODS), "method"),
                      default=("gradcam", "saliency", "ig"),
                      help="comma-separated methods (default gradcam,saliency,ig)")
  parser.add_argument("--metrics", type=_names(metrics.METRICS, "metric"),
                      default=("deletion", "insertion", "road_morf", "road_lerf",
                               "faithfulness_correlation", "max_sensitivity"),
                      help="comma-separated metrics (pointing_game needs --boxes)")
  parser.add_argument("--boxes", help="JSON {image name: [x0, y0, x1, y1]} for pointing_game")
  parser.add_argument("--sanity", type=_names(SANITY_MODES, "sanity check"),
                      default=("cascading",), help="cascading, independent, or both")
  perm = parser.add_mutually_exclusive_group()
  perm.add_argument("--permuted-workdir", help="the run trained on permuted labels")
  perm.add_argument("--permuted-weights", help="its weights (as --weights)")
  parser.add_argument("--max-images", type=int, default=16,
                      help="images shown and scored (the first ones found)")
  parser.add_argument("--steps", type=int, default=16, help="Integrated Gradients steps")
  parser.add_argument("--out", required=True, help="the .html page to write")
  parser.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)

  from vision_jax import inference, output_paths
  if not args.out.lower().endswith(".html"):
    return common.report(f"--out must name an .html file, got {args.out!r}.")
  json_path = os.path.splitext(args.out)[0] + ".json"
  if "pointing_game" in args.metrics and not args.boxes:
    return common.report("--metrics pointing_game needs --boxes FILE.json (the object's box in "
                         "each image); leave pointing_game out otherwise.")
  listed = inference.list_images(args.images)
  if not listed:
    return common.report("no image files found in " + " ".join(args.images) + ".",
                         common.EXIT_FAILED)
  try:
    output_paths.refuse_overwrite([args.out, json_path], args.overwrite)
    model = inference.load_model(args.workdir, args.weights)
    permuted = (inference.load_model(args.permuted_workdir, args.permuted_weights)
                if args.permuted_workdir or args.permuted_weights else None)
  except (FileExistsError, inference.LoadError) as e:
    return common.report(e)
  paths, images = inference.read_images(listed[:max(1, args.max_images)], model.preprocess,
                                        warn=lambda m: print(m, file=sys.stderr))
  if not paths:
    return common.report("no image could be read.", common.EXIT_FAILED)
  try:
    results = build(explain, model, permuted, paths, images, args)
  except (explain.ExplainError, OSError, ValueError) as e:
    return common.report(e)
  page = render(model, paths, images, results)
  with open(output_paths.prepare(args.out), "w", encoding="utf-8") as f:
    f.write(page)
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump({"images": [os.path.basename(p) for p in paths], "metrics": results["metrics"],
               "sanity": [r.as_dict() for r in results["sanity"]]}, f, indent=2)
  print(explain_cli.format_table(results["metrics"]))
  print(f"{args.out}: report on {len(paths)} images, methods {', '.join(args.methods)}")
  return 0


def build(explain, model, permuted, paths, images, args) -> dict:
  """Maps, metrics table and sanity results for the report."""
  from vision_jax.explain import sanity  # pylint: disable=import-outside-toplevel
  targets = model.logits(images).argmax(1)
  calls, fns, maps = {}, {}, {}
  for method in args.methods:
    options = _options(explain_cli, model, method, args)
    fns[method] = sanity.method_fn(method, **options)
    calls[method] = (lambda x, t, fn=fns[method]: fn(model.module, model.variables, x, t))
    maps[method] = np.asarray(calls[method](images, targets))
  boxes = explain_cli.read_boxes(args.boxes, paths) if args.boxes else None
  table = explain_cli.metrics_table(model, images, maps, targets, args.metrics, calls,
                                    boxes=boxes)
  checks = [sanity.model_randomisation(model.module, model.variables, images, fns, targets,
                                       mode=mode) for mode in args.sanity]
  if permuted is not None:
    checks.append(sanity.data_randomisation(model.module, model.variables, permuted.variables,
                                            images, fns, targets))
  return {"targets": targets, "maps": maps, "metrics": table, "sanity": checks}


def _options(explain_cli_module, model, method, args) -> dict:
  # The explain tool's options for each method (layer default, IG's black baseline).
  namespace = argparse.Namespace(layer=None, steps=args.steps)
  options = explain_cli_module._METHOD_OPTIONS.get(method)  # pylint: disable=protected-access
  return options(namespace, model) if options else {}


def _png_uri(rgb: np.ndarray) -> str:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buffer = io.BytesIO()
  Image.fromarray(rgb).save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _enlarge(rgb: np.ndarray, side: int = 112) -> np.ndarray:
  factor = max(1, side // max(rgb.shape[:2]))
  return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def _sanity_png(checks) -> str:
  from vision_jax.explain import sanity  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as tmp:
    path = sanity.plot(checks, os.path.join(tmp, "sanity.png"))
    with open(path, "rb") as f:
      return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.pass { background: #e4f4e4; } td.fail { background: #fbe3e3; }
.maps td { text-align: center; font-size: 0.8em; }
.maps img { image-rendering: pixelated; display: block; margin: auto; }
"""

# Lets a headless browser (and a reader) confirm that every embedded picture decoded.
_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var shown = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-images-shown", shown.length);
  document.body.setAttribute("data-tables", document.querySelectorAll("table").length);
});
"""


# How each check is summed up in the pass/fail table: (label, curve -> number).
_SUMMARY = {
    "cascading": ("final", lambda curve: float(curve[-1])),
    "independent": ("mean", lambda curve: float(np.nanmean(curve[1:]))),
    "data": ("final", lambda curve: float(curve[-1])),
}


def render(model, paths, images, results) -> str:
  """The report as one HTML string."""
  from vision_jax import explain  # pylint: disable=import-outside-toplevel
  from vision_jax.explain import metrics as metrics_lib  # pylint: disable=import-outside-toplevel
  esc = html.escape
  methods = list(results["maps"])
  parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
           "<title>Attribution report</title>", f"<style>{_STYLE}</style>",
           f"<script>{_CHECK}</script></head><body>",
           "<h1>Attribution report</h1>",
           f"<p>{len(paths)} images; methods: {esc(', '.join(methods))}. Maps explain the "
           "predicted class, drawn on the model's input (red: most relevant).</p>",
           "<h2>Maps</h2><table class='maps' id='maps'><tr><th>image</th><th>input</th>"]
  parts += [f"<th>{esc(m)}</th>" for m in methods]
  parts.append("</tr>")
  for i, path in enumerate(paths):
    name = model.class_names[int(results["targets"][i])]
    base = _enlarge(explain.to_uint8_image(images[i], model.mean, model.std))
    parts.append(f"<tr><td>{esc(os.path.basename(path))}<br>class {esc(str(name))}</td>"
                 f"<td><img alt='input' src='{_png_uri(base)}'></td>")
    for m in methods:
      rgb = _enlarge(explain.overlay(images[i], results["maps"][m][i], mean=model.mean,
                                     std=model.std))
      parts.append(f"<td><img alt='{esc(m)}' src='{_png_uri(rgb)}'></td>")
    parts.append("</tr>")
  parts.append("</table>")
  table = results["metrics"]
  columns = [m for m in metrics_lib.METRICS if any(m in row for row in table.values())]
  parts.append("<h2>Metrics</h2><p>Means over the images; 'random' scores maps drawn "
               "uniformly at random. Arrows: the better direction.</p>"
               "<table id='metrics'><tr><th>method</th>")
  parts += [f"<th>{esc(c)} {'&uarr;' if metrics_lib.SUMMARIES[c] else '&darr;'}</th>"
            for c in columns]
  parts.append("</tr>")
  for name, row in table.items():
    cells = "".join(f"<td>{row[c]:.3f}</td>" if c in row else "<td>-</td>" for c in columns)
    parts.append(f"<tr><td>{esc(name)}</td>{cells}</tr>")
  parts.append("</table>")
  checks = results["sanity"]
  if checks:
    parts.append("<h2>Sanity checks</h2><p>Similarity to the trained model's maps as its "
                 "parameters are re-initialised from the top down (Adebayo et al. 2018). A "
                 "method that explains the model falls towards 0; one that stays near 1 shows "
                 "the image, not the model.</p>")
    parts.append(f"<img alt='sanity curves' src='{_sanity_png(checks)}'>")
    parts.append("<table id='sanity'><tr><th>method</th>")
    parts += [f"<th>{esc(c.mode)}: {_SUMMARY[c.mode][0]} SSIM</th>"
              f"<th>{esc(c.mode)}: {_SUMMARY[c.mode][0]} Spearman</th>" for c in checks]
    parts.append("</tr>")
    for m in methods:
      parts.append(f"<tr><td>{esc(m)}</td>")
      for c in checks:
        for value in (_SUMMARY[c.mode][1](c.ssim[m]), _SUMMARY[c.mode][1](c.spearman[m])):
          verdict = "pass" if value < 0.5 else "fail"
          parts.append(f"<td class='{verdict}'>{value:.3f}</td>")
      parts.append("</tr>")
    parts.append("</table><p>Green: below 0.5 (the maps changed with the model); red: still "
                 "similar. Cascading and data: after the last step; independent: the mean over "
                 "the layers.</p>")
  parts.append("</body></html>")
  return "\n".join(parts)


console_script = common.entry_point(main)

if __name__ == "__main__":
  console_script()
