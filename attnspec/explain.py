"""`attnspec explain`: for each attention, what the analysis recognised, which backends can run
it (and why the others cannot), each plan, and what `auto` picks.

Example:
    >>> import attnspec
    >>> m = attnspec.build("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n}")
    >>> print(explain_module(m).splitlines()[0])
    attention A (kernel mode)
"""

from __future__ import annotations

from attnspec.ir import nodes as ir
from attnspec.lower import backends
from attnspec.lower.analysis import analyze


def explain_data(attn: ir.AttentionIR, source_name: str = "<spec>") -> dict:
    """What `explain` reports about one attention, as JSON-ready data (`explain --json`)."""
    plans = backends.plans(attn)
    report = {}
    for name, reasons in backends.reasons(attn).items():
        report[name] = ({"supported": False, "reasons": [r.format(source_name) for r in reasons]}
                        if reasons else
                        {"supported": True, "plan": plans[name].kind,
                         "notes": list(plans[name].notes)})
    order = backends.auto_order(attn, "cuda")
    return {"attention": attn.name, "mode": attn.mode, "facts": analyze(attn).describe(),
            "backends": report,
            "auto": {"cpu": backends.auto(attn, "cpu"), "cuda": backends.auto(attn, "cuda"),
                     "cuda_order": [{"backend": b, "why": backends.AUTO_REASONS[b]}
                                    for b in order]}}


def explain_attention(attn: ir.AttentionIR, source_name: str = "<spec>") -> str:
    data = explain_data(attn, source_name)
    lines = [f"attention {attn.name} ({attn.mode} mode)"]
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
    return "\n".join(lines)


def explain_module(module: ir.ModuleIR) -> str:
    return "\n\n".join(explain_attention(a, module.source_name) for a in module.attentions)
