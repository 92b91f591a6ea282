"""The edges backend: graph attention over an edge list (CSR by query), O(E) memory.

Its room: `lowering.py` (eligibility, `supports`, `lower` -> a typed plan), `emit.py` (the
template context) and `method.py.jinja` (the generated method).
"""

from __future__ import annotations

from attnspec.backends.base import Backend
from attnspec.backends.edges import emit, lowering

BACKEND = Backend.of_room(lowering, emit)
