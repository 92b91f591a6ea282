#!/usr/bin/env bash
# The performance suite on the GPU machine (H100/H200, no package index): see gpu_suite.py.
#
# Here, once: stage the wheels (git-ignored), as for gpu_verify_flash.sh:
#   bash ../shared/gpu/fa4-wheels.sh        # .fa4a/ and .fa4b/
#   (and .wheels/ with lark, pydantic and their dependencies for python 3.12)
# There, back to back (the machine keeps /root and /tmp only while it stays warm):
#   1. carrying .fa4a:            bash .fa4a/stage.sh
#   2. carrying .fa4b and .wheels: bash .fa4b/install.sh && bash benchmarks/gpu_suite.sh PART
# PART a: causal, sliding window, documents, ALiBi; PART b: prefix-LM, anchor, typed graph,
# BlockMask build times and recompiles. Each writes $OUT/suite-PART.json; the two JSON files
# are merged into benchmarks/results/<gpu>-<date>.json by benchmarks/suite_report.py.
set -euo pipefail
python3 -m pip install -q --no-index --find-links .wheels lark pydantic 2>&1 | grep -v WARNING || true
export PYTHONPATH=$PWD SITE=${SITE:-/tmp/fa4site} OUT=${OUT:-gpu-out} PART=${1:-a}
case "$PART" in
  a) python3 benchmarks/gpu_suite.py Causal SlidingWindow Documents AlibiCausal ;;
  b) python3 benchmarks/gpu_suite.py PrefixLM Anchor TypedGraph --masks ;;
  *) shift; python3 benchmarks/gpu_suite.py "$@" ;;
esac
