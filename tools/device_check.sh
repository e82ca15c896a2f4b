#!/usr/bin/env bash
# The accelerator check, in one command on a machine with a GPU (or TPU):
#
#   OUT=/some/dir BUDGET_S=420 [MODELS=resnet50,vit_base_patch16_224] bash tools/device_check.sh
#
# Runs from the repository root without installing the package (PYTHONPATH), with
# the machine's own python3, jax, torch and timm. On a fresh clone, install first with
# the accelerator's extra: `pip install -e ".[cuda12,torch]"` (or ".[tpu,torch]"); the
# package on PYTHONPATH is this checkout either way. The check stops when the machine has
# an NVIDIA GPU that JAX cannot see (the extra is missing), instead of timing the CPU.
# Writes under $OUT (default
# ./device_check_out): device.txt (what the machine has), accelerator_report.json,
# accelerator_report.md and accelerator_report.log. The report keeps to BUDGET_S
# seconds of wall clock (default 420) and keeps what it measured if that runs out;
# the whole script ends within about BUDGET_S + 60 s.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/device_check_out}"
BUDGET_S="${BUDGET_S:-420}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  echo "cpus: $(nproc)"
  timeout 120 "$PYTHON" - <<'EOF' 2>&1
import importlib
for name in ("jax", "jaxlib", "jax_cuda12_plugin", "libtpu", "flax", "optax", "torch", "timm",
             "numpy"):
  try:
    print(name, importlib.import_module(name).__version__)
  except Exception as e:  # a missing package is reported, the report says what failed
    print(name, "MISSING:", e)
import torch
print("torch cuda:", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
import jax
print("jax backend:", jax.default_backend())
print("jax devices:", jax.devices())
EOF
} > "$OUT/device.txt"
cat "$OUT/device.txt"

# A GPU that JAX does not use means the cuda12 extra is missing: say so and stop (exit 2).
if nvidia-smi -L > /dev/null 2>&1 && grep -q "^jax backend: cpu" "$OUT/device.txt"; then
  echo "error: this machine has an NVIDIA GPU but JAX runs on the CPU; install JAX's CUDA" \
    "wheels with pip install -e \".[cuda12]\" and run again." >&2
  exit 2
fi

timeout --kill-after=10 $(( ${BUDGET_S%.*} + 45 )) "$PYTHON" tools/accelerator_report.py \
  --budget-s "$BUDGET_S" --out-dir "$OUT" ${MODELS:+--models "$MODELS"}
status=$?
echo "accelerator_report.py exited with $status; files in $OUT:"
ls -l "$OUT"
exit $status
