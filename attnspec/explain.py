"""`attnspec explain`: for each attention, what the analysis recognised, which backends can run
it (and why the others cannot), each plan, and what `auto` picks.

Example:
    >>> import attnspec
    >>> m = attnspec.build("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n}")
    >>> print(explain_module(m).splitlines()[0])
    attention A (kernel mode)
"""

from __future__ import annotations

from attnspec.backends import NAMES
from attnspec.backends.cost_model import REASONS, backend_of
from attnspec.ir import nodes as ir
from attnspec.lower.module import LoweredAttention, lower_attention


def explain_data(attn: ir.AttentionIR | LoweredAttention, source_name: str = "<spec>") -> dict:
    """What `explain` reports about one attention, as JSON-ready data (`explain --json`)."""
    lowered = attn if isinstance(attn, LoweredAttention) else lower_attention(attn)
    report = {}
    for name in NAMES:
        plan = lowered.plans.get(name)
        report[name] = ({"supported": True, "plan": plan.kind, "notes": list(plan.notes)}
                        if plan is not None else
                        {"supported": False,
                         "reasons": [r.format(source_name) for r in lowered.reasons(name)]})
    order = lowered.auto_cuda
    return {"attention": lowered.attn.name, "mode": lowered.attn.mode,
            "facts": lowered.analysis.describe(), "backends": report,
            "auto": {"cpu": lowered.auto_cpu, "cuda": backend_of(order[0]),
                     "cuda_order": [{"backend": b, "why": REASONS[b]} for b in order]},
            "context_parallel": lowered.as_json(source_name)["context_parallel"]}


def explain_attention(attn: ir.AttentionIR | LoweredAttention,
                      source_name: str = "<spec>") -> str:
    lowered = attn if isinstance(attn, LoweredAttention) else lower_attention(attn)
    data = explain_data(lowered, source_name)
    lines = [f"attention {data['attention']} ({data['mode']} mode)"]
    lines += [f"  {line}" for line in data["facts"]]
    for name, report in data["backends"].items():
        if report["supported"]:
            lines.append(f"  {name}: supported ({report['plan']})")
            lines += [f"    {note}" for note in report["notes"]]
        else:
            lines.append(f"  {name}: not supported")
            lines += [f"    - {reason}" for reason in report["reasons"]]
    auto = data["auto"]
    lines.append(f"  auto -> {auto['cpu']} on CPU, {auto['cuda']} on CUDA")
    order = [step["backend"] for step in auto["cuda_order"]]
    lines.append(f"  auto on CUDA tries: {' -> '.join(order)} (first that can run the call)")
    lines += [f"    {step['backend']}: {step['why']}" for step in auto["cuda_order"]]
    return "\n".join(lines + lowered.describe_cp(source_name))


def explain_module(module: ir.ModuleIR) -> str:
    return "\n\n".join(explain_attention(a, module.source_name) for a in module.attentions)
