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


def explain_attention(attn: ir.AttentionIR, source_name: str = "<spec>") -> str:
    lines = [f"attention {attn.name} ({attn.mode} mode)"]
    lines += [f"  {line}" for line in analyze(attn).describe()]
    plans = backends.plans(attn)
    for name, reasons in backends.reasons(attn).items():
        if reasons:
            lines.append(f"  {name}: not supported")
            lines += [f"    - {r.format(source_name)}" for r in reasons]
        else:
            lines.append(f"  {name}: supported ({plans[name].kind})")
            lines += [f"    {note}" for note in plans[name].notes]
    lines.append(f"  auto -> {backends.auto(attn, 'cpu')} on CPU, "
                 f"{backends.auto(attn, 'cuda')} on CUDA")
    order = backends.auto_order(attn, "cuda")
    lines.append(f"  auto on CUDA tries: {' -> '.join(order)} (first that can run the call)")
    lines += [f"    {choice}: {backends.AUTO_REASONS[choice]}" for choice in order]
    return "\n".join(lines)


def explain_module(module: ir.ModuleIR) -> str:
    return "\n\n".join(explain_attention(a, module.source_name) for a in module.attentions)
