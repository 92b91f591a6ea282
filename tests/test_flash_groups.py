"""Token-group patterns on flash: one varlen call over (query run -> gathered keys) segments.

flash-attn needs a GPU (benchmarks/gpu_tokengroups.py runs the real kernel); here the pure-torch
model of flash-attn's varlen call in tests/test_flash.py stands in for it (with `seqused_k`),
and the generated flash path is checked against the eager interpreter by the verification
harness: outputs and the gradients of q, k, v and every param.
"""

from __future__ import annotations

import pytest
import torch
from runtimes import load_runtime
from test_flash import compiled, with_fake

from attnspec import backends, verify
from attnspec.errors import UnsupportedInputError
from attnspec.ir.build import build_text
from attnspec.runtime.groups import _token_groups

rt = load_runtime("flash")


def groups_spec(tokens, patterns, extra="", heads=4, kv_heads=2, head_dim=32):
    lines = "\n".join(f"  {name}: {size}" for name, size in tokens)
    rules = "\n".join(f" pattern {p}" for p in patterns)
    return (f"attention G {{\n heads = {heads}\n kv_heads = {kv_heads}\n head_dim = {head_dim}\n"
            f" tokens {{\n{lines}\n }}\n{rules}\n{extra}\n}}\n")


ANCHOR = groups_spec([("sa", 6), ("sq", 9), ("va", 5), ("vq", 11)],
                     ["sa, sq -> sa", "va, vq -> va"])
# MixedAttention-like: 4 groups, 3 patterns, non-adjacent key groups, one `*` size.
MIXED = groups_spec([("a", 5), ("b", "*"), ("c", 3), ("d", 4)],
                    ["a, c -> a, c", "b -> a, b, d", "d -> d"])
SPECS = {
    "anchor": ANCHOR,
    "mixed": MIXED,
    "padded": groups_spec([("a", 5), ("b", "*"), ("c", 3), ("d", 4)],
                          ["a, c -> a, c", "b -> a, b, d", "d -> d"],
                          " input valid: bool[batch, seq]\n mask key_valid(valid)"),
    "softcap_sinks": groups_spec([("x", 4), ("y", 7), ("z", 2)], ["x -> x, z", "y, z -> y"],
                                 " sinks = true\n score = softcap(score, 5.0)"),
    "key_lengths": groups_spec([("x", 4), ("y", 7), ("z", 2)], ["x -> x, z", "y, z -> y"],
                               " input n: int[batch]\n mask key_len(n)"),
}


@pytest.mark.parametrize("name", SPECS)
def test_token_groups_on_flash_match_the_interpreter(name, monkeypatch):
    module_ir, mod = compiled(SPECS[name])
    assert backends.plans(module_ir.attentions[0])["flash"].kind == "groups"
    with_fake(monkeypatch, mod, 4)
    results = verify.verify_spec(module_ir, mod, ["flash"], torch.bfloat16, "cpu", seed=3)
    assert results and not any(r.refused for r in results), verify.format_table(results)
    failed = [r for r in results if not r.ok]
    assert not failed, verify.format_table(failed)


def test_empty_groups_give_zero_rows_and_match_eager(monkeypatch):
    """A pattern whose key groups are empty at call time: its rows are exactly 0; an empty
    query group has no segment."""
    _, mod = compiled(groups_spec([("x", 4), ("e", "*"), ("y", 7)], ["x -> e", "y, e -> x, y"]))
    flash = with_fake(monkeypatch, mod, 4).G(backend="flash")
    eager = mod.G(backend="eager")
    q, k, v = (torch.randn(2, h, 11, 32, dtype=torch.bfloat16, requires_grad=True)
               for h in (4, 2, 2))
    outs, grads = [], []
    for m in (flash, eager):
        out = m(q, k, v, sizes={"e": 0})
        outs.append(out.float())
        grads.append(torch.autograd.grad(out.float().square().sum(), (q, k, v)))
    assert torch.equal(outs[0][:, :, :4], torch.zeros_like(outs[0][:, :, :4]))
    torch.testing.assert_close(outs[0], outs[1], atol=2e-2, rtol=2e-2)
    for a, b in zip(*grads):
        torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=5e-2)


