#!/usr/bin/env bash
# Differential fuzzing on the GPU machine (H100/H200, no package index): random specs on eager,
# sdpa, flex (compiled, forward and backward), flash (flash-attn 4) and auto, in bfloat16,
# against the eager interpreter in float64. Prints a table last; exit 1 on any failure; failing
# specs are written to $OUT/corpus (they come back with $OUT: add them to tests/corpus).
#
# Here, once: stage the wheels (both folders are git-ignored)
#   bash ../shared/gpu/fa4-wheels.sh                      # .fa4a/ and .fa4b/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .wheels \
#     lark pydantic pydantic-core annotated-types typing-inspection typing-extensions \
#     hypothesis attrs sortedcontainers
# There, two commands back to back (the machine keeps /root while it stays warm):
#   1. carrying .fa4a and .wheels:  bash .fa4a/stage.sh
#   2. carrying .fa4b and .wheels:  bash .fa4b/install.sh && bash benchmarks/gpu_fuzz_differential.sh
# Arguments are passed on and override the defaults below, e.g. `--seed 2 --examples 200`, or
# `--replay tests/corpus` to check the corpus. flex compiles every new spec (tens of seconds):
# `--flex-every 3` checks it on every third spec, `--max-seconds 540` ends inside a 10-minute
# command with the table printed.
set -euo pipefail
python3 -m pip install -q --no-index --find-links .wheels lark pydantic hypothesis 2>&1 \
  | grep -v WARNING || true
export PYTHONPATH=$PWD SITE=${SITE:-/tmp/fa4site} OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
python3 benchmarks/fuzz_differential.py --device cuda --dtype bfloat16 --examples 60 --seed 1 \
  --flex-every 3 --max-seconds 540 --corpus "$OUT/corpus" "$@" 2>&1 | tee "$OUT/fuzz-differential.txt"
exit "${PIPESTATUS[0]}"
