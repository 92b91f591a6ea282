"""The eager backend: dense [B, H, Sq, Sk] masks and scores: the reference semantics, any spec.

Its room: `lowering.py` (declared limits, `supports`, `lower` -> a typed plan), `emit.py`
(the template context) and `method.py.jinja` (the generated method).
"""

from __future__ import annotations

from attnspec.backends.base import Backend
from attnspec.backends.eager import emit, lowering

BACKEND = Backend(
    name=lowering.NAME,
    summary="dense [B, H, Sq, Sk] masks and scores: the reference semantics, any spec",
    devices=lowering.DEVICES,
    backward_devices=lowering.BACKWARD_DEVICES,
    supports=lowering.supports,
    lower=lowering.lower,
    emit=emit.emit,
    template="backends/eager/method.py.jinja",
)
