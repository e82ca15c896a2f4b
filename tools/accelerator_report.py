"""One unattended throughput report: our bf16 train step against timm (AMP bf16 + compile).

  python tools/accelerator_report.py --budget-s 420 --out-dir OUT
      [--models resnet50,vit_base_patch16_224@224,...] [--batch-sizes 256,128,64,32]
      [--steps 20] [--warmup 3] [--smoke]

For each model (default: ResNet-50, ViT-B/16, R50+ViT-B/16, EfficientNet-B0,
ConvNeXt-T; the three with published timm figures first), on whatever devices
exist: images/s, MFU (XLA's FLOP count over the device's peak), peak device
memory (XLA's memory analysis for ours, torch.cuda.max_memory_allocated for
timm), compile time (to the end of the first step) and the ratio ours/timm, at
the largest batch of --batch-sizes that fits each side.

Writes OUT/accelerator_report.json, OUT/accelerator_report.md (one table) and
OUT/accelerator_report.log (the workers' stderr), rewritten after every
measurement. When the budget runs out, the measurement under way is stopped,
what was measured is kept, and the exit code is 0.

Each side runs in its own worker process, so neither framework holds device
memory that the other needs: timm's worker lives for the whole run (torch and
timm import slowly) and empties its CUDA cache after each model; ours is a fresh
process per model, so its memory goes back when it exits. This process does not
touch the accelerator.

--smoke runs the same path on the CPU at tiny sizes (CI): ResNet-18 and the
smallest ViT hybrid at 32 px, batches 4 then 2, with batch 4 a simulated
out-of-memory, so that the back-off is exercised too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import signal
import subprocess
import sys
import time
from typing import Any

from vision_jax.bench import DTYPES
from vision_jax.cli.common import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODELS = ("resnet50", "vit_base_patch16_224", "vit_base_r50_s16_224", "efficientnet_b0",
                  "convnext_tiny")
SMOKE_MODELS = ("resnet18@32", "vit_tiny_r_s16_p8_224@32")  # a CNN, a hybrid ViT
JSON_NAME, MD_NAME, LOG_NAME = "accelerator_report.json", "accelerator_report.md", \
    "accelerator_report.log"
ANCHORS = ("timm on one RTX 3090 with AMP: ResNet-50 1,218, ViT-B/16 391, R50+ViT-B/16 215 "
           "images/s; NVIDIA DeepLearningExamples ResNet-50 v1.5 on one A100 with AMP: about "
           "2,470; the flax ImageNet example on one TPU v3 chip: about 2,020.")


# ---------------------------------------------------------------------------
# Worker side: reads one JSON request per line, answers one JSON line each.
# ---------------------------------------------------------------------------
def serve(side: str) -> int:
  """Measures each request with `benchmark.measure(side, ...)` until stdin closes."""
  # Replies go to a private copy of stdout; anything a library prints goes to stderr.
  replies = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  # pylint: disable=import-outside-toplevel
  if side == "timm":
    from vision_jax.bench.trials import import_torch_and_timm
    import_torch_and_timm()
  from vision_jax.bench import trials as benchmark
  import traceback
  for line in sys.stdin:
    if not line.strip():
      continue
    request = json.loads(line)
    started = time.perf_counter()
    try:
      reply = benchmark.measure(side, **request)
    except Exception as e:  # pylint: disable=broad-except  # reported, the next model goes on
      traceback.print_exc()
      reply = {"status": "error", "side": side, "model": request.get("model"),
               "error": f"{type(e).__name__}: {str(e)[:1000]}"}
    reply["wall_s"] = time.perf_counter() - started
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
  return 0


class Worker:
  """A worker process of one side, asked one model at a time within a deadline."""

  def __init__(self, side: str, env: dict[str, str], log: Any):
    self.side = side
    self.proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", side], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=log, env=env, text=True, start_new_session=True)

  def ask(self, request: dict[str, Any], deadline: float) -> dict[str, Any] | None:
    """The reply, an error reply if the worker died, or None when the deadline passed."""
    try:
      self.proc.stdin.write(json.dumps(request) + "\n")
      self.proc.stdin.flush()
    except BrokenPipeError:
      return self._died()
    while True:
      left = deadline - time.monotonic()
      if left <= 0:
        self.kill()
        return None
      ready, _, _ = select.select([self.proc.stdout], [], [], left)
      if not ready:
        continue
      line = self.proc.stdout.readline()
      if not line:
        return self._died()
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        continue

  def _died(self) -> dict[str, Any]:
    code = self.proc.wait()
    return {"status": "error", "side": self.side,
            "error": f"the {self.side} worker exited with code {code}; see {LOG_NAME}"}

  def alive(self) -> bool:
    return self.proc.poll() is None

  def close(self, timeout: float = 30.0) -> None:
    if self.proc.stdin and not self.proc.stdin.closed:
      try:
        self.proc.stdin.close()
      except BrokenPipeError:
        pass
    try:
      self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.kill()

  def kill(self) -> None:
    """Ends the worker and whatever it started (torch.compile's compile workers)."""
    if self.proc.poll() is None:
      try:
        os.killpg(self.proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    self.proc.wait()


# ---------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------
def parse_models(text: str, default_size: Any) -> list[tuple[str, int]]:
  out = []
  for item in text.split(","):
    item = item.strip()
    if not item:
      continue
    name, _, size = item.partition("@")
    out.append((name, int(size) if size else default_size(name)))
  return out


def combine(entry: dict[str, Any]) -> None:
  """Adds the ratio and timm's MFU (our FLOP count, the same architecture) to an entry."""
  ours, timm = entry.get("ours") or {}, entry.get("timm") or {}
  if ours.get("status") == "ok" and timm.get("status") == "ok":
    entry["ours_over_timm"] = ours["images_per_sec"] / timm["images_per_sec"]
    timm["mfu"] = ours["train_flops_per_image"] * timm["images_per_sec"] / ours["peak_flops"]
    entry["same_parameter_count"] = ours.get("params") == timm.get("timm_params")


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
  return "-" if value is None else format(value / scale if scale != 1.0 else value, spec)


def _cell(side: dict[str, Any] | None, key: str, spec: str, scale: float = 1.0) -> str:
  if not side:
    return "-"
  if side.get("status") != "ok":
    return side.get("status", "-")
  return _fmt(side.get(key), spec, scale)


def sides(report: dict[str, Any]) -> str:
  """What each side ran, read off the measurements."""
  ours = [e["ours"] for e in report["models"] if (e.get("ours") or {}).get("status") == "ok"]
  timm = [e["timm"] for e in report["models"] if (e.get("timm") or {}).get("status") == "ok"]
  text = ("Ours: the trainer's jitted train step (SGD with momentum, float32 parameters), "
          f"compute in {'/'.join(sorted({o['dtype'] for o in ours})) or '-'}. timm: the same "
          "architecture (same parameter count), ")
  if timm:
    t = timm[0]
    text += (f"{'AMP bf16' if t['timm_precision'] == 'amp_bf16' else 'fp32'}"
             f"{', torch.compile' if t['timm_compiled'] else ''}, channels_last for CNNs")
  else:
    text += "AMP bf16, torch.compile and channels_last (CNNs) on CUDA"
  return (text + ". Synthetic batches; each side at the largest batch that fits. MFU: XLA's "
          "FLOP count of the forward and backward pass over the device's peak; timm's uses the "
          "same count.")


def markdown(report: dict[str, Any]) -> str:
  lines = [f"# Accelerator report, {report['date']}", "",
           f"Ours on: {report.get('device') or 'unknown'}. timm on: "
           f"{report.get('timm_device') or 'unknown'}.", "", sides(report), "",
           f"Budget {report['budget_s']:.0f} s, used {report['elapsed_s']:.0f} s: "
           f"{report['status']}.", "",
           "| model | px | batch ours / timm | ours img/s | timm img/s | ours/timm | MFU ours "
           "| MFU timm | peak GiB ours / timm | compile s ours / timm |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  notes = []
  for e in report["models"]:
    ours, timm = e.get("ours"), e.get("timm")
    ratio = _fmt(e.get("ours_over_timm"), ".2f")
    lines.append(
        f"| {e['model']} | {e['image_size']} | {_cell(ours, 'batch_size', 'd')} / "
        f"{_cell(timm, 'batch_size', 'd')} | {_cell(ours, 'images_per_sec', '.1f')} | "
        f"{_cell(timm, 'images_per_sec', '.1f')} | {ratio} | {_cell(ours, 'mfu', '.1%')} | "
        f"{_cell(timm, 'mfu', '.1%')} | {_cell(ours, 'peak_memory_bytes', '.1f', 2**30)} / "
        f"{_cell(timm, 'peak_memory_bytes', '.1f', 2**30)} | {_cell(ours, 'compile_s', '.0f')} / "
        f"{_cell(timm, 'compile_s', '.0f')} |")
    for name, side in (("ours", ours), ("timm", timm)):
      if not side:
        continue
      for t in side.get("tried", []):
        notes.append(f"- {e['model']}, {name}: batch {t['batch_size']} did not fit ({t['error'][:160]})")
      if side.get("timm_compile_error"):
        notes.append(f"- {e['model']}, timm: torch.compile failed, measured eager instead "
                     f"({side['timm_compile_error'][:200]})")
      if name == "timm" and e.get("same_parameter_count") is False:
        notes.append(f"- {e['model']}: timm's model has {side.get('timm_params')} parameters, "
                     f"ours {ours.get('params')}: not the same architecture")
      if side.get("status") not in ("ok", None):
        notes.append(f"- {e['model']}, {name}: {side['status']}: {side.get('error', '')[:300]}")
  if notes:
    lines += ["", "Notes:", *notes]
  lines += ["", f"Anchors (published, other hardware): {ANCHORS}", ""]
  return "\n".join(lines)


def write(report: dict[str, Any], out_dir: str) -> None:
  for name, text in ((JSON_NAME, json.dumps(report, indent=1)), (MD_NAME, markdown(report))):
    path = os.path.join(out_dir, name)
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)


def _versions(env_side: dict[str, Any]) -> str:
  keys = ("jax", "torch_version", "timm_version")
  return ", ".join(f"{k.replace('_version', '')} {env_side[k]}" for k in keys if env_side.get(k))


def main(argv=None) -> int:
  started = time.monotonic()
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget-s", type=float, default=420.0,
                      help="wall-clock budget for the whole report, worker start-up included")
  parser.add_argument("--out-dir", default=".", help="where the JSON, markdown and log go")
  parser.add_argument("--models", default=None,
                      help="comma-separated names, each optionally @SIZE (default: the five)")
  parser.add_argument("--batch-sizes", default=None,
                      help="tried in order per model and side until one fits (default 256,128,64,32)")
  parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20)")
  parser.add_argument("--warmup", type=int, default=None,
                      help="steps after the first before timing (default 3)")
  parser.add_argument("--dtype", default="auto", choices=DTYPES,
                      help="auto: bfloat16 on accelerators, float32 on the CPU")
  parser.add_argument("--simulate-oom-above", type=int, default=None,
                      help="treat larger batches as out of memory (tests the back-off)")
  parser.add_argument("--smoke", action="store_true", help="tiny CPU run of the same path (CI)")
  parser.add_argument("--worker", choices=["ours", "timm"], help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return serve(args.worker)

  worker_env = dict(os.environ)
  worker_env["PYTHONPATH"] = os.pathsep.join(
      p for p in (ROOT, worker_env.get("PYTHONPATH")) if p)
  # This process only reads the model registry: keep jax off the accelerator here.
  os.environ["JAX_PLATFORMS"] = "cpu"
  # pylint: disable=import-outside-toplevel
  from vision_jax import models

  smoke = args.smoke
  try:
    chosen = parse_models(args.models or ",".join(SMOKE_MODELS if smoke else DEFAULT_MODELS),
                          lambda name: models.model_info(name).input_size)
    for name, _ in chosen:
      info = models.model_info(name)
      if info.timm_name is None:
        raise ValueError(f"{name!r} has no timm counterpart; pick models with one "
                         "(vision_jax.models.model_info(name).timm_name).")
    batch_sizes = [int(b) for b in (args.batch_sizes or ("4,2" if smoke else "256,128,64,32")
                                    ).split(",") if b.strip()]
    if not batch_sizes or min(batch_sizes) <= 0:
      raise ValueError(f"--batch-sizes {args.batch_sizes!r}: give positive integers.")
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  steps = args.steps or (2 if smoke else 20)
  warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
  simulate = args.simulate_oom_above if args.simulate_oom_above is not None else (
      2 if smoke else None)
  os.makedirs(args.out_dir, exist_ok=True)
  deadline = started + args.budget_s

  report: dict[str, Any] = {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "host": platform.node(), "cpus": os.cpu_count(), "budget_s": args.budget_s,
      "elapsed_s": 0.0, "status": "running", "complete": False, "device": None,
      "steps": steps, "warmup": warmup, "batch_sizes": batch_sizes, "models": []}
  # timm's worker is for the whole run; ours is fresh per model (see the docstring).
  ours_env = dict(worker_env)
  ours_env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  ours_env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
  timm_env = dict(worker_env, JAX_PLATFORMS="cpu")

  def finish(status: str) -> int:
    report["elapsed_s"] = time.monotonic() - started
    report["status"] = status
    report["complete"] = status.startswith("complete")
    write(report, args.out_dir)
    print(markdown(report))
    return 0

  with open(os.path.join(args.out_dir, LOG_NAME), "a") as log:
    workers = {"timm": Worker("timm", timm_env, log)}
    try:
      for name, size in chosen:
        entry: dict[str, Any] = {"model": name, "image_size": size}
        report["models"].append(entry)
        request = {"model": name, "image_size": size, "batch_sizes": batch_sizes, "steps": steps,
                   "warmup": warmup, "dtype": args.dtype, "simulate_oom_above": simulate,
                   "require_accelerator": not smoke}
        # Ours starts (imports, no device yet) while timm measures.
        workers["ours"] = Worker("ours", ours_env, log)
        for side in ("timm", "ours"):
          if not workers[side].alive():
            workers[side] = Worker(side, timm_env if side == "timm" else ours_env, log)
          print(f"[{time.monotonic() - started:6.0f} s] {name} @ {size}: {side} ...",
                file=sys.stderr, flush=True)
          reply = workers[side].ask(request, deadline)
          if side == "ours":
            workers["ours"].close()
          if reply is None:
            entry[side] = {"status": "budget", "error": "the budget ran out during this "
                           "measurement; it was stopped"}
            report["elapsed_s"] = time.monotonic() - started
            return finish(f"stopped: the budget ran out during {name} ({side})")
          entry[side] = reply
          if side == "ours" and reply.get("status") == "ok" and not report["device"]:
            report["device"] = (f"{reply['device_kind']} ({reply['platform']}), "
                                f"{_versions(reply)}")
          if side == "timm" and reply.get("status") == "ok":
            report["timm_device"] = f"{reply['timm_device_name']}, {_versions(reply)}"
          combine(entry)
          report["elapsed_s"] = time.monotonic() - started
          write(report, args.out_dir)
        ours, timm = entry.get("ours", {}), entry.get("timm", {})
        if ours.get("status") == "ok" and timm.get("status") == "ok" and (
            (ours["platform"] == "cpu") != (timm["timm_device"] == "cpu")):
          entry["warning"] = (f"ours ran on {ours['platform']} but timm on "
                              f"{timm['timm_device']}: install jax with the accelerator's "
                              "plugin (e.g. jax[cuda12]) for a fair ratio")
          print(f"warning: {entry['warning']}", file=sys.stderr)
      failed = [f"{e['model']} ({side})" for e in report["models"] for side in ("ours", "timm")
                if (e.get(side) or {}).get("status") != "ok"]
      return finish("complete" if not failed else
                    f"complete, without figures for {', '.join(failed)} (see the notes)")
    finally:
      for worker in workers.values():
        worker.kill()


if __name__ == "__main__":
  sys.exit(run(main))  # a user error it lets through: one `error:` line (cli.common)
