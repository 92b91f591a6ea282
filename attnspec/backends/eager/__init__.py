"""The eager backend: dense [B, H, Sq, Sk] masks and scores: the reference semantics, any spec.

Its room: `lowering.py` (declared limits, `supports`, `lower` -> a typed plan), `emit.py`
(the template context) and `method.py.jinja` (the generated method).
"""

from __future__ import annotations

from attnspec.backends.base import Backend
from attnspec.backends.eager import emit, lowering

BACKEND = Backend.of_room(lowering, emit)
