"""Classifies image files with a trained run or converted weights: a table of the top-k classes.

  python tools/predict.py --workdir /tmp/digits images/*.png --top-k 3 --sheet sheet.png
  python tools/predict.py --weights weights/resnet50 photos/ --json > preds.jsonl

Prints one row per image: the file, then each of the top-k class names with its
probability. --json prints JSON lines instead (one object per image:
{"image": ..., "top_k": [{"class", "name", "probability"}, ...]}), and --output
FILE writes those JSON lines to FILE. --sheet draws each image with its top-3
labels: a .png file, or a directory that gets sheet.png (sheet_1.png, ... when
the images fill more than one sheet of --per-sheet). Images are files, globs or
folders. An image that cannot be decoded is named on stderr and skipped.
Existing output files are kept unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from vision_jax.cli import common



def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  common.add_model_args(parser)
  parser.add_argument("images", nargs="+", help="image files, globs or folders")
  parser.add_argument("--top-k", type=int, default=5)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--json", action="store_true",
                      help="print JSON lines instead of the table")
  parser.add_argument("--output", help="also write the JSON lines to this file")
  parser.add_argument("--sheet", help="contact sheet: a .png file, or a directory for sheet.png")
  parser.add_argument("--per-sheet", type=int, default=48,
                      help="images per contact sheet (more make several, in a directory)")
  parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
  args = parser.parse_args(argv)

  # pylint: disable=import-outside-toplevel
  from vision_jax import inference, output_paths
  listed = inference.list_images(args.images)
  try:
    output = (output_paths.single_file(args.output, "predictions.jsonl", (".jsonl", ".json"),
                                       "--output") if args.output else None)
    sheets = _sheet_paths(output_paths, args.sheet, len(listed), args.per_sheet)
    output_paths.refuse_overwrite([output] + sheets, args.overwrite)
    model = inference.load_model(args.workdir, args.weights)
  except (inference.LoadError, FileExistsError, output_paths.OutputError) as e:
    return common.report(e)
  paths, images = inference.read_images(listed, model.preprocess,
                                        warn=lambda m: print(m, file=sys.stderr))
  if not paths:
    return common.report("no image could be read.", common.EXIT_FAILED)
  probabilities = predict(model, images, args.batch_size)
  k = min(args.top_k, probabilities.shape[1])
  lines = []
  for path, p in zip(paths, probabilities):
    top = np.argsort(-p)[:k]
    lines.append({"image": path, "top_k": [
        {"class": int(c), "name": model.class_names[c], "probability": round(float(p[c]), 6)}
        for c in top]})
  text = "\n".join(json.dumps(line) for line in lines) + "\n"
  sys.stdout.write(text if args.json else format_table(lines))
  if output:
    with open(output_paths.prepare(output), "w", encoding="utf-8") as f:
      f.write(text)
    print(f"wrote {len(lines)} predictions to {output}", file=sys.stderr)
  # Undecodable images were counted in the plan but are not drawn: fewer sheets may do.
  for i, sheet in enumerate(sheets[:-(-len(paths) // args.per_sheet)]):
    part = slice(i * args.per_sheet, (i + 1) * args.per_sheet)
    contact_sheet(output_paths.prepare(sheet), model, paths[part], images[part], lines[part])
    print(f"wrote {sheet}", file=sys.stderr)
  return 0


def _sheet_paths(output_paths, sheet: str | None, count: int, per_sheet: int) -> list[str]:
  """The contact sheets to write: one file, or sheet.png / sheet_1.png, ... in a directory."""
  if not sheet:
    return []
  if per_sheet < 1:
    raise output_paths.OutputError(f"--per-sheet {per_sheet}: give at least 1.")
  pages = max(1, -(-count // per_sheet))
  if pages > 1 and not output_paths.names_a_directory(sheet):
    raise output_paths.OutputError(
        f"--sheet {sheet} names one file, but {count} images make {pages} sheets of "
        f"--per-sheet {per_sheet}; give a directory (e.g. --sheet "
        f"{os.path.splitext(sheet)[0]}/) or a larger --per-sheet.")
  names = ["sheet.png"] if pages == 1 else [f"sheet_{i + 1}.png" for i in range(pages)]
  return output_paths.per_input_files(sheet, names, option="--sheet")[0]


def format_table(lines: list[dict]) -> str:
  """The predictions as an aligned text table: the file, then each class name and probability.

  Names are cut at 28 characters (JSON keeps them whole); probabilities have
  three decimals.
  """
  k = max(len(line["top_k"]) for line in lines)
  header = ["image"]
  for rank in range(1, k + 1):
    header += [f"top-{rank}", "p"]
  rows = [header]
  for line in lines:
    row = [line["image"]]
    for entry in line["top_k"]:
      name = entry["name"] if len(entry["name"]) <= 28 else entry["name"][:25] + "..."
      row += [name, f"{entry['probability']:.3f}"]
    rows.append(row + [""] * (len(header) - len(row)))
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  out = []
  for row in rows:
    cells = []
    for i, cell in enumerate(row):
      # Probabilities (every second column after the file) line up on the right.
      cells.append(cell.rjust(widths[i]) if i and i % 2 == 0 else cell.ljust(widths[i]))
    out.append("  ".join(cells).rstrip())
  return "\n".join(out) + "\n"


def predict(model, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Softmax probabilities [N, classes], in batches."""
  out = []
  for start in range(0, len(images), batch_size):
    logits = model.logits(images[start:start + batch_size])
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    out.append(e / e.sum(axis=1, keepdims=True))
  return np.concatenate(out)


def contact_sheet(path: str, model, paths, images, lines, columns: int = 4) -> None:
  plt = common.pyplot()
  from vision_jax.explain import to_uint8_image  # pylint: disable=import-outside-toplevel
  rows = -(-len(paths) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 4.0 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, image_path, image, line in zip(axes.ravel(), paths, images, lines):
    ax.imshow(to_uint8_image(image, model.mean, model.std), interpolation="nearest")
    labels = "\n".join(f"{t['name'][:22]} {t['probability']:.2f}" for t in line["top_k"][:3])
    ax.set_title(f"{os.path.basename(image_path)[:24]}\n{labels}", fontsize=8)
  common.save_png(fig, path, dpi=80)


console_script = common.entry_point(main)

if __name__ == "__main__":
  console_script()
