#!/usr/bin/env bash
# Decoding with a KV cache (issue 19) on the GPU machine: benchmarks/gpu_decode.py.
#
# Here, once: stage the wheels (both folders are git-ignored)
#   bash ../shared/gpu/fa4-wheels.sh                      # .fa4a/ and .fa4b/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .wheels \
#     lark pydantic pydantic-core annotated-types typing-inspection typing-extensions
# There, two commands back to back (the machine keeps /root while it stays warm):
#   1. carrying .fa4a and .wheels:  bash .fa4a/stage.sh
#   2. carrying .fa4b and .wheels:  bash .fa4b/install.sh && bash benchmarks/gpu_decode.sh
# SKIP_FLEX=1 leaves out the flex rows (their compiles take most of the time).
set -euo pipefail
python3 -m pip install -q --no-index --find-links .wheels lark pydantic 2>&1 | grep -v WARNING || true
export PYTHONPATH=$PWD SITE=${SITE:-/tmp/fa4site} OUT=${OUT:-gpu-out}
python3 benchmarks/gpu_decode.py
