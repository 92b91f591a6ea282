"""The sdpa backend: torch's scaled_dot_product_attention: fused kernels, or a dense mask.

Its room: `lowering.py` (declared limits, `supports`, `lower` -> a typed plan), `emit.py`
(the template context) and `method.py.jinja` (the generated method).
"""

from __future__ import annotations

from attnspec.backends.base import Backend
from attnspec.backends.sdpa import emit, lowering

BACKEND = Backend(
    name=lowering.NAME,
    summary="torch's scaled_dot_product_attention: fused kernels, or a dense mask",
    devices=lowering.DEVICES,
    backward_devices=lowering.BACKWARD_DEVICES,
    supports=lowering.supports,
    lower=lowering.lower,
    emit=emit.emit,
    template="backends/sdpa/method.py.jinja",
)
