"""Times `vision_jax.pretrained(tag)`: the first call (convert and cache) against cached calls.

  python tools/benchmark_pretrained.py --tags resnet50.a1_in1k vit_base_patch16_224.augreg2_in21k_ft_in1k

Offline and self-contained: each tag's architecture is built in timm at full size
with random weights, written with timm's own `save_for_hf` into a temporary hub
cache (HF_HUB_OFFLINE=1), and loaded by tag. The first call reads the
safetensors file, converts it and writes the orbax cache entry; each cached call
reads and verifies the entry. Each call runs in a new process with its imports
done before the clock starts (JAX's one-time start-up is counted, as a script
pays it). Prints one JSON line per tag: the medians of --repeats first calls
(each from an empty conversion cache) and of --repeats cached calls, in wall and
CPU seconds, and the same two in one process (`in_process_*`, JAX already started).
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

from vision_jax.bench import timing
from vision_jax.cli.common import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # for the worker processes


_timed = timing.timed


def _write_cache(tag: str, root: str) -> None:
  import timm  # pylint: disable=import-outside-toplevel
  from timm.models._hub import save_for_hf  # pylint: disable=import-outside-toplevel
  from vision_jax.weights import hub  # pylint: disable=import-outside-toplevel
  model = timm.create_model(tag, pretrained=False).eval()
  directory = os.path.join(root, "saved", tag)
  save_for_hf(model, directory, safe_serialization=True)
  hub.add_to_hub_cache(f"timm/{tag}", {n: os.path.join(directory, n)
                                       for n in ("config.json", "model.safetensors")})


def _call_in_fresh_process(tag: str) -> dict:
  """One pretrained() call in a new process; imports are done before the clock starts,
  JAX's one-time start-up (backend, first traces) is counted, as a user's script pays it."""
  code = ("import json, time, jax, flax, orbax.checkpoint, huggingface_hub.file_download\n"
          "from vision_jax.weights import hub\n"
          "import vision_jax.models\n"
          "w, c = time.perf_counter(), time.process_time()\n"
          f"p = hub.pretrained('timm:{tag}')\n"
          "print(json.dumps({'wall_s': time.perf_counter() - w, 'cpu_s': time.process_time() - c,"
          " 'from_cache': p.from_cache}))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                           p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)), check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _medians(runs: list[dict]) -> tuple[float, float]:
  return (statistics.median(r["wall_s"] for r in runs), statistics.median(r["cpu_s"] for r in runs))


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
  import huggingface_hub.file_download  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from vision_jax.weights import hub  # pylint: disable=import-outside-toplevel
  for tag in args.tags:
    _write_cache(tag, root)
    converted = os.path.join(hub.cache_root(), "converted")
    # In new processes, as a user meets it: the first call converts (empty cache), the next
    # ones read the cache.
    firsts, cached = [], []
    for _ in range(args.repeats):
      shutil.rmtree(converted, ignore_errors=True)
      firsts.append(_call_in_fresh_process(tag))
      cached.append(_call_in_fresh_process(tag))
    assert not any(r["from_cache"] for r in firsts) and all(r["from_cache"] for r in cached)
    first_wall, first_cpu = _medians(firsts)
    cached_wall, cached_cpu = _medians(cached)
    # In one process: a second call after the first (JAX already started).
    shutil.rmtree(converted, ignore_errors=True)
    loaded, in_first_wall, in_first_cpu = _timed(lambda: hub.pretrained(f"timm:{tag}"))
    again = [_timed(lambda: hub.pretrained(f"timm:{tag}")) for _ in range(args.repeats)]
    in_wall = statistics.median(a[1] for a in again)
    in_cpu = statistics.median(a[2] for a in again)
    print(json.dumps({
        "tag": tag, "model": loaded.model_name,
        "file_mb": round(os.path.getsize(loaded.weights_file) / 2**20, 1),
        "first_wall_s": round(first_wall, 3), "first_cpu_s": round(first_cpu, 3),
        "cached_wall_s": round(cached_wall, 3), "cached_cpu_s": round(cached_cpu, 3),
        "first_over_cached_wall": round(first_wall / cached_wall, 1),
        "first_over_cached_cpu": round(first_cpu / cached_cpu, 1),
        "in_process_first_wall_s": round(in_first_wall, 3),
        "in_process_first_cpu_s": round(in_first_cpu, 3),
        "in_process_cached_wall_s": round(in_wall, 3),
        "in_process_cached_cpu_s": round(in_cpu, 3)}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(run(main))  # a user error it lets through: one `error:` line (cli.common)
