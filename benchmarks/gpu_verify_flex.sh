set -e
python3 -m pip install -q --no-index --find-links .wheels lark pydantic 2>&1 | grep -v WARNING || true
export PYTHONPATH=$PWD
python3 -m attnspec.cli verify specs --backend flex --device cuda --dtype bfloat16 --seed 2 > $OUT/verify-flex-bf16.txt 2>&1 || true
grep -v " pass$" $OUT/verify-flex-bf16.txt | cut -c1-200 | tail -8
