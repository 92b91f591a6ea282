"""T5 buckets are the same integers on every device: the log-spaced boundaries are found on the
host, so a device `log` that is one ulp low (CUDA's is, at 2.0 and 4.0) cannot move the exact
boundaries 16, 32 and 64 of 32 buckets over 128 into the bucket below."""

import pytest
import torch
from test_specs import hf_t5_bucket

import attnspec
from attnspec.eager import t5_bucket

SOURCE = "attention A {\n heads = 2\n head_dim = 8\n bias t5()\n}"


def module_bucket():
    namespace: dict = {}
    exec(compile(attnspec.compile(SOURCE), "<t5>", "exec"), namespace)  # our generated code
    return namespace["_t5_bucket"]


@pytest.mark.parametrize("buckets,max_distance", [(32, 128), (16, 64), (8, 16), (32, 1000)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_module_and_interpreter_agree_with_the_formula(buckets, max_distance, bidirectional):
    rel = torch.arange(-2 * max_distance - 5, 2 * max_distance + 6)
    want = [hf_t5_bucket(r, bidirectional, buckets, max_distance) for r in rel.tolist()]
    assert t5_bucket(rel, buckets, max_distance, bidirectional).tolist() == want
    assert module_bucket()(rel, buckets, max_distance, bidirectional).tolist() == want


def test_exact_boundaries_are_pinned():
    # 32 bidirectional buckets over 128: n = 16, max_exact = 8; log(16/8)/log(128/8) * 8 = 2.
    rel = torch.tensor([-7, -8, -11, -12, -15, -16, -31, -32, -63, -64, -127, -128, -5000])
    want = [7, 8, 8, 9, 9, 10, 11, 12, 13, 14, 15, 15, 15]
    assert t5_bucket(rel, 32, 128, True).tolist() == want
    assert module_bucket()(rel, 32, 128, True).tolist() == want
    assert module_bucket()(-rel, 32, 128, True).tolist() == [16 + b for b in want]


def test_no_device_log_is_used(monkeypatch):
    """A device log one ulp low (as CUDA's at exact powers of two) changes nothing."""
    bucket = module_bucket()
    rel = torch.arange(-300, 301)
    before = bucket(rel, 32, 128, True), t5_bucket(rel, 32, 128, True)
    real_log = torch.log
    monkeypatch.setattr(torch, "log", lambda x: torch.nextafter(real_log(x), x.new_tensor(-1e9)))
    after = bucket(rel, 32, 128, True), t5_bucket(rel, 32, 128, True)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
