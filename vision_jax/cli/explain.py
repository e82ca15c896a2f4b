"""Attribution heatmaps over images: an overlay PNG per image, at the photograph's own size.

  python tools/explain.py --workdir /tmp/digits --method gradcam images/ --out maps/
  python tools/explain.py --weights weights/vit --method rollout cat.jpg --out cat_rollout.png

Methods: gradcam, gradcam++, xgradcam, layercam, hirescam, eigencam, scorecam
(all read --layer), ig and guided-ig (Integrated Gradients and Guided IG, black
baseline, --steps), smoothgrad, saliency, occlusion (--window pixels, black
baseline), rise (--masks random masks, black baseline), rollout (ViTs and hybrids
only). The explained class is the predicted one unless --target is given.

The map is computed on the model's input, then put back on the photograph: the
eval resize and centre crop are undone, so the map covers the part of the
photograph the model saw (the rest is darkened), at the photograph's size and
as its EXIF orientation shows it. --size input draws it on the model's input
instead; --save-map also writes each map as .npy (float32 in [0, 1], NaN where
the model saw nothing).

--out names a .png file for one image, or a directory for any number: there
each image gets NAME_METHOD.png, and grid_METHOD.png shows every image next to
its overlay. A file name for several images is an error. Existing files are
kept unless --overwrite is given; undecodable images are named and skipped.

--metrics deletion,insertion,road_morf,road_lerf,faithfulness_correlation,
max_sensitivity,pointing_game (or "all") scores the maps on the model's inputs
(vision_jax.explain.metrics) next to maps drawn at random, prints the table and
writes it as JSON (--metrics-out; default metrics_METHOD.json in the output
directory, or beside the output file). pointing_game needs --boxes, a JSON file
{"image file name": [x0, y0, x1, y1], ...} in model-input pixels.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from vision_jax.cli import common




def main(argv=None) -> int:
  # allow_abbrev=False: a shortened option (--out for --output-dir) once bound
  # silently to another one and made a directory of a file name.
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  common.add_model_args(parser)
  parser.add_argument("images", nargs="+", help="image files, globs or folders")
  from vision_jax import explain  # pylint: disable=import-outside-toplevel
  parser.add_argument("--method", choices=tuple(explain.METHODS), default="gradcam")
  parser.add_argument("--out", "--output-dir", dest="out", required=True,
                      help="a .png file (one image) or a directory (any number of images)")
  parser.add_argument("--size", choices=("photo", "input"), default="photo",
                      help="draw the map on the photograph at its own size (default) or on the "
                           "model's input")
  parser.add_argument("--save-map", action="store_true",
                      help="also write each map as .npy next to its overlay")
  parser.add_argument("--target", type=int, help="class to explain (default: the predicted one)")
  parser.add_argument("--layer", help="Grad-CAM layer (module path); default per family")
  parser.add_argument("--steps", type=int, default=32,
                      help="Integrated Gradients / Guided IG steps")
  parser.add_argument("--window", type=int, default=16,
                      help="occlusion window side, in pixels (4 suits 16-32 px inputs)")
  parser.add_argument("--masks", type=int, default=2000, help="RISE random masks")
  parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
  parser.add_argument("--scale", type=int, default=0,
                      help="with --size input: enlarge small inputs to at least this many pixels "
                           "per side")
  parser.add_argument("--overwrite", action="store_true")
  parser.add_argument("--metrics", type=_metric_list, default=(),
                      help="comma-separated metrics to score the maps with, or 'all'")
  parser.add_argument("--metrics-out", help="where to write the metrics table (.json)")
  parser.add_argument("--boxes", help="JSON {image name: [x0, y0, x1, y1]} for pointing_game")
  args = parser.parse_args(argv)
  if "pointing_game" in args.metrics and not args.boxes:
    return common.report("--metrics pointing_game needs --boxes FILE.json (the object's box in "
                         "each image); leave pointing_game out otherwise.")

  # pylint: disable=import-outside-toplevel
  from vision_jax import inference, output_paths
  listed = inference.list_images(args.images)
  if not listed:
    return common.report("no image files found in " + " ".join(args.images) + ".", common.EXIT_FAILED)
  try:
    outputs, to_directory = output_paths.per_input_files(
        args.out, output_paths.input_names(listed, f"_{_slug(args.method)}.png"))
    grid_path = (os.path.join(args.out, f"grid_{_slug(args.method)}.png") if to_directory
                 else None)
    map_paths = [os.path.splitext(o)[0] + ".npy" for o in outputs] if args.save_map else []
    metrics_path = _metrics_path(args) if args.metrics else None
    output_paths.refuse_overwrite(outputs + map_paths + [grid_path, metrics_path], args.overwrite)
    model = inference.load_model(args.workdir, args.weights)
  except (output_paths.OutputError, FileExistsError, inference.LoadError) as e:
    return common.report(e)
  output_of = dict(zip(listed, outputs))
  paths, images = inference.read_images(listed, model.preprocess,
                                        warn=lambda m: print(m, file=sys.stderr))
  if not paths:
    return common.report("no image could be read.", common.EXIT_FAILED)
  try:
    # Placed before the maps are computed, so that a preprocessing that cannot
    # be undone fails in a second, not after the attribution.
    windows = [_window(explain, model, p) for p in paths] if args.size == "photo" else None
    targets = None if args.target is None else np.full(len(paths), args.target)
    maps = compute_maps(explain, model, images, targets, args)
  except (explain.ExplainError, explain.PlacementError) as e:
    return common.report(e)
  explained = targets if targets is not None else model.logits(images).argmax(1)
  if args.metrics:
    try:
      boxes = read_boxes(args.boxes, paths) if args.boxes else None
      table = metrics_table(model, images, {args.method: maps}, explained, args.metrics,
                            {args.method: _method_call(explain, model, args)}, boxes=boxes)
    except (explain.ExplainError, OSError, ValueError) as e:
      return common.report(e)
    _write_json(output_paths.prepare(metrics_path), table)
    print(format_table(table))
    print(f"{metrics_path}: metrics table")
  bases, overlays = [], []
  for i, (path, image, heat) in enumerate(zip(paths, images, maps)):
    if args.size == "photo":
      stored, orientation = explain.read_photo(path)
      heat = explain.orient(explain.map_to_photo(heat, windows[i], *stored.shape[:2]), orientation)
      base = explain.orient(stored, orientation)
      rgb = explain.photo_overlay(base, heat, alpha=args.alpha)
    else:
      base = _enlarge(explain.to_uint8_image(image, model.mean, model.std), args.scale)
      rgb = _enlarge(explain.overlay(image, heat, alpha=args.alpha, mean=model.mean,
                                     std=model.std), args.scale)
    out = output_paths.prepare(output_of[path])
    _save_png(out, rgb)
    if args.save_map:
      np.save(os.path.splitext(out)[0] + ".npy", np.asarray(heat, np.float32))
    name = model.class_names[int(explained[i])]
    print(f"{out}: {args.method} for class {name!r}, {rgb.shape[1]}x{rgb.shape[0]}")
    if grid_path:
      bases.append(_thumbnail(base))
      overlays.append(_thumbnail(rgb))
  if grid_path:
    _save_grid(grid_path, bases, overlays, [model.class_names[int(t)] for t in explained],
               args.method)
    print(f"{grid_path}: grid of {len(overlays)}")
  return 0


def _window(explain, model, path: str):
  """Where the model input lies on the photograph at `path` (its header gives the size)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(path) as image:
      width, height = image.size
  except OSError as e:
    raise explain.PlacementError(f"{path} was decoded for the model, but PIL cannot open it to "
                                 f"draw on ({e}); use --size input.") from None
  return explain.input_window(model.preprocess, height, width)


