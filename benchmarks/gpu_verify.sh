#!/usr/bin/env bash
# Verify every shipped spec on every generated backend on a CUDA GPU, outputs and gradients,
# in bfloat16 and float32 (the eager interpreter in float64 is the reference).
#
# The GPU machine has no package index: stage lark and pydantic wheels first, here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .wheels \
#     lark pydantic pydantic-core annotated-types typing-inspection typing-extensions
# then run this script there with `.wheels` carried along. Results go to $OUT (or ./gpu-out).
set -euo pipefail
out=${OUT:-gpu-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --find-links .wheels lark pydantic 2>&1 | grep -v WARNING || true
export PYTHONPATH=$PWD
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt"
for dtype in bfloat16 float32; do
  python3 -m attnspec.cli verify specs --device cuda --dtype "$dtype" --seed 1 > "$out/verify-$dtype.txt" || true
  echo "== $dtype"; grep -v " pass$" "$out/verify-$dtype.txt"
done
python3 benchmarks/gpu_flex_check.py 2>&1 | grep -v Warning | tee "$out/flex-check.txt"
