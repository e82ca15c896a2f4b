"""Makes docs/explain_photo.png: a Grad-CAM overlay on a photograph, at the photograph's size.

  PYTHONPATH=. python3 docs/make_explain_photo.py /tmp/face_weights
  python tools/explain.py --weights /tmp/face_weights /tmp/face_weights/astronaut_crop.png \
      --target 1 --out docs/explain_photo.png

No ImageNet weights are available offline, so the model is one we can train on
a CPU in minutes: a cifar_resnet20 that tells scikit-image's 100 `lfw_subset`
face crops (25 x 25, grey) from its 100 non-face crops and 600 grey 25-pixel
patches of other scikit-image photographs without people (the astronaut, which
is the test photograph, and the cameraman are left out). 600 Adam steps of 64
augmented crops at 32 pixels: about 270 CPU-seconds. It then reads a
photograph at 72 pixels (bilinear resize of the shorter side, centre crop), so
that the astronaut's face is about as large as the training faces.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image
import skimage.data as skdata

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from vision_jax import models
from vision_jax.weights import io as weights_io

BACKGROUNDS = ("chelsea", "coffee", "rocket", "horse", "coins", "brick", "grass", "gravel",
               "text", "page", "moon", "clock", "immunohistochemistry", "logo", "colorwheel")
LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)


def crops(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """[N, 25, 25] grey crops in [0, 1] and their labels (1: face)."""
  lfw = skdata.lfw_subset().astype(np.float32)  # 100 faces, then 100 non-faces
  faces, others = lfw[:100], list(lfw[100:])
  for name in BACKGROUNDS:
    image = np.asarray(getattr(skdata, name)(), np.float32)
    if image.ndim == 3:
      image = image[..., :3] @ LUMINANCE
    image = image / max(1.0, image.max())
    for _ in range(40):
      side = int(rng.integers(25, min(image.shape[:2]) // 2))
      y, x = rng.integers(0, image.shape[0] - side), rng.integers(0, image.shape[1] - side)
      patch = Image.fromarray(image[y:y + side, x:x + side]).resize((25, 25), Image.BILINEAR)
      others.append(np.asarray(patch, np.float32))
  others = np.stack(others)
  labels = np.concatenate([np.ones(len(faces), np.int32), np.zeros(len(others), np.int32)])
  return np.concatenate([faces, others]), labels


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Random crops of 80-100% resized to 32 px, flips, contrast and brightness; [-1, 1], RGB."""
  out = []
  for image in batch:
    side = int(round(25 * rng.uniform(0.8, 1.0)))
    y, x = rng.integers(0, 26 - side, size=2)
    crop = Image.fromarray(image[y:y + side, x:x + side]).resize((32, 32), Image.BILINEAR)
    a = np.asarray(crop, np.float32)
    if rng.random() < 0.5:
      a = a[:, ::-1]
    a = np.clip((a - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.15, 0.15), 0, 1)
    out.append(a)
  return np.repeat((np.stack(out)[..., None] - 0.5) / 0.5, 3, -1)


def main(out: str) -> None:
  rng = np.random.default_rng(0)
  images, labels = crops(rng)
  faces = int(labels.sum())
  print(f"{faces} faces, {len(labels) - faces} other crops")
  module = models.create_model("cifar_resnet20", num_classes=2)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  params, stats = variables["params"], variables["batch_stats"]
  tx = optax.adam(optax.cosine_decay_schedule(2e-3, 600))
  opt = tx.init(params)
  face_weight = (len(labels) - faces) / faces  # balances the two classes

  @jax.jit
  def step(params, stats, opt, x, y):
    def loss_fn(p):
      logits, new = module.apply({"params": p, "batch_stats": stats}, x, train=True,
                                 mutable=["batch_stats"])
      w = jnp.where(y == 1, face_weight, 1.0)
      loss = (optax.softmax_cross_entropy_with_integer_labels(logits, y) * w).mean()
      return loss, new["batch_stats"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), stats, opt, loss

  order = rng.permutation(len(images))
  held_out, train = order[:60], order[60:]
  start = time.time()
  for i in range(600):
    b = rng.choice(train, 64)
    params, stats, opt, loss = step(params, stats, opt, augment(images[b], rng), labels[b])
    if i % 100 == 0:
      print(f"step {i}: loss {float(loss):.3f} ({time.time() - start:.0f} s)")
  x = np.repeat((images[held_out][..., None] - 0.5) / 0.5, 3, -1)
  x = np.asarray(jax.image.resize(x, (len(x), 32, 32, 3), "linear"))
  predicted = np.asarray(module.apply({"params": params, "batch_stats": stats}, x)).argmax(-1)
  print(f"held out: {int((predicted == labels[held_out]).sum())}/{len(held_out)} right "
        f"({int(labels[held_out].sum())} faces)")
  # Trained on grey images (R = G = B): the first convolution sums its input channels with
  # luminance weights, so that it sees a colour photograph in grey, as in training.
  params = jax.tree_util.tree_map(np.asarray, params)
  kernel = params["conv1"]["kernel"]
  params["conv1"]["kernel"] = kernel.sum(2, keepdims=True) * LUMINANCE[None, None, :, None]
  weights_io.save_converted(out, {"params": params, "batch_stats": stats}, "cifar_resnet20", 2,
                            source="docs/make_explain_photo.py: lfw_subset faces vs. patches")
  meta_path = os.path.join(out, "model.json")
  with open(meta_path, encoding="utf-8") as f:
    meta = json.load(f)
  meta["preprocess"] = {"input_size": 72, "crop_pct": 1.0, "interpolation": "bilinear",
                        "mean": [0.5] * 3, "std": [0.5] * 3}
  with open(meta_path, "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  Image.fromarray(skdata.astronaut()[:340]).save(os.path.join(out, "astronaut_crop.png"))
  print(f"wrote {out} and {out}/astronaut_crop.png (512 x 340)")


if __name__ == "__main__":
  main(sys.argv[1])