def compute_maps(explain, model, images, targets, args) -> np.ndarray:
  """[N, H, W] maps in [0, 1] for the chosen method, in batches of 16."""
  out = []
  for start in range(0, len(images), 16):
    x = images[start:start + 16]
    t = None if targets is None else targets[start:start + 16]
    options = _METHOD_OPTIONS.get(args.method, lambda args, model: {})(args, model)
    maps = explain.METHODS[args.method](model.module, model.variables, x, t, upsample=True,
                                        **options)
    out.append(np.asarray(maps))
  return np.concatenate(out)


def _metric_list(text: str) -> tuple[str, ...]:
  from vision_jax.explain import metrics  # pylint: disable=import-outside-toplevel
  names = metrics.METRICS if text.strip() == "all" else tuple(
      t.strip() for t in text.split(",") if t.strip())
  unknown = [n for n in names if n not in metrics.METRICS]
  if unknown or not names:
    raise argparse.ArgumentTypeError(f"unknown metric {unknown[0] if unknown else text!r}; "
                                     f"choose from {', '.join(metrics.METRICS)} or 'all'")
  return names


def _metrics_path(args) -> str:
  if args.metrics_out:
    return args.metrics_out
  if os.path.splitext(args.out)[1].lower() == ".png":
    return os.path.splitext(args.out)[0] + "_metrics.json"
  return os.path.join(args.out, f"metrics_{_slug(args.method)}.json")


def read_boxes(path: str, paths) -> np.ndarray:
  """[N, 4] boxes for the read images, looked up by file name in the JSON file."""
  import json  # pylint: disable=import-outside-toplevel
  with open(path, encoding="utf-8") as f:
    table = json.load(f)
  missing = [os.path.basename(p) for p in paths if os.path.basename(p) not in table]
  if missing:
    raise ValueError(f"{path} has no box for {missing[0]} (keys are image file names).")
  return np.asarray([table[os.path.basename(p)] for p in paths], np.float64)


