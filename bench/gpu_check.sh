#!/usr/bin/env bash
# tunery on one NVIDIA GPU, offline, in under five minutes (see bench/gpu_check.py for the checks).
#   bash bench/gpu_check.sh WHEEL_DIR   install the wheels bench/gpu_wheels.sh collected, then check
#   bash bench/gpu_check.sh             check the tunery this Python already has
# Needs a Python whose torch is a CUDA build, with transformers, peft and accelerate. Downloads nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python3}"
export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1
if [ $# -ge 1 ]; then
  "$py" -m pip install --quiet --no-index --find-links "$1" --no-deps "$1"/*.whl
fi
"$py" -c 'import torch, transformers, peft, accelerate' || { echo "FAIL python: torch, transformers, peft and accelerate must be installed"; exit 1; }
exec "$py" "$here/gpu_check.py" "${@:2}"
