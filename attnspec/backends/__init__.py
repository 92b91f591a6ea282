"""The backend registry: every backend, in one tuple. It is the one place that lists backends;
the CLI, verify, the pytest plugin, the IR's `backend` setting and codegen read names and device
facts from here. Adding a backend = a folder `attnspec/backends/<name>/` exporting `BACKEND`,
its tests, and one line in REGISTRY.

Example:
    >>> import attnspec
    >>> a = attnspec.build("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n}")
    >>> [p.backend for p in plans(a.attentions[0]).values()]
    ['eager', 'sdpa', 'flex']
    >>> CHOICES
    ('auto', 'eager', 'sdpa', 'flex', 'flash', 'edges')
"""

from __future__ import annotations

from attnspec.backends import eager, edges, flash, flex, sdpa
from attnspec.backends.base import Backend, Plan, Reason
from attnspec.errors import UnsupportedBackendError
from attnspec.ir import nodes as ir

REGISTRY: tuple[Backend, ...] = (eager.BACKEND, sdpa.BACKEND, flex.BACKEND, flash.BACKEND,
                                 edges.BACKEND)
NAMES = tuple(b.name for b in REGISTRY)
AUTO = "auto"  # not a backend: the module's choice among them (`attnspec.backends.cost_model`)
CHOICES = (AUTO, *NAMES)
# The backend that runs every spec on every device: the independent reference's twin, and
# where `auto` ends when nothing faster can run a call.
REFERENCE = eager.BACKEND.name

__all__ = ["AUTO", "CHOICES", "NAMES", "REFERENCE", "REGISTRY", "Backend", "Plan", "Reason",
           "get", "runs_on", "has_backward", "reasons", "plans", "resolve", "auto_order", "auto"]


def get(name: str) -> Backend:
    """The backend named `name`; `KeyError` for an unknown one."""
    for backend in REGISTRY:
        if backend.name == name:
            return backend
    raise KeyError(name)


def runs_on(name: str, device: str) -> bool:
    """Whether backend `name` runs on `device` at all (`auto` runs everywhere).

    >>> runs_on("flash", "cpu"), runs_on("flash", "cuda:0"), runs_on("auto", "cpu")
    (False, True, True)
    """
    return name == AUTO or get(name).runs_on(device)


def has_backward(name: str, device: str) -> bool:
    """Whether backend `name` computes gradients on `device` (flex has no CPU backward)."""
    return name == AUTO or get(name).has_backward(device)


def reasons(attn: ir.AttentionIR) -> dict[str, list[Reason]]:
    """Every backend's reasons it cannot run `attn` (empty list = supported)."""
    from attnspec.lower.module import lower_attention

    lowered = lower_attention(attn)
    return {name: list(lowered.reasons(name)) for name in NAMES}


def plans(attn: ir.AttentionIR) -> dict[str, Plan]:
    """The plan of every backend that supports `attn`."""
    from attnspec.lower.module import lower_attention

    return dict(lower_attention(attn).plans)


def resolve(attn: ir.AttentionIR, requested: str, source_name: str = "<spec>") -> str:
    """The backend `requested` ("auto" or a name) selects, or `UnsupportedBackendError` with
    every reason."""
    from attnspec.lower.module import lower_attention

    return lower_attention(attn).resolve(requested, source_name)


def auto_order(attn: ir.AttentionIR, device: str) -> tuple[str, ...]:
    """What `backend="auto"` tries on `device`, best first (`attnspec.backends.cost_model`)."""
    from attnspec.backends.cost_model import order

    return order(plans(attn), device)


def auto(attn: ir.AttentionIR, device: str) -> str:
    """The backend `auto` runs on `device` when every call suits its first choice."""
    from attnspec.backends.cost_model import first_backend

    return first_backend(auto_order(attn, device))


def unknown_backend_error(owner: str, requested: str) -> UnsupportedBackendError:
    """The error for a backend name the registry does not know, listing the ones it does."""
    return UnsupportedBackendError(
        f"{owner}: unknown backend {requested!r}; backends: {', '.join(CHOICES)}")
