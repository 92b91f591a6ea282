"""The plan stage: a checked `ModuleIR` -> `LoweredModule`, computed once per compile.

Per attention: the analysis (run once), every backend's plan or its reasons, and what `auto`
tries on CPU and CUDA. Codegen reads only this; `attnspec compile --emit plan` prints it.

Example:
    >>> import attnspec
    >>> m = lower_module(attnspec.build("attention A {\\n heads = 2\\n head_dim = 8\\n}"))
    >>> a = m.attentions[0]
    >>> [p.kind for p in a.plans.values()], a.auto_cuda
    (['dense', 'full', 'none'], ('sdpa',))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import MappingProxyType

from attnspec.backends import AUTO, NAMES, REGISTRY, unknown_backend_error
from attnspec.backends import cost_model as auto_model
from attnspec.backends.base import Plan, Reason
from attnspec.errors import UnsupportedBackendError
from attnspec.ir import nodes as ir
from attnspec.lower.analysis import Analysis, analyze


@dataclass(frozen=True)
class LoweredAttention:
    """One attention after lowering. `plans` and `refusals` are read-only mappings keyed by
    backend name, in registry order."""

    attn: ir.AttentionIR
    analysis: Analysis
    plans: MappingProxyType  # name -> Plan, for every backend that can run the spec
    refusals: MappingProxyType  # name -> tuple[Reason, ...], for every other backend
    auto_cpu: str
    auto_cuda: tuple[str, ...]
    # Context parallelism (docs/parallel.md): why each backend cannot run the spec under it
    # (every backend, with its plain reasons), what `auto` runs then, and the load balance.
    cp_refusals: MappingProxyType  # name -> tuple[Reason, ...], empty for the ones that can
    cp_auto_cpu: str | None
    cp_auto_cuda: tuple[str, ...]
    cp_balance: str

    @property
    def cp_backends(self) -> tuple[str, ...]:
        """The backends that run this attention under context parallelism."""
        return tuple(name for name, why in self.cp_refusals.items() if not why)

    def reasons(self, name: str) -> tuple[Reason, ...]:
        """Why backend `name` cannot run this attention (empty: it can)."""
        return self.refusals.get(name, ())

    def resolve(self, requested: str, source_name: str = "<spec>") -> str:
        """`requested` ("auto" or a backend name) if it can run the spec; else
        `UnsupportedBackendError` listing every reason."""
        if requested == AUTO:
            return self.auto_cpu
        if requested not in NAMES:
            raise unknown_backend_error(self.attn.name, requested)
        why = self.reasons(requested)
        if why:
            lines = "\n".join(f"  - {r.format(source_name)}" for r in why)
            raise UnsupportedBackendError(f"{self.attn.name}: backend {requested!r} cannot run "
                                          f"this spec:\n{lines}")
        return requested

    def as_json(self, source_name: str = "<spec>") -> dict:
        return {
            "attention": self.attn.name, "mode": self.attn.mode,
            "facts": self.analysis.describe(),
            "plans": {name: plan.as_json() for name, plan in self.plans.items()},
            "refused": {name: [r.format(source_name) for r in why]
                        for name, why in self.refusals.items()},
            "auto": {"cpu": self.auto_cpu, "cuda": list(self.auto_cuda)},
            "context_parallel": {
                "backends": list(self.cp_backends), "balance": self.cp_balance,
                "auto": {"cpu": self.cp_auto_cpu, "cuda": list(self.cp_auto_cuda)},
                "refused": {name: [r.format(source_name) for r in why]
                            for name, why in self.cp_refusals.items()
                            if why and name in self.plans}},
        }

    def describe(self, source_name: str = "<spec>") -> list[str]:
        """The plan as text lines (`attnspec compile --emit plan`)."""
        lines = [f"attention {self.attn.name} ({self.attn.mode} mode)"]
        lines += [f"  {fact}" for fact in self.analysis.describe()]
        for name, plan in self.plans.items():
            fields = {k: v for k, v in plan.as_json().items()
                      if k not in ("backend", "kind", "notes")}
            extra = "".join(f" {k}={v}" for k, v in fields.items())
            lines.append(f"  {name}: {plan.kind}{extra}")
            lines += [f"    {note}" for note in plan.notes]
        for name, why in self.refusals.items():
            lines.append(f"  {name}: refused")
            lines += [f"    - {r.format(source_name)}" for r in why]
        lines.append(f"  auto: {self.auto_cpu} on CPU; on CUDA {' -> '.join(self.auto_cuda)}")
        return lines + self.describe_cp(source_name)

    def describe_cp(self, source_name: str = "<spec>") -> list[str]:
        """Context parallelism's lines of `describe` and `attnspec explain`."""
        backends = ", ".join(self.cp_backends) or "none"
        lines = [f"  context parallel (cp=plan): {backends}; balance {self.cp_balance}"]
        for name, why in self.cp_refusals.items():
            if why and name in self.plans:  # the others' reasons are listed above
                lines.append(f"    {name} under cp: refused")
                lines += [f"      - {r.format(source_name)}" for r in why]
        return lines


