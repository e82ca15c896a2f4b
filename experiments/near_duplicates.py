r"""Near-duplicate detection (vision_jax/data/report.py) measured on the embedded digits.

1. False positives: every pair of the 1,797 digits (8x8, written as PNG files values 0..255,
   1,613,706 pairs) is compared with the report's rule (pHash Hamming distance <=
   NEAR_DUPLICATE_BITS and 16x16 thumbnail correlation >= NEAR_DUPLICATE_CORRELATION). The
   digits hold no copies, so every pair that passes is a false positive.
2. Detection: each digit, upscaled to 32x32 (as a user's small image), is compared with
   altered copies of itself: resized (48x48, 24x24), JPEG-recompressed (quality 90, 75, 50),
   resized and recompressed; the rate of copies found is given per alteration.

  PYTHONPATH=$PWD python experiments/near_duplicates.py
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vision_jax.data import digits as digits_lib
from vision_jax.data import report


def describe(image: Image.Image, name: str = "") -> report.ImageInfo:
  buffer = io.BytesIO()
  image.save(buffer, "PNG")
  return report.describe_bytes(name, 0, buffer.getvalue())


def jpeg(image: Image.Image, quality: int) -> Image.Image:
  buffer = io.BytesIO()
  image.save(buffer, "JPEG", quality=quality)
  return Image.open(io.BytesIO(buffer.getvalue()))


def matches(a: report.ImageInfo, b: report.ImageInfo) -> bool:
  distance = bin(a.phash ^ b.phash).count("1")
  x, y = (report._normalised([im.thumb]) for im in (a, b))  # pylint: disable=protected-access
  return distance <= report.NEAR_DUPLICATE_BITS and float(x[0] @ y[0]) >= \
      report.NEAR_DUPLICATE_CORRELATION


def main() -> None:
  images, _ = digits_lib.load_digits("all")
  pixels = [np.round(im[..., 0].astype(np.float32) * 255 / 16).astype(np.uint8) for im in images]
  infos = [describe(Image.fromarray(p)) for p in pixels]
  hashes = np.asarray([i.phash for i in infos], np.uint64)
  thumbs = report._normalised([i.thumb for i in infos])  # pylint: disable=protected-access
  rows, cols = np.triu_indices(len(infos), 1)
  distance = np.bitwise_count(hashes[rows] ^ hashes[cols])
  candidates = distance <= report.NEAR_DUPLICATE_BITS
  corr = np.einsum("ij,ij->i", thumbs[rows[candidates]], thumbs[cols[candidates]])
  false = int(np.sum(corr >= report.NEAR_DUPLICATE_CORRELATION))
  print(f"rule: pHash distance <= {report.NEAR_DUPLICATE_BITS} bits and thumbnail correlation "
        f">= {report.NEAR_DUPLICATE_CORRELATION}")
  print(f"digits pairs: {len(rows)}; hash candidates: {int(candidates.sum())}; false positives: "
        f"{false} ({false / len(rows):.2e} per pair); highest correlation of a candidate: "
        f"{corr.max():.4f}")
  alterations = {
      "resized 32 -> 48": lambda im: im.resize((48, 48), Image.BILINEAR),
      "resized 32 -> 24": lambda im: im.resize((24, 24), Image.BILINEAR),
      "JPEG quality 90": lambda im: jpeg(im, 90),
      "JPEG quality 75": lambda im: jpeg(im, 75),
      "JPEG quality 50": lambda im: jpeg(im, 50),
      "resized 32 -> 48, JPEG 75": lambda im: jpeg(im.resize((48, 48), Image.BILINEAR), 75),
  }
  originals = [Image.fromarray(p).resize((32, 32), Image.BILINEAR) for p in pixels]
  described = [describe(im) for im in originals]
  print("\n| copy | found |\n|---|---|")
  for name, alter in alterations.items():
    found = sum(matches(d, describe(alter(im))) for d, im in zip(described, originals))
    print(f"| {name} | {found}/{len(originals)} ({100 * found / len(originals):.1f}%) |")


if __name__ == "__main__":
  main()
