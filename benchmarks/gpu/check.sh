#!/usr/bin/env bash
# The device check, prepared here and run when a GPU is lent (see benchmarks/gpu/README.md):
#   benchmarks/gpu/check.sh                 on the GPU machine: install the carried .whl/ wheels, then measure
#   benchmarks/gpu/check.sh --cpu-dry-run   the same steps with tiny sizes on a CPU (a test runs this)
# Writes one JSON per step under $OUT (default runs/gpu_check).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if [ "${1:-}" = "--cpu-dry-run" ]; then
    "$PY" benchmarks/gpu/train_speed.py --cpu-dry-run --out "$OUT/train_speed.json"
else
    # the GPU image lacks diffusers, open_clip_torch, omegaconf and pycocoevalcap and reaches no registry:
    # `make gpu-wheels` fetched them into .whl/, which the device call carries
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.csv" || true
    # (1) training-step speed, memory and MFU at the paper sizes, bf16
    timeout 420 "$PY" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision bf16 \
        --dynamo_backend no benchmarks/gpu/train_speed.py --out "$OUT/train_speed.json"
fi
# (2) the SynthCXR zoo recipes at 128 px join here once the zoo exists (issue 15); (3) the JSONs are in $OUT
echo "device check: results in $OUT"
