"""Parity of `vision_jax.pretrained(tag)` with timm on this machine's device (GPU or CPU).

  python tools/pretrained_parity.py resnet50.a1_in1k vit_base_patch16_224.augreg2_in21k_ft_in1k

Offline: each tag's architecture is built in timm at full size with random weights
and perturbed BatchNorm statistics, written with timm's `save_for_hf` into a
temporary hub cache (HF_HUB_OFFLINE=1) and loaded by tag. Prints one JSON line per
tag: the first (converting) and cached call times in this process, and the largest
logit difference from timm's (float32, TF32 off in torch), relative to the largest
logit, under JAX's default and "highest" matrix-multiply precision, on BATCH
(default 8) random 224x224 inputs, with the top-1 agreement.
"""
import json
import os
import sys
import tempfile
import time

root = tempfile.mkdtemp()
os.environ.update(HF_HUB_CACHE=os.path.join(root, "hf"), HF_HUB_OFFLINE="1", VISION_JAX_CACHE=os.path.join(root, "vj"))
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from timm.models._hub import save_for_hf  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from vision_jax.weights import hub  # noqa: E402
print("jax", jax.__version__, jax.devices(), "torch", torch.__version__, (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"), flush=True)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
for tag in sys.argv[1:]:
  m = timm.create_model(tag, pretrained=False).eval()
  with torch.no_grad():  # perturb norm statistics so that eval-mode BN is not the identity
    for mod in m.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        mod.running_mean.uniform_(-0.5, 0.5); mod.running_var.uniform_(0.5, 1.5)
  d = os.path.join(root, "saved", tag)
  save_for_hf(m, d, safe_serialization=True)
  hub.add_to_hub_cache(f"timm/{tag}", {n: os.path.join(d, n) for n in ("config.json", "model.safetensors")})
  t = time.perf_counter(); p = hub.pretrained(f"timm:{tag}"); first = time.perf_counter() - t
  t = time.perf_counter(); p2 = hub.pretrained(f"timm:{tag}"); cached = time.perf_counter() - t
  x = np.random.default_rng(0).normal(size=(int(os.environ.get("BATCH", 8)), 224, 224, 3)).astype(np.float32)
  with torch.no_grad():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ref = m.to(dev)(torch.from_numpy(x.transpose(0, 3, 1, 2)).to(dev)).cpu().numpy()
  out = {}
  for prec in ("default", "highest"):
    with jax.default_matmul_precision(prec):
      f = jax.jit(lambda v, x: p.module.apply(v, x, train=False))
      y = np.asarray(f(p.variables, jnp.asarray(x)))
    out[prec] = float(np.abs(y - ref).max() / np.abs(ref).max())
  agree = float(np.mean(np.argmax(y, 1) == np.argmax(ref, 1)))
  print(json.dumps({"tag": tag, "first_call_s": round(first, 2), "cached_call_s": round(cached, 3),
                    "from_cache": [p.from_cache, p2.from_cache], "max_rel_err_default_precision": out["default"],
                    "max_rel_err_highest_precision": out["highest"], "top1_agree": agree}), flush=True)
