"""Times `vision_jax.pretrained(tag)`: the first call (convert and cache) against cached calls.

  python tools/benchmark_pretrained.py --tags resnet50.a1_in1k vit_base_patch16_224.augreg2_in21k_ft_in1k

Offline and self-contained: each tag's architecture is built in timm at full size
with random weights, written with timm's own `save_for_hf` into a temporary hub
cache (HF_HUB_OFFLINE=1), and loaded by tag. The first call reads the
safetensors file, converts it and writes the orbax cache entry; each cached call
reads and verifies the entry. Imports are done before the clock starts. Prints
one JSON line per tag: the medians of --repeats first calls (each from an empty
conversion cache) and cached calls in this process, in wall and CPU seconds, and
one cached call in a fresh process (imports not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _timed(fn):
  wall, cpu = time.perf_counter(), time.process_time()
  result = fn()
  return result, time.perf_counter() - wall, time.process_time() - cpu


def _write_cache(tag: str, root: str) -> None:
  import timm  # pylint: disable=import-outside-toplevel
  from timm.models._hub import save_for_hf  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import hub  # pylint: disable=import-outside-toplevel
  model = timm.create_model(tag, pretrained=False).eval()
  directory = os.path.join(root, "saved", tag)
  save_for_hf(model, directory, safe_serialization=True)
  hub.add_to_hub_cache(f"timm/{tag}", {n: os.path.join(directory, n)
                                       for n in ("config.json", "model.safetensors")})


def _cached_in_fresh_process(tag: str) -> dict:
  code = ("import json, time, jax, flax, orbax.checkpoint\n"
          "from vision_jax.weights import hub\n"
          "import vision_jax.models\n"
          f"w, c = time.perf_counter(), time.process_time()\n"
          f"p = hub.pretrained('timm:{tag}')\n"
          "print(json.dumps({'wall_s': time.perf_counter() - w, 'cpu_s': time.process_time() - c,"
          " 'from_cache': p.from_cache}))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tags", nargs="+",
                      default=["resnet50.a1_in1k", "vit_base_patch16_224.augreg2_in21k_ft_in1k"])
  parser.add_argument("--repeats", type=int, default=3,
                      help="first calls (from an empty conversion cache) and cached calls; "
                      "the medians are printed")
  args = parser.parse_args(argv)
  root = tempfile.mkdtemp(prefix="vj_bench_pretrained_")
  os.environ.update(HF_HUB_CACHE=os.path.join(root, "hf"), HF_HUB_OFFLINE="1",
                    VISION_JAX_CACHE=os.path.join(root, "vj"))
  import flax  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import jax  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import orbax.checkpoint  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from vision_jax.weights import hub  # pylint: disable=import-outside-toplevel
  for tag in args.tags:
    _write_cache(tag, root)
    firsts = []
    for _ in range(args.repeats):  # each time from an empty conversion cache
      shutil.rmtree(os.path.join(hub.cache_root(), "converted"), ignore_errors=True)
      firsts.append(_timed(lambda: hub.pretrained(f"timm:{tag}")))
    assert not any(f[0].from_cache for f in firsts)
    first = firsts[0][0]
    first_wall = statistics.median(f[1] for f in firsts)
    first_cpu = statistics.median(f[2] for f in firsts)
    cached = [_timed(lambda: hub.pretrained(f"timm:{tag}")) for _ in range(args.repeats)]
    assert all(c[0].from_cache for c in cached)
    wall = statistics.median(c[1] for c in cached)
    cpu = statistics.median(c[2] for c in cached)
    fresh = _cached_in_fresh_process(tag)
    print(json.dumps({
        "tag": tag, "model": first.model_name,
        "file_mb": round(os.path.getsize(first.weights_file) / 2**20, 1),
        "first_wall_s": round(first_wall, 3), "first_cpu_s": round(first_cpu, 3),
        "cached_wall_s": round(wall, 3), "cached_cpu_s": round(cpu, 3),
        "first_over_cached_wall": round(first_wall / wall, 1),
        "first_over_cached_cpu": round(first_cpu / cpu, 1),
        "fresh_process_cached_wall_s": round(fresh["wall_s"], 3),
        "fresh_process_cached_cpu_s": round(fresh["cpu_s"], 3)}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
