"""Learned tables read per pair (`_read` -> `_TableRead` on CUDA): the gradient summed per
table cell by sorting, not by advanced indexing's backward (one warp per cell on CUDA, which
serialises a few cells read by millions of pairs). The same numbers as advanced indexing, every
cell (read or not), deterministic, and through whole specs against the interpreter with the
path switched on for the CPU."""

from __future__ import annotations

import random

import pytest
import torch

import attnspec
from attnspec.runtime import checks
from attnspec.verify import cases_for, check_case

SEED = random.randrange(2**31)
F64 = torch.float64


def test_gradient_is_advanced_indexings_with_broadcasting_ints_and_unread_cells():
    gen = torch.Generator().manual_seed(SEED)
    table = torch.randn(4, 3, 5, dtype=F64, requires_grad=True)
    heads = torch.arange(4).view(1, -1, 1)
    types = torch.randint(0, 2, (60,), generator=gen)  # type 2 is never read: its grad is 0
    distances = torch.randint(0, 5, (60,), generator=gen)
    upstream = torch.randn(2, 4, 60, dtype=F64, generator=gen)

    def read(t):
        return checks._TableRead.apply(t, heads, types, distances)

    assert torch.autograd.gradcheck(read, (table,))
    (read(table) * upstream).sum().backward()
    sorted_sums = table.grad.clone()
    table.grad = None
    (table[heads, types, distances] * upstream).sum().backward()
    torch.testing.assert_close(sorted_sums, table.grad, rtol=0, atol=1e-12, msg=f"seed {SEED}")
    assert torch.equal(sorted_sums[:, 2], torch.zeros(4, 5, dtype=F64))
    scalar = torch.randn(3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: checks._TableRead.apply(t, 2) * 3, (scalar,))


def test_gradient_is_deterministic():
    gen = torch.Generator().manual_seed(SEED)
    table = torch.randn(8, 64, requires_grad=True)
    cells = torch.randint(0, 64, (100_000,), generator=gen)
    upstream = torch.randn(8, 100_000, generator=gen)
    grads = []
    for _ in range(2):
        table.grad = None
        (checks._TableRead.apply(table, torch.arange(8).view(-1, 1), cells)
         * upstream).sum().backward()
        grads.append(table.grad.clone())
    assert torch.equal(*grads)


def test_read_takes_the_sorted_path_only_where_it_is_on(monkeypatch):
    table = torch.randn(2, 3, requires_grad=True)
    index = (torch.tensor([0, 1]), torch.tensor([2, 2]))
    assert checks._read(table, "t", *index).grad_fn.name() != "_TableReadBackward"
    monkeypatch.setattr(checks, "_TABLE_SORTED_SUMS", ("cpu",))
    assert checks._read(table, "t", *index).grad_fn.name() == "_TableReadBackward"
    with torch.no_grad():  # nothing to differentiate: plain indexing
        assert checks._read(table, "t", *index).grad_fn is None


SPECS = {
    "edges": ("attention A {\n heads = 4\n head_dim = 8\n input g: edges(types = 3, "
              "max_distance = 8)\n param tb: float[heads, 3] = normal(1.0)\n"
              " param gate: float[heads, 3, 8] = normal(1.0)\n mask g.edge\n"
              " bias tb[h, g.type]\n score = score * sigmoid(gate[h, g.type, g.distance])\n}\n"),
    "eager": ("attention A {\n heads = 4\n head_dim = 8\n mask causal\n"
              " bias t5(buckets = 8, max_distance = 16)\n}\n"),
}


@pytest.mark.parametrize("backend", SPECS)
def test_specs_with_sorted_table_gradients_match_the_interpreter(monkeypatch, backend):
    module_ir, module = attnspec.build(SPECS[backend]), attnspec.load(SPECS[backend])
    monkeypatch.setattr(module, "_TABLE_SORTED_SUMS", ("cpu",))
    used = []
    apply = module._TableRead.apply
    monkeypatch.setattr(module._TableRead, "apply", lambda *a: used.append(1) or apply(*a))
    attn = module_ir.attentions[0]
    for i, case in enumerate(cases_for(attn)[:3]):
        result = check_case(attn, module.A, backend, case, torch.float32, "cpu", SEED + i)
        assert result.ok, f"seed {SEED + i}: {result}"
    assert used  # the learned tables' gradients went through the sorted sums