def _method_call(explain, model, args):
  """(images, targets) -> upsampled maps: what max_sensitivity re-runs on noisy images."""
  options = _METHOD_OPTIONS.get(args.method, lambda args, model: {})(args, model)
  method = explain.METHODS[args.method]
  return lambda x, t: method(model.module, model.variables, x, t, upsample=True, **options)


def metrics_table(model, images, maps_by_method, targets, names, calls, *,
                  boxes=None, seed: int = 0) -> dict:
  """{method: {metric: mean}} for each method's maps, plus 'random' (uniform random maps).

  The random row is the baseline a method must beat: maps that know nothing.
  max_sensitivity has none (a random map does not depend on the input).
  """
  from vision_jax.explain import metrics  # pylint: disable=import-outside-toplevel
  table = {}
  images = np.asarray(images, np.float32)
  rows = dict(maps_by_method)
  rows["random"] = np.random.default_rng(seed).uniform(size=images.shape[:3]).astype(np.float32)
  for name, maps in rows.items():
    wanted = [m for m in names if not (name == "random" and m == "max_sensitivity")]
    table[name] = metrics.evaluate(wanted, model.module, model.variables, images, maps, targets,
                                   explain_fn=calls.get(name), boxes=boxes, seed=seed)
  return table


def format_table(table: dict) -> str:
  """The metrics table as aligned text, one method a row, with each metric's better direction."""
  from vision_jax.explain import metrics  # pylint: disable=import-outside-toplevel
  columns = [m for m in metrics.METRICS if any(m in row for row in table.values())]
  heads = [f"{m} ({'higher' if metrics.SUMMARIES[m] else 'lower'} better)" for m in columns]
  width = max(len(k) for k in table) + 2
  lines = ["method".ljust(width) + "  ".join(heads)]
  for name, row in table.items():
    cells = [(f"{row[m]:.3f}" if m in row else "-").ljust(len(h)) for m, h in zip(columns, heads)]
    lines.append(name.ljust(width) + "  ".join(cells))
  return "\n".join(lines)


def _write_json(path: str, table: dict) -> None:
  import json  # pylint: disable=import-outside-toplevel
  with open(path, "w", encoding="utf-8") as f:
    json.dump(table, f, indent=2, allow_nan=True)


# The options this tool passes to a method of explain.METHODS; the others take their defaults.
_METHOD_OPTIONS = {
    **{method: (lambda args, model: {"layer": args.layer})
       for method in ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam",
                      "scorecam")},
    "ig": lambda args, model: {"steps": args.steps, "black_value": _black_value(model),
                               "channel_reduce": "abs_sum"},
    "guided-ig": lambda args, model: {"steps": args.steps, "black_value": _black_value(model),
                                      "channel_reduce": "abs_sum"},
    "occlusion": lambda args, model: {"window": args.window, "baseline": _black_value(model)},
    "rise": lambda args, model: {"masks": args.masks, "baseline": _black_value(model)},
}


def _black_value(model):
  # The model-input value of a black pixel under the model's normalisation.
  if model.mean is None or model.std is None:
    return 0.0
  return [-m / s for m, s in zip(model.mean, model.std)]


def _slug(method: str) -> str:
  return method.replace("+", "pp")


def _enlarge(rgb: np.ndarray, scale: int) -> np.ndarray:
  factor = max(1, -(-scale // max(rgb.shape[:2]))) if scale else 1
  return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def _thumbnail(rgb: np.ndarray, side: int = 320) -> np.ndarray:
  """At most `side` pixels on the longer side: a grid cell needs no more."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if max(rgb.shape[:2]) <= side:
    return rgb
  image = Image.fromarray(rgb)
  image.thumbnail((side, side), Image.Resampling.LANCZOS)
  return np.asarray(image)


def _save_png(path: str, rgb: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.fromarray(rgb).save(path, format="PNG")


def _save_grid(path: str, inputs, overlays, titles, method: str, columns: int = 4) -> None:
  """Each image next to its overlay, `columns` pairs per row, titled with the explained class."""
  from vision_jax import output_paths  # pylint: disable=import-outside-toplevel
  output_paths.prepare(path)
  plt = common.pyplot()
  columns = min(columns, len(overlays))
  rows = -(-len(overlays) // columns)
  fig, axes = plt.subplots(rows, 2 * columns, figsize=(2.0 * 2 * columns, 2.2 * rows),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for i, (image, rgb, title) in enumerate(zip(inputs, overlays, titles)):
    row, col = divmod(i, columns)
    # Nearest for small inputs (digits), smooth for photographs.
    interpolation = "nearest" if max(image.shape[:2]) < 128 else "antialiased"
    axes[row, 2 * col].imshow(image, interpolation=interpolation)
    axes[row, 2 * col].set_title(f"class {title}", fontsize=9)
    axes[row, 2 * col + 1].imshow(rgb, interpolation=interpolation)
    axes[row, 2 * col + 1].set_title(method, fontsize=9)
  common.save_png(fig, path, dpi=90)


console_script = common.entry_point(main)

if __name__ == "__main__":
  console_script()
