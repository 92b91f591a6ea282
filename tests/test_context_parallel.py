"""Context parallelism (issue 16, docs/parallel.md) on the CPU: 2 and 3 gloo processes, each
running the cases of cp_cases.py with its shards (tests/cp_worker.py: 3 processes spawned once
for the whole module; 2 of them also form the 2-rank group), against the one-process eager
module in float64: outputs, the gradients of q/k/v (or x) and the sum over ranks of every
param gradient, to 1e-10. Then the refusals, which need no group."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import cp_cases
import pytest
import torch

import attnspec
from attnspec.errors import UnsupportedBackendError
from attnspec.runtime.cp import CPPlan, _cp_assignment

HERE = Path(__file__).resolve().parent
TOL = 1e-10
RUNS = [(world, case.name, backend, balance) for world in cp_cases.WORLDS
        for case, backend, balance in cp_cases.runs(world)]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[int, list[dict]]:
    """Every rank's saved results, per group size: one spawn of 3 ranks, whose ranks 0 and 1
    also run the 2-rank cases on a subgroup."""
    tmp = tmp_path_factory.mktemp("cp")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, str(HERE / "cp_worker.py"), str(r),
                               str(tmp / "init"), str(tmp / f"out{r}")],
                              env=env, stderr=subprocess.PIPE, text=True)
             for r in range(max(cp_cases.WORLDS))]
    for p in ranks:
        try:
            _, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in ranks:
                q.kill()
            pytest.fail("the gloo group hung")
        assert p.returncode == 0, err[-3000:]
    saved = [torch.load(tmp / f"out{r}", weights_only=False) for r in range(len(ranks))]
    for r in saved:
        assert "error" not in r, r.get("error")
    return {world: [r[world] for r in saved[:world]] for world in cp_cases.WORLDS}


@cache
def reference(name: str) -> dict:
    """One process, eager, whole sequence: output, input gradients, param gradients."""
    case = next(c for c in cp_cases.CASES if c.name == name)
    module = cp_cases.build(case, "eager")
    seq, kwargs, grad = cp_cases.inputs(case, module)
    seq = {n: t.clone().requires_grad_() for n, t in seq.items()}
    out = module(*seq.values(), **kwargs)
    (out * grad).sum().backward()
    return {"out": out.detach(), "grads": {n: t.grad for n, t in seq.items()},
            "params": {n: p.grad for n, p in module.named_parameters()},
            "dim": cp_cases.seq_dim(next(iter(seq)))}


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, what
    err = (got - want).abs().max().item() if got.numel() else 0.0
    assert err <= TOL, f"{what}: max error {err:.3g}"


@pytest.mark.parametrize("world, name, backend, balance", RUNS)
def test_matches_one_process(results, world, name, backend, balance):
    ref, ranks = reference(name), [r[(name, backend, balance)] for r in results[world]]
    dim = ref["dim"]
    positions = torch.cat([r["positions"] for r in ranks])
    assert torch.equal(positions.sort().values, torch.arange(ref["out"].shape[dim]))
    for rank, r in enumerate(ranks):
        assert r["last"].split("-")[0] == backend
        rows = r["positions"]
        _close(r["out"], ref["out"].index_select(dim, rows), f"rank {rank} output")
        _close(r["unshard"], ref["out"], f"rank {rank} plan.unshard(output)")
        for n, g in r.get("grads", {}).items():
            _close(g, ref["grads"][n].index_select(dim, rows), f"rank {rank} d{n}")
        for n, g in r.get("reduced", {}).items():  # cp_reduce_param_grads: the whole gradient
            _close(g, ref["params"][n], f"rank {rank} reduced grad of {n}")
    if "params" in ranks[0]:
        for n, want in ref["params"].items():
            _close(sum(r["params"][n] for r in ranks), want, f"sum over ranks of grad {n}")


def test_flex_and_edges_ran(results):
    """The runs cover every backend that supports context parallelism on the CPU."""
    ran = {key[1] for key in results[2][0] if isinstance(key, tuple)}
    assert ran == {"eager", "sdpa", "flex", "edges"}


@pytest.mark.parametrize("world", cp_cases.WORLDS)
def test_group_checks(results, world):
    for rank, r in enumerate(results[world]):
        checks = r["checks"]
        # The class's own (inlined) cp_plan, with its spec's balance.
        S = cp_cases.CASES[0].seq
        assert checks["class_plan"] == ("head_tail", world,
                                        len(_cp_assignment(S, world)[rank]))
        assert checks["whole_k"].startswith("k: expected")


# --- without a group -----------------------------------------------------------------------
def _plan(seq_len: int, world: int = 2, rank: int = 0, balance="head_tail") -> CPPlan:
    """A plan made by hand (no process group): enough for every check before the gather."""
    return CPPlan(None, world, rank, seq_len, balance, _cp_assignment(seq_len, world, balance))


def _kernel_inputs(module, S, rows=None):
    q = torch.randn(1, module.heads, S if rows is None else rows, module.head_dim)
    kv = torch.randn(1, module.kv_heads, S if rows is None else rows, module.head_dim)
    return q, kv, kv.clone()


def test_flash_refused_with_reason():
    module = cp_cases.load("causal_lm.attn").CausalLM(backend="flash")
    plan = _plan(10)
    with pytest.raises(UnsupportedBackendError, match="flash.*context parallelism.*varlen"):
        module(*_kernel_inputs(module, 10, plan.local_len), cp=plan)


def test_cross_attention_refused_by_every_backend():
    mod = attnspec.load(cp_cases.SPECS / "cross_attention.attn")
    module = mod.CrossAttention(dim=16, context_dim=8, heads=2)
    assert module.CP_BACKENDS == () and module.CP_AUTO_CPU is None
    plan = _plan(6)
    x, context = torch.randn(1, plan.local_len, 16), torch.randn(1, 6, 8)
    with pytest.raises(UnsupportedBackendError, match="no backend runs") as info:
        module(x, context, cp=plan)
    for name in ("eager", "sdpa", "flex", "flash"):
        assert f"{name}: " in str(info.value)


def test_bad_shards_and_plans_raise_value_errors():
    module = cp_cases.load(cp_cases.CAUSAL).Causal()
    plan = _plan(10)
    q, k, v = _kernel_inputs(module, 10, plan.local_len + 1)
    with pytest.raises(ValueError, match=r"^q: expected 5 positions \(this rank's shard\)"):
        module(q, k, v, cp=plan)
    with pytest.raises(ValueError, match="cp: expected a plan from cp_plan"):
        module(*_kernel_inputs(module, 10, 5), cp="plan")
    with pytest.raises(ValueError, match="tensor: expected 10 positions"):
        plan.shard(torch.zeros(3, 9), 1)


def test_layer_mode_refuses_context_under_cp():
    module = cp_cases.load(cp_cases.SINUSOIDAL).Sinusoidal()
    plan = _plan(8)
    x = torch.randn(1, plan.local_len, 16)
    with pytest.raises(ValueError, match="^context: not taken under context parallelism"):
        module(x, x, cp=plan)


@pytest.mark.parametrize("balance, docs, message", [
    ("zigzag", None, "balance must be one of"),
    ("documents", None, "`documents`"),
    ("head_tail", torch.zeros(10), "`documents`"),
    ("documents", torch.zeros(9), "documents must be ids"),
    ([[0, 1, 2], [3, 4]], None, "hold each of 0..9 once"),
])
def test_bad_balances_raise(balance, docs, message):
    with pytest.raises(ValueError, match=message):
        _cp_assignment(10, 2, balance, docs)


def test_assignments_partition_the_sequence():
    ids = torch.tensor([0] * 7 + [1] * 3 + [2] * 11)
    for world in (1, 2, 3, 4):
        for balance, docs in (("none", None), ("head_tail", None), ("documents", ids)):
            shards = _cp_assignment(21, world, balance, docs)
            assert torch.equal(torch.cat(shards).sort().values, torch.arange(21))
    assert [s.tolist() for s in _cp_assignment(5, 2, [[4, 0], [1, 2, 3]])] == [[4, 0], [1, 2, 3]]


@pytest.mark.parametrize("spec, balance", [
    ("attention A {\n heads = 2\n head_dim = 8\n mask causal\n}", "head_tail"),
    ("attention A {\n heads = 2\n head_dim = 8\n mask prefix_lm(4)\n}", "head_tail"),
    ("attention A {\n heads = 2\n head_dim = 8\n input d: int[batch, seq]\n mask causal\n"
     " mask same(d)\n}", "documents"),
    ("attention A {\n heads = 2\n head_dim = 8\n mask sliding_window(64)\n}", "none"),
    ("attention A {\n heads = 2\n head_dim = 8\n}", "none"),
])
def test_balance_rule(spec, balance):
    assert attnspec.load(spec).A.CP_BALANCE == balance


def test_flex_block_mask_under_cp_covers_every_pair():
    """The BlockMask of a rank's rows (create_block_mask over the mapped mask_mod) lists every
    attendable (row, key) tile: uncompiled flex ignores tiles, so this is checked directly."""
    mod = cp_cases.load("packed_documents.attn")
    module = mod.PackedDocuments(heads=1, head_dim=8)
    S, plan = 300, _plan(300, rank=1)
    doc = torch.bucketize(torch.arange(S), torch.tensor([90, 200])).view(1, S)
    q_pos = plan.positions
    block_mask = mod._general_block_mask(mod._mask_mod_PackedDocuments(doc, q_pos), 1, None,
                                         len(q_pos), S, torch.device("cpu"))
    tiles = block_mask.to_dense()[0, 0].bool()  # [row blocks, key blocks]
    b, h, qi, ki = mod._index_grids(1, 1, S, S, "cpu", q_pos)
    want = module._mask(b, h, qi, ki, doc=doc)[0, 0]
    covered = tiles.repeat_interleave(128, 0).repeat_interleave(128, 1)[:len(q_pos), :S]
    assert want.any() and not (want & ~covered).any()


def test_explain_mentions_context_parallelism():
    from attnspec.explain import explain_module

    text = explain_module(attnspec.build(cp_cases.SPECS / "alibi.attn"))
    assert "context parallel (cp=plan): eager, sdpa, flex; balance head_tail" in text
    assert "flash under cp: refused" in text


def test_standalone_module_has_cp_plan():
    """Generated modules carry the plan code (they run without attnspec installed)."""
    source = attnspec.compile(cp_cases.CAUSAL)
    for definition in ("def cp_plan(", "class CPPlan:", "def cp_reduce_param_grads("):
        assert "\n" + definition in source