def test_segments_tile_the_queries_and_gather_each_patterns_keys():
    g = _token_groups((("a", 2), ("b", 3), ("c", 1), ("d", 2)), None, 8, 8)
    patterns = ((("a", "c"), ("a", "c")), (("b",), ("a", "b", "d")), (("d",), ("d",)))
    layout = rt._flash_segments(g, patterns, 2, 8, 8, torch.device("cpu"))
    assert layout.cu_q.tolist() == [0, 2, 5, 6, 8, 10, 13, 14, 16]
    # per row: a,c (3 keys) | a..b, d (7) | a,c (3) | d (2) = 15 keys
    assert layout.cu_k.tolist() == [0, 3, 10, 13, 15, 18, 25, 28, 30]
    row = [0, 1, 5, 0, 1, 2, 3, 4, 6, 7, 0, 1, 5, 6, 7]
    assert layout.key_index.tolist() == row + [i + 8 for i in row]
    assert (layout.max_q, layout.max_k) == (3, 7)
    assert layout.cu_q.dtype == layout.cu_k.dtype == torch.int32
    # the same sizes reuse the layout: no new tensors, no host-to-device copies
    assert rt._flash_segments(g, patterns, 2, 8, 8, torch.device("cpu")) is layout


def test_key_padding_sorts_valid_keys_first_per_segment_without_a_sync():
    g = _token_groups((("a", 3), ("b", 3)), None, 6, 6)
    layout = rt._flash_segments(g, ((("a",), ("a", "b")), (("b",), ("b",))), 1, 6, 6,
                                torch.device("cpu"))
    valid = torch.tensor([True, False, True, False, True, True])
    gathered = valid.index_select(0, layout.key_index)
    index, used = rt._flash_valid_first(layout, gathered, layout.key_index)
    assert index.tolist() == [0, 2, 4, 5, 1, 3, 4, 5, 3]
    assert used.tolist() == [4, 2] and used.dtype == torch.int32


def test_flash_attn_2_refuses_key_padding_with_groups(monkeypatch):
    _, mod = compiled(SPECS["padded"])
    m = with_fake(monkeypatch, mod, 2).G(backend="flash").to(torch.bfloat16)
    q, k = torch.randn(1, 4, 16, 32), torch.randn(1, 2, 16, 32)
    with pytest.raises(UnsupportedInputError, match="seqused_k"):
        m(q.bfloat16(), k.bfloat16(), k.bfloat16(), valid=torch.ones(1, 16, dtype=torch.bool),
          sizes={"b": 4})


@pytest.mark.parametrize("extra, reason", [
    (" mask causal", "cannot add band"),
    (" bias alibi", "ALiBi measures |q - k| within each segment"),
    (" input doc: int[batch, seq]\n mask same(doc)", "cannot add segments equal"),
])
def test_groups_refusals_name_the_clash(extra, reason):
    attn = build_text(groups_spec([("a", 4), ("b", 4)], ["a -> a", "b -> a, b"], extra),
                      "t.attn").attentions[0]
    assert any(reason in r.message for r in backends.reasons(attn)["flash"])


def test_auto_keeps_flash_groups_until_they_are_measured():
    """No kernel path is picked by auto before it is verified on the GPU and measured against
    what auto runs instead: the groups plan says which of the two it still lacks, and
    `backend="flash"` still runs it."""
    attn = build_text(ANCHOR, "t.attn").attentions[0]
    assert backends.auto_order(attn, "cuda") == ("flex", "sdpa")
    assert backends.auto(attn, "cpu") == "sdpa"
    plan = backends.plans(attn)["flash"]
    assert plan.kind == "groups" and "gpu_tokengroups.py" in " ".join(plan.notes)
    padded = build_text(groups_spec([("a", 4), ("b", 4)], ["a -> a", "b -> a, b"],
                                    "input valid: bool[batch, seq]\n mask key_valid(valid)"),
                        "t.attn").attentions[0]
    assert "has not run token groups with padded keys" in " ".join(
        backends.plans(padded)["flash"].notes)


def test_explain_and_plan_list_the_segments():
    from attnspec.explain import explain_module
    from attnspec.lower.module import lower_module

    module_ir = build_text(MIXED, "t.attn")
    plan = lower_module(module_ir).describe()
    assert "flash: groups" in plan and "segment q b -> k a..b, d" in plan
    assert "segment q a -> k a, c" in explain_module(module_ir)
