#!/usr/bin/env bash
# The pytest plugin (docs/pytest.md) on a CUDA GPU: every shipped spec x attention x backend x
# case as a pytest item, on CUDA in bfloat16 (default backends there: every generated backend
# and `auto`; flash where flash-attn is installed, else its items are skipped as refused).
# Prints pytest's summary, then a table of passed/failed/skipped per backend; exits non-zero on
# any failure (pytest's exit code).
#
# Stage lark, pydantic and rich wheels as benchmarks/gpu_verify.sh says, carry `.wheels`, then:
#   bash benchmarks/gpu_pytest_plugin.sh [--attnspec-backend sdpa,flash,auto] [more pytest args]
# Extra arguments go to pytest (e.g. `--attnspec-dtype float32`, `-x`, `-k CausalLM`).
# Results (JUnit XML, log) go to $OUT (or ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --find-links .wheels lark pydantic rich 2>&1 \
  | grep -v WARNING || true
export PYTHONPATH=$PWD
# The plugin by module name whether or not the pytest11 entry point is installed.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
python3 -m pytest -p attnspec.pytest_plugin -p no:cacheprovider specs --attnspec specs \
  --attnspec-device cuda --attnspec-dtype bfloat16 -q -rf --junitxml="$out/pytest-plugin.xml" \
  "$@" 2>&1 | tee "$out/pytest-plugin.txt" | tail -40
rc=${PIPESTATUS[0]}
python3 - "$out/pytest-plugin.xml" <<'EOF'
import collections, sys, xml.etree.ElementTree as ET

counts = collections.defaultdict(collections.Counter)
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    backend = case.get("name").split("[")[0]
    outcome = ("failed" if case.find("failure") is not None or case.find("error") is not None
               else "skipped" if case.find("skipped") is not None else "passed")
    counts[backend][outcome] += 1
print(f"{'backend':8} {'passed':>7} {'failed':>7} {'skipped':>8}")
for backend, c in sorted(counts.items()):
    print(f"{backend:8} {c['passed']:7} {c['failed']:7} {c['skipped']:8}")
EOF
exit "$rc"
