"""The flex backend: FlexAttention: mask_mod/score_mod with a BlockMask (Triton, or flex's FLASH
kernel).

Its room: `lowering.py` (declared limits, `supports`, `lower` -> a typed plan), `emit.py`
(the template context) and `method.py.jinja` (the generated method).
"""

from __future__ import annotations

from attnspec.backends.base import Backend
from attnspec.backends.flex import emit, lowering

BACKEND = Backend.of_room(lowering, emit)
