#!/usr/bin/env bash
# Verify the flash backend with flash-attn 4 on the GPU machine (H100/H200, no package index).
#
# Here, once: stage the wheels (both folders are git-ignored)
#   bash ../shared/gpu/fa4-wheels.sh                      # .fa4a/ and .fa4b/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .wheels \
#     lark pydantic pydantic-core annotated-types typing-inspection typing-extensions
# There, two commands back to back (the machine keeps /root while it stays warm):
#   1. carrying .fa4a and .wheels:  bash .fa4a/stage.sh
#   2. carrying .fa4b and .wheels:  bash .fa4b/install.sh && bash benchmarks/gpu_verify_flash.sh
# BACKENDS picks the backends (default flash,sdpa,eager; flex alone takes ~8 minutes).
set -euo pipefail
python3 -m pip install -q --no-index --find-links .wheels lark pydantic 2>&1 | grep -v WARNING || true
export PYTHONPATH=$PWD SITE=${SITE:-/tmp/fa4site} OUT=${OUT:-gpu-out}
python3 benchmarks/gpu_verify_flash.py
