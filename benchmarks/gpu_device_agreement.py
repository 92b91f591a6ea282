"""Every device must agree with the contract: the same module, weights and inputs give the same
numbers on the CPU and on CUDA.

For every shipped spec and attention, at lengths 77 and 300: the eager interpreter in float64
(CPU vs CUDA) and the generated module's eager backend in float32 and float64 (CPU vs CUDA).
float64 must agree to 1e-9 relative to the values' size; float32 to the size float32 rounding
can explain (a few 1e-5). Also the `t5_bucket` builtin at every relative position in
[-5000, 5000] on both devices, in the interpreter and in the generated module.

Run on the GPU machine:  python3 benchmarks/gpu_device_agreement.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import attnspec
from attnspec import eager, verify

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = {torch.float64: 1e-9, torch.float32: 5e-5}


def module_runs(attn, cls, case, dtype, seed):
    """(CPU output, CUDA output) of the module's eager backend on the same weights and inputs,
    and the same for the interpreter in float64."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module = cls(backend="eager").to(dtype=dtype).eval()
    verify._randomise_params(module, gen)
    args, inputs, sizes = verify.make_inputs(attn, case, dtype, "cpu", gen)
    extra = {"sizes": sizes} if sizes else {}
    with torch.no_grad():
        cpu = module(*args, **inputs, **extra)
        state = {k: v.double() for k, v in module.state_dict().items()}
        ref_cpu = eager.run(attn, state, *(a.double() for a in args), inputs=inputs,
                            sizes=sizes or None)
        module = module.to("cuda")
        to = {k: v.cuda() for k, v in inputs.items()}
        gpu = module(*(a.cuda() for a in args), **to, **extra)
        ref_gpu = eager.run(attn, {k: v.cuda() for k, v in state.items()},
                            *(a.double().cuda() for a in args), inputs=to, sizes=sizes or None)
    return (cpu, gpu.cpu()), (ref_cpu, ref_gpu.cpu())


def relative_difference(a, b) -> float:
    size = max(1.0, a.abs().max().item()) if a.numel() else 1.0
    return ((a.double() - b.double()).abs().max().item() / size) if a.numel() else 0.0


def check_specs() -> list[str]:
    failures = []
    for path in sorted((ROOT / "specs").glob("*.attn")):
        module_ir, module = attnspec.build(path), attnspec.load(path)
        for attn in module_ir.attentions:
            cls = getattr(module, attn.name)
            for length in (77, 300):
                case = verify.Case(f"S={length}", 2, length, length)
                if attn.groups:
                    case = verify.cases_for(attn)[0]
                for dtype in (torch.float32, torch.float64):
                    (cpu, gpu), (ref_cpu, ref_gpu) = module_runs(attn, cls, case, dtype, length)
                    rows = [("module eager", dtype, relative_difference(cpu, gpu))]
                    if dtype == torch.float64:
                        rows.append(("interpreter", dtype,
                                     relative_difference(ref_cpu, ref_gpu)))
                    for what, dt, diff in rows:
                        status = "ok" if diff <= TOLERANCE[dt] else "DIFFER"
                        line = f"{path.name:28} {attn.name:22} {case.name:16} {what:13} " \
                               f"{str(dt)[6:]:8} {diff:.3g} {status}"
                        print(line, flush=True)
                        if status != "ok":
                            failures.append(line)
    return failures


def check_t5_buckets() -> list[str]:
    failures = []
    rel = torch.arange(-5000, 5001)
    source = attnspec.compile("attention A {\n heads = 2\n head_dim = 8\n bias t5()\n}")
    namespace: dict = {}
    exec(compile(source, "<t5>", "exec"), namespace)  # noqa: S102 — our own generated code
    for buckets, max_distance in ((32, 128), (16, 64), (8, 16), (32, 1000)):
        for bidirectional in (True, False):
            for name, fn in (("interpreter", eager.t5_bucket),
                             ("module", namespace["_t5_bucket"])):
                cpu = fn(rel, buckets, max_distance, bidirectional)
                gpu = fn(rel.cuda(), buckets, max_distance, bidirectional).cpu()
                wrong = (cpu != gpu).nonzero().flatten()
                line = f"t5_bucket {name:11} buckets={buckets} max_distance={max_distance} " \
                       f"bidirectional={bidirectional}: {len(wrong)} positions differ" + \
                       (f" (rel {rel[wrong[:6]].tolist()})" if len(wrong) else "")
                print(line, flush=True)
                if len(wrong):
                    failures.append(line)
    return failures


def main() -> int:
    print("torch", torch.__version__, torch.cuda.get_device_name(), flush=True)
    failures = check_t5_buckets() + check_specs()
    print(f"device agreement: {len(failures)} disagreement(s)")
    for line in failures:
        print("  " + line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
