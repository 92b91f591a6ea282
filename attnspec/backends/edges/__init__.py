"""The edges backend: graph attention over an edge list (CSR by query), O(E) memory.

Its room: `lowering.py` (eligibility, `supports`, `lower` -> a typed plan), `emit.py` (the
template context) and `method.py.jinja` (the generated method).
"""

from __future__ import annotations

from attnspec.backends.base import Backend
from attnspec.backends.edges import emit, lowering

BACKEND = Backend(
    name=lowering.NAME,
    summary="graph attention over an edge list: per-edge pipeline, segment softmax, O(E)",
    devices=lowering.DEVICES,
    backward_devices=lowering.BACKWARD_DEVICES,
    supports=lowering.supports,
    lower=lowering.lower,
    emit=emit.emit,
    template="backends/edges/method.py.jinja",
)
