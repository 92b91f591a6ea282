"""IR expressions -> the bodies of FlexAttention `mask_mod` / `score_mod`.

Inside those functions b, h, q_idx, kv_idx are 0-d tensors and everything the expression reads
must be a tensor captured from the enclosing call: inputs under their names, params under
aliases (`_p_NAME`, a second read of the same param `_p2_NAME`: flex allows gradients into a
captured tensor read once; `_p_NAME_2` could be param `NAME_2`'s alias), edge tables as
`_e_NAME_FIELD`, ALiBi slopes as `_alibi`, and settings as plain numbers `_s_NAME`. There are
no data-dependent checks (they cannot run inside a kernel): index ranges rest on the checker.

Example:
    >>> from attnspec.ir.build import build_text
    >>> a = build_text("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n}")
    >>> FlexExprGenerator().statement(a.attentions[0].masks[0]).text
    'q_idx >= kv_idx'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attnspec.codegen.expr import P_ATOM, Code, ExprGenerator
from attnspec.ir import nodes as ir


@dataclass
class FlexExprGenerator(ExprGenerator):
    """`captured` lists (alias, what it is) in first-use order: ("_p_t", "param t"), ..."""

    index_names: dict[str, str] = field(
        default_factory=lambda: {"b": "b", "h": "h", "q": "q_idx", "k": "kv_idx"})
    settings_owner: str = "_s"  # unused: `setting` below names each setting on its own
    dtype_name: str = "torch.float32"  # the score generator uses "score_dtype"
    captured: dict[str, str] = field(default_factory=dict)
    _param_reads: dict[str, int] = field(default_factory=dict)

    def setting(self, e: ir.SettingRef) -> Code:
        """Settings arrive as plain numbers: torch.compile specialises on their values, while
        passing the module itself would guard on its identity and recompile per instance."""
        alias = f"_s_{e.name}"
        self.captured[alias] = f"setting {e.name}"
        return Code(alias, P_ATOM, e.type, False)

    def param(self, e: ir.ParamRef) -> Code:
        reads = self._param_reads.get(e.name, 0) + 1
        self._param_reads[e.name] = reads
        alias = f"_p_{e.name}" if reads == 1 else f"_p{reads}_{e.name}"
        self.captured[alias] = f"param {e.name}"
        # The captured copy has a trailing axis of replicas (`_spread`): each key reads replica
        # kv_idx % R, so the backward's atomic adds into the param's gradient spread over R
        # addresses instead of all landing on a handful.
        k = self.index_names["k"]
        self.uses.add(k)
        parts = [self.generate(i).text for i in e.indices] + [f"{k} % {alias}.shape[-1]"]
        return Code(f"{alias}[{', '.join(parts)}]", P_ATOM, "float", True)

    def input(self, e: ir.InputRef) -> Code:
        self.captured[e.name] = f"input {e.name}"
        return self._plain(e.name, e.indices, e.type)

    def edge(self, e: ir.EdgeField) -> Code:
        alias = f"_e_{e.input}_{e.field}"
        self.captured[alias] = f"edges {e.input}.{e.field}"
        q, k = self.index_names["q"], self.index_names["k"]
        self.uses.update((q, k))
        return Code(f"{alias}[{q}, {k}]", P_ATOM, e.type, True)

    def call_alibi_slope(self, e: ir.Call) -> Code:
        arg = self.generate(e.args[0])
        self.captured["_alibi"] = "alibi slopes"
        return Code(f"_alibi[{arg.text}]", P_ATOM, "float", True)

    def _plain(self, target: str, indices: tuple[ir.Expr, ...], kind: str) -> Code:
        if not indices:
            return Code(target, P_ATOM, kind, True)
        parts = ", ".join(self.generate(i).text for i in indices)
        return Code(f"{target}[{parts}]", P_ATOM, kind, True)
