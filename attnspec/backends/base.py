"""What every backend declares: the `Backend` record, the plan base class and `Reason`.

A backend lives in its own folder, `attnspec/backends/<name>/`, and exports one `Backend`
object named `BACKEND`: its name, the devices it runs on (and runs backward on), `supports()`
(every reason it cannot run a spec, each at the statement responsible), `lower()` (a typed,
frozen plan) and its emitter (the template context of its `_attend_<name>` method). Limits are
named, commented constants in the backend's own `lowering.py`.

Example:
    >>> from attnspec.backends import get
    >>> get("flash").devices, get("flex").backward_devices
    (('cuda',), ('cuda',))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from attnspec.ir import nodes as ir


@dataclass(frozen=True)
class Reason:
    """Why a backend cannot run a spec, at the statement responsible."""

    message: str
    span: ir.SpanIR | None = None

    def format(self, source_name: str = "<spec>") -> str:
        where = f"{source_name}:{self.span.line}:{self.span.col}: " if self.span else ""
        return f"{where}{self.message}"


@dataclass(frozen=True)
class Plan:
    """How one backend runs one attention. Each backend subclasses it with typed fields; `kind`
    names the code path of its method template and `notes` are what `attnspec explain` prints."""

    backend: str
    kind: str
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict:
        """The plan as JSON-ready data (`attnspec compile --emit plan --json`)."""
        return {name: _json_value(getattr(self, name)) for name in self.__dataclass_fields__}


def _json_value(value):
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass(frozen=True)
class Backend:
    """One backend's declared facts and its three stages.

    `supports(attn, analysis) -> list[Reason]` (empty: it can run the spec),
    `cp_supports(attn, analysis) -> list[Reason]` (empty: it can also run it under context
    parallelism, docs/parallel.md), `lower(attn, analysis) -> Plan`, and
    `emit(attention_emitter, plan, analysis) -> dict`, the
    context of its method template `template` (a path under `attnspec/`, holding the macros
    `method(a, p)` and, where `auto` can choose it, `auto_step(a, p)`).
    """

    name: str
    summary: str
    devices: tuple[str, ...]
    backward_devices: tuple[str, ...]
    supports: Callable
    cp_supports: Callable
    lower: Callable
    emit: Callable
    template: str
    # Whether its method returns the log-sum-exp (`forward(..., return_lse=True)`).
    returns_lse: bool

    @classmethod
    def of_room(cls, lowering, emit) -> Backend:
        """The backend whose room holds `lowering` (NAME, SUMMARY, DEVICES, BACKWARD_DEVICES,
        RETURNS_LSE, supports, cp_supports, lower), `emit` (emit) and `method.py.jinja` beside
        them."""
        return cls(name=lowering.NAME, summary=lowering.SUMMARY, devices=lowering.DEVICES,
                   backward_devices=lowering.BACKWARD_DEVICES, supports=lowering.supports,
                   cp_supports=lowering.cp_supports,
                   lower=lowering.lower, emit=emit.emit,
                   template=f"backends/{lowering.NAME}/method.py.jinja",
                   returns_lse=lowering.RETURNS_LSE)

    def runs_on(self, device: str) -> bool:
        """Whether this backend runs at all on `device` ("cpu", "cuda", "cuda:1", ...)."""
        return _device_type(device) in self.devices

    def has_backward(self, device: str) -> bool:
        """Whether this backend computes gradients on `device`."""
        return _device_type(device) in self.backward_devices


def _device_type(device) -> str:
    return str(device).split(":")[0]
