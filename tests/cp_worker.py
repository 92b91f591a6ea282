"""One rank of the context-parallel tests: `python cp_worker.py RANK INIT_FILE OUT`.

Joins a 3-rank gloo group, runs the 3-rank cases of cp_cases.py, then ranks 0 and 1 run the
2-rank cases on a subgroup (one spawn serves both group sizes, and plans get a group that is
not the default one). Saves what each run gave (this rank's positions, output rows, dq/dk/dv
or dx rows, param gradients), per group size, to OUT for tests/test_context_parallel.py.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cp_cases  # noqa: E402

import attnspec  # noqa: E402


def run(case: cp_cases.Case, backend: str, balance: str, group) -> dict:
    """This rank's part of one case: forward (and backward, except flex) with cp=plan."""
    module = cp_cases.build(case, backend)
    seq, kwargs, grad = cp_cases.inputs(case, module)
    docs = cp_cases.documents(case, kwargs) if balance == "documents" else None
    plan = attnspec.cp_plan(group, case.seq, balance, docs)
    shards = {n: plan.shard(t, cp_cases.seq_dim(n)).requires_grad_() for n, t in seq.items()}
    backward = backend != "flex"
    with torch.set_grad_enabled(backward):
        out = module(*shards.values(), **kwargs, cp=plan)
    result = {"positions": plan.positions, "out": out.detach(), "last": module.last_backend}
    if backward:
        (out * plan.shard(grad, cp_cases.seq_dim(next(iter(seq))))).sum().backward()
        result["grads"] = {n: t.grad for n, t in shards.items()}
        result["params"] = {n: p.grad.clone() for n, p in module.named_parameters()}
        plan.reduce_param_grads(module)  # the plan's method (attnspec.cp_reduce_param_grads)
        result["reduced"] = {n: p.grad for n, p in module.named_parameters()}
    result["unshard"] = plan.unshard(out.detach(), cp_cases.seq_dim(next(iter(seq))))
    return result


def checks(group) -> dict:
    """Refusals and plan behaviour that need a group; every rank raises alike (no hang)."""
    found = {}
    case = cp_cases.CASES[0]
    module = cp_cases.build(case, "eager")
    seq, _, _ = cp_cases.inputs(case, module)
    plan = module.context_parallel_plan(group, case.seq)  # its class's (inlined) cp_plan
    found["class_plan"] = (plan.balance, plan.world_size, plan.local_len)
    try:  # k and v given whole instead of this rank's shards
        module(plan.shard(seq["q"], 2), seq["k"], seq["v"], cp=plan)
    except ValueError as error:
        found["whole_k"] = str(error)
    return found


def runs(world: int, group) -> dict:
    results = {(case.name, backend, balance): run(case, backend, balance, group)
               for case, backend, balance in cp_cases.runs(world)}
    return {**results, "checks": checks(group)}


def main() -> None:
    rank, init_file, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=max(cp_cases.WORLDS))
    pair = dist.new_group([0, 1])  # every rank takes part in making it
    try:
        results = {3: runs(3, None)}
        if rank < 2:
            results[2] = runs(2, pair)
    except Exception:  # noqa: BLE001 — reported by the test, with the traceback
        results = {"error": traceback.format_exc()}
    torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
