"""The sdpa backend: torch's scaled_dot_product_attention: fused kernels, or a dense mask.

Its room: `lowering.py` (declared limits, `supports`, `lower` -> a typed plan), `emit.py`
(the template context) and `method.py.jinja` (the generated method).
"""

from __future__ import annotations

from attnspec.backends.base import Backend
from attnspec.backends.sdpa import emit, lowering

BACKEND = Backend.of_room(lowering, emit)
