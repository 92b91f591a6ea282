"""The flash backend: flash-attn 4 (else 2): dense and varlen calls for windows, documents, key
padding.

Its room: `lowering.py` (declared limits, `supports`, `lower` -> a typed plan), `emit.py`
(the template context) and `method.py.jinja` (the generated method).
"""

from __future__ import annotations

from attnspec.backends.base import Backend
from attnspec.backends.flash import emit, lowering

BACKEND = Backend.of_room(lowering, emit)
