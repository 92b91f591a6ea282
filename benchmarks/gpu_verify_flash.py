"""Verify the flash backend on a CUDA GPU with flash-attn 4, next to the other backends.

Runs `attnspec verify` on every shipped spec for the backends in $BACKENDS (default
flash,sdpa,eager; flex compiles for minutes, so it is a separate run), outputs and gradients in
bfloat16, then extra flash cases the standard ones do not reach: more queries than keys, several
kernel tiles (S=300), many short documents. Prints the rows that did not pass and a summary last;
the whole table goes to $OUT/verify-<backends>-bf16.txt.

Run on the GPU machine (see benchmarks/gpu_verify_flash.sh for the staging of flash-attn 4):
    SITE=/tmp/fa4site BACKENDS=flash,sdpa,eager python3 benchmarks/gpu_verify_flash.py
"""

import os
import site
import sys
from pathlib import Path

if os.environ.get("SITE"):  # flash-attn 4's CUTLASS DSL needs its .pth processed
    site.addsitedir(os.environ["SITE"])

import torch  # noqa: E402

import attnspec  # noqa: E402
from attnspec import backends as lowering  # noqa: E402
from attnspec import verify  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXTRA = [verify.Case("Sq=45,Sk=19", 2, 45, 19), verify.Case("S=300", 2, 300, 300)]


def main() -> int:
    wanted = os.environ.get("BACKENDS", "flash,sdpa,eager").split(",")
    seed = int(os.environ.get("SEED", "3"))
    out_dir = Path(os.environ.get("OUT", "gpu-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print("torch", torch.__version__, torch.cuda.get_device_name(), flush=True)
    results = []
    for path in sorted((ROOT / "specs").glob("*.attn")):
        module_ir, module = attnspec.build(path), attnspec.load(path)
        results += verify.verify_spec(module_ir, module, wanted, torch.bfloat16, "cuda", seed)
        if "flash" in wanted:
            results += extra_flash_cases(module_ir, module, seed)
    table = verify.format_table(results)
    name = "-".join(wanted)
    (out_dir / f"verify-{name}-bf16.txt").write_text(table + "\n")
    lines = table.splitlines()
    print("\n".join([lines[0]] + [r for r in lines[1:-1] if not r.rstrip().endswith(" pass")]))
    print(lines[-1])
    return 1 if any(not r.ok for r in results) else 0


def extra_flash_cases(module_ir, module, seed):
    results = []
    for attn in module_ir.attentions:
        if lowering.reasons(attn)["flash"]:
            continue
        cls = getattr(module, attn.name)
        for i, case in enumerate(EXTRA):
            if case.q_len != case.kv_len and not verify._allows_different_lengths(attn):
                continue
            results.append(verify._safe_check(attn, cls, "flash", case, torch.bfloat16, "cuda",
                                              seed + 100 + i, module_ir.source_name))
    return results


if __name__ == "__main__":
    sys.exit(main())
