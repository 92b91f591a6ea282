"""Merge the suite's JSON parts (benchmarks/gpu_suite.py) into one results file, print the
markdown tables of docs/performance.md and draw its chart (matplotlib).

    python benchmarks/suite_report.py OUT.json PART.json [PART.json ...] [--png FILE.png]

A pattern measured in several parts is taken from the last part that has it.
"""

from __future__ import annotations

import json
import sys

PATTERNS = ("Causal", "SlidingWindow", "Documents", "AlibiCausal", "PrefixLM", "Anchor",
            "TypedGraph")
BASELINES = ("sdpa", "sdpa cudnn", "sdpa flash2", "flex triton", "flex FLASH",
             "flash-attn 4 direct")
FA4_PATTERNS = ("Causal", "SlidingWindow", "Documents")


def merge(parts: list[dict]) -> dict:
    rows, extra, meta = {}, {}, {}
    for part in parts:
        meta = part["meta"]
        names = {r["pattern"] for r in part["rows"]}
        for name in names:
            rows[name] = [r for r in part["rows"] if r["pattern"] == name]
        extra.update({k: v for k, v in part.items() if k not in ("meta", "rows")})
    ordered = [r for name in PATTERNS for r in rows.get(name, [])]
    return {"meta": meta, "rows": ordered, **extra}


def cell(rows, pattern, contestant, pass_):
    for r in rows:
        if (r["pattern"], r["contestant"], r["pass_"]) == (pattern, contestant, pass_):
            return r
    return None


def timings_table(data: dict) -> str:
    rows = data["rows"]
    lines = ["| pattern | contestant | ran | fwd ms | fwd TFLOP/s | fwd+bwd ms | "
             "fwd+bwd TFLOP/s |", "|---|---|---|---|---|---|---|"]
    for pattern in PATTERNS:
        for contestant in dict.fromkeys(r["contestant"] for r in rows
                                        if r["pattern"] == pattern):
            f, fb = (cell(rows, pattern, contestant, p) for p in ("fwd", "fwd+bwd"))
            lines.append(f"| {pattern} | {contestant} | {f['ran'] if f else ''} | "
                         f"{_ms(f)} | {_tf(f)} | {_ms(fb)} | {_tf(fb)} |")
    return "\n".join(lines)


def _ms(r) -> str:
    return f"{r['ms']:.3f}" if r and r["ms"] else "fails"


def _tf(r) -> str:
    return f"{r['tflops']:.0f}" if r and r["tflops"] else "-"


def targets_table(data: dict) -> str:
    rows = data["rows"]
    lines = ["| pattern | pass | auto ms (ran) | best baseline | auto / best | "
             "auto vs compiled flex (Triton) |", "|---|---|---|---|---|---|"]
    for pattern in PATTERNS:
        for pass_ in ("fwd", "fwd+bwd"):
            auto = cell(rows, pattern, "attnspec auto", pass_)
            base = [cell(rows, pattern, b, pass_) for b in BASELINES]
            base = [b for b in base if b and b["ms"]]
            if not auto or not auto["ms"]:
                continue
            triton = cell(rows, pattern, "flex triton", pass_)
            speedup = f"{triton['ms'] / auto['ms']:.2f}x" if triton and triton["ms"] else \
                "no working baseline"
            if base:
                best = min(base, key=lambda b: b["ms"])
                ratio = best["ms"] / auto["ms"]
                mark = "ok" if ratio >= 0.97 else "MISSED"
                best_text = f"{best['contestant']} {best['ms']:.3f}"
                ratio_text = f"{ratio:.2f} {mark}"
            else:
                best_text, ratio_text = "none runs", "-"
            lines.append(f"| {pattern} | {pass_} | {auto['ms']:.3f} ({auto['ran']}) | "
                         f"{best_text} | {ratio_text} | {speedup} |")
    return "\n".join(lines)


def block_mask_table(data: dict) -> str:
    masks = data.get("block_masks", {})
    if not masks:
        return ""
    ways = list(next(iter(masks.values())))
    lines = ["| mask (S=32768) | " + " | ".join(ways) + " |",
             "|---|" + "---|" * len(ways)]
    for name, row in masks.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[w]:.3f}" for w in ways) + " |")
    ours = "attnspec (uncached)"
    lines.append("")
    lines.append("| mask | " + " | ".join(f"speed-up over {w}" for w in ways[2:]) + " |")
    lines.append("|---|" + "---|" * len(ways[2:]))
    for name, row in masks.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[w] / row[ours]:.1f}x" for w in ways[2:])
                     + " |")
    return "\n".join(lines)


def chart(data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    contestants = ["attnspec auto", "flash-attn 4 direct", "flex FLASH", "flex triton", "sdpa"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    width = 0.16
    for ax, pass_ in zip(axes, ("fwd", "fwd+bwd"), strict=True):
        for i, contestant in enumerate(contestants):
            values = []
            for pattern in PATTERNS:
                r = cell(rows, pattern, contestant, pass_)
                values.append(r["tflops"] if r and r["tflops"] else 0.0)
            xs = [p + (i - 2) * width for p in range(len(PATTERNS))]
            ax.bar(xs, values, width, label=contestant)
        ax.set_xticks(range(len(PATTERNS)), PATTERNS, rotation=30, ha="right")
        ax.set_title(f"{pass_}, bf16, H100 (higher is better)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("effective TFLOP/s (attendable pairs only)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    png = None
    if "--png" in argv:
        png = argv[argv.index("--png") + 1]
        argv = argv[:argv.index("--png")] + argv[argv.index("--png") + 2:]
    out, *parts = argv
    data = merge([json.load(open(p)) for p in parts])
    with open(out, "w") as f:
        json.dump(data, f, indent=1)
    print(targets_table(data), timings_table(data), block_mask_table(data),
          json.dumps(data.get("recompiles", {})), sep="\n\n")
    if png:
        chart(data, png)


if __name__ == "__main__":
    main(sys.argv[1:])