@dataclass(frozen=True)
class LoweredModule:
    """Every attention of a module, lowered."""

    module: ir.ModuleIR
    attentions: tuple[LoweredAttention, ...]

    def describe(self) -> str:
        return "\n\n".join("\n".join(a.describe(self.module.source_name))
                           for a in self.attentions) + "\n"

    def as_json(self) -> str:
        data = [a.as_json(self.module.source_name) for a in self.attentions]
        return json.dumps({"source": self.module.source_name, "attentions": data}, indent=2) + "\n"


def lower_attention(attn: ir.AttentionIR) -> LoweredAttention:
    """Analyse `attn` once, then ask every backend whether and how it runs it."""
    analysis = analyze(attn)
    plans: dict[str, Plan] = {}
    refusals: dict[str, tuple[Reason, ...]] = {}
    for backend in REGISTRY:
        why = tuple(backend.supports(attn, analysis))
        if why:
            refusals[backend.name] = why
        else:
            plans[backend.name] = backend.lower(attn, analysis)
    cp = _cp_refusals(attn, analysis, refusals)
    able = {name: plan for name, plan in plans.items() if not cp[name]}
    cp_cpu = auto_model.cp_order(able, "cpu")
    return LoweredAttention(attn, analysis, MappingProxyType(plans), MappingProxyType(refusals),
                            auto_model.first_backend(auto_model.order(plans, "cpu")),
                            auto_model.order(plans, "cuda"), MappingProxyType(cp),
                            cp_cpu[0] if cp_cpu else None, auto_model.cp_order(able, "cuda"),
                            cp_balance(analysis))


def _cp_refusals(attn: ir.AttentionIR, analysis: Analysis,
                 refusals: dict[str, tuple[Reason, ...]]) -> dict[str, tuple[Reason, ...]]:
    """Every backend's reasons it cannot run `attn` under context parallelism: its plain
    reasons, the spec's (cross-attention), then its own."""
    common = tuple(cp_reasons(attn))
    return {b.name: refusals.get(b.name) or common + tuple(b.cp_supports(attn, analysis))
            for b in REGISTRY}


def lower_module(module: ir.ModuleIR) -> LoweredModule:
    """The plan stage of a whole module."""
    return LoweredModule(module, tuple(lower_attention(a) for a in module.attentions))


def cp_reasons(attn: ir.AttentionIR) -> list[Reason]:
    """Why no backend can run `attn` under context parallelism (empty: the backends decide).
    A plan shards one sequence, whose rows are both the queries and the keys."""
    if attn.cross:
        return [Reason("context parallelism shards one sequence (queries and keys alike); "
                       "cross-attention (`context_dim`) is not supported", attn.span)]
    return []


def cp_balance(analysis) -> str:
    """The load balance a generated class offers as CP_BALANCE (docs/parallel.md): head-tail
    where each row's work grows with its position (a band unbounded to the left, bounded to
    the right: causal, prefix-LM), inside every document when the mask also splits documents;
    contiguous chunks otherwise (full masks, windows: every row has about the same work)."""
    from attnspec.lower.analysis import Band, PrefixOrBand

    bands = [item.band if isinstance(item, PrefixOrBand) else item for item in analysis.mask
             if isinstance(item, (Band, PrefixOrBand))]
    growing = any(b.lo is None and b.hi is not None for b in bands)
    if not growing:
        return "none"
    return "documents" if analysis.segments else "head_tail"
