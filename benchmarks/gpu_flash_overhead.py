"""How much the generated flash path costs over calling flash-attn 4 directly (H100, bf16).

B=4, H=16, D=128, S=8192, causal; forward and forward+backward, median of CUDA-event timings.
The baseline is flash_attn_func on contiguous [B, S, H, D] tensors; the module gets
[B, H, S, D] tensors (transposed views) and checks its inputs.
    SITE=/tmp/fa4site PYTHONPATH=$PWD python3 benchmarks/gpu_flash_overhead.py
"""

import os
import site

site.addsitedir(os.environ.get("SITE", "/tmp/fa4site"))

import torch  # noqa: E402
from flash_attn.cute import flash_attn_func  # noqa: E402

import attnspec  # noqa: E402

B, H, S, D = 4, 16, 8192, 128


def timed(fn, backward, reps=20):
    times = []
    for i in range(reps + 5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        if backward:
            out.backward(grad)
        end.record()
        torch.cuda.synchronize()
        if i >= 5:
            times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


mod = attnspec.load("attention C {\n heads = 16\n head_dim = 128\n mask causal\n}\n")
layer = mod.C(backend="flash").cuda()
q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
           for _ in range(3))
# the bare kernel call a user would write: flash_attn_func on contiguous [B, S, H, D] tensors
qd, kd, vd = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
grad = torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16)
flops = 4 * B * H * S * S * D * 0.5
rows = []
for backward in (False, True):
    direct = timed(lambda: flash_attn_func(qd, kd, vd, causal=True)[0].transpose(1, 2), backward)
    module = timed(lambda: layer(q, k, v), backward)
    mult = 3.5 if backward else 1.0
    rows.append(("fwd+bwd" if backward else "fwd", direct, module,
                 flops * mult / direct / 1e9, flops * mult / module / 1e9))
print(f"{'pass':8} {'direct ms':>10} {'module ms':>10} {'direct TF/s':>12} {'module TF/s':>12} "
      f"{'overhead':>9}")
for name, d, m, td, tm in rows:
    print(f"{name:8} {d:10.3f} {m:10.3f} {td:12.0f} {tm:12.0f} {100 * (m / d - 1):8.1f}%")
