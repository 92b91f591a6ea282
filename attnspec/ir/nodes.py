"""The typed IR: frozen pydantic models. Names are resolved, `let` macros and the standard library
are expanded, every expression node carries its type (`bool`, `int`, `float`) and its span.

The IR is the single input of the eager interpreter, of lowering and of code generation.

Example:
    >>> from attnspec.ir.build import build_text
    >>> module = build_text("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n}")
    >>> module.attentions[0].masks[0].op
    '>='
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

ValueType = Literal["bool", "int", "float"]


class Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SpanIR(Node):
    line: int
    col: int
    end_line: int
    end_col: int


# --- expressions -------------------------------------------------------------------------------
# Every expression varies over (b, h, q, k) at most; leaves say what they depend on.


class Const(Node):
    """A literal. `float('inf')` is allowed."""

    kind: Literal["const"] = "const"
    value: bool | int | float
    type: ValueType
    span: SpanIR


class IndexVar(Node):
    """`b` batch, `h` query head, `q` query position, `k` key position."""

    kind: Literal["index"] = "index"
    name: Literal["b", "h", "q", "k"]
    type: Literal["int"] = "int"
    span: SpanIR


class SettingRef(Node):
    """A numeric setting of the attention (`heads`, `head_dim`, `scale`, `base_dim`, ...): fixed
    for a module instance (constructor overrides may change it), constant during a call."""

    kind: Literal["setting"] = "setting"
    name: str
    type: ValueType
    span: SpanIR


class SeqLen(Node):
    """`q_len` or `kv_len`: known at call time."""

    kind: Literal["seq_len"] = "seq_len"
    name: Literal["q_len", "kv_len"]
    type: Literal["int"] = "int"
    span: SpanIR


class GroupBound(Node):
    """`NAME.start`, `NAME.end` (half-open) or `NAME.size` of a token group."""

    kind: Literal["group_bound"] = "group_bound"
    group: str
    which: Literal["start", "end", "size"]
    type: Literal["int"] = "int"
    span: SpanIR


class InGroup(Node):
    """`operand in GROUP`: `GROUP.start <= operand < GROUP.end`."""

    kind: Literal["in_group"] = "in_group"
    operand: Expr
    group: str
    type: Literal["bool"] = "bool"
    span: SpanIR


class Unary(Node):
    kind: Literal["unary"] = "unary"
    op: Literal["-", "!"]
    operand: Expr
    type: ValueType
    span: SpanIR


BinaryOp = Literal["+", "-", "*", "/", "//", "%", "==", "!=", "<", "<=", ">", ">=", "&", "|"]


class Binary(Node):
    """Arithmetic (`/` is true division and gives float; `//` and `%` floor toward -inf),
    comparison, or boolean `&` / `|`. Int op float promotes to float."""

    kind: Literal["binary"] = "binary"
    op: BinaryOp
    left: Expr
    right: Expr
    type: ValueType
    span: SpanIR


Builtin = Literal[
    "abs", "min", "max", "clamp", "where", "exp", "exp2", "log", "log2", "sqrt", "tanh",
    "sigmoid", "floor", "ceil", "alibi_slope", "t5_bucket",
]


class Call(Node):
    """A builtin. `floor`/`ceil` give int; `alibi_slope(h)` uses the attention's `heads`;
    `t5_bucket(rel, buckets, max_distance, bidirectional)` gives int."""

    kind: Literal["call"] = "call"
    func: Builtin
    args: tuple[Expr, ...]
    type: ValueType
    span: SpanIR


class InputRef(Node):
    """`NAME[i, ...]` on a tensor input (an index per declared dim; none for a 0-d input)."""

    kind: Literal["input"] = "input"
    name: str
    indices: tuple[Expr, ...]
    type: ValueType
    span: SpanIR


class ParamRef(Node):
    """`NAME[i, ...]` on a learned parameter (always float)."""

    kind: Literal["param"] = "param"
    name: str
    indices: tuple[Expr, ...]
    type: Literal["float"] = "float"
    span: SpanIR


class EdgeField(Node):
    """`graph.edge` (bool), `graph.type`, `graph.distance` (int, 0 where there is no edge):
    pairwise values of an `edges` input at (q, k)."""

    kind: Literal["edge"] = "edge"
    input: str
    field: Literal["edge", "type", "distance"]
    type: ValueType
    span: SpanIR


class ScoreRef(Node):
    """The running score inside `score = ...`."""

    kind: Literal["score"] = "score"
    type: Literal["float"] = "float"
    span: SpanIR


Expr = Annotated[
    Const | IndexVar | SettingRef | SeqLen | GroupBound | InGroup | Unary | Binary | Call
    | InputRef | ParamRef | EdgeField | ScoreRef,
    Field(discriminator="kind"),
]

for _model in (InGroup, Unary, Binary, Call, InputRef, ParamRef):
    _model.model_rebuild()


# --- declarations ------------------------------------------------------------------------------
class NumericSetting(Node):
    """A numeric setting and the expression that gives its value from earlier settings.

    `explicit` is true when the spec set it. Settings are listed in dependency order, so they can
    be evaluated front to back; any of them may be overridden per module instance."""

    name: str
    expr: Expr
    type: Literal["int", "float"]
    explicit: bool
    span: SpanIR


DimKind = Literal["batch", "seq", "q_seq", "kv_seq", "heads", "kv_heads", "const"]


class Dim(Node):
    """One dimension of an input or param. `const` dims carry an int expression of settings."""

    kind: DimKind
    size: Expr | None = None


class EdgesSpec(Node):
    types: int
    max_distance: int
    self_loops: bool


class InputDecl(Node):
    """A call-time tensor. For `dtype == "edges"`, `dims` is empty and `edges` is set."""

    name: str
    dtype: Literal["int", "float", "bool", "edges"]
    dims: tuple[Dim, ...]
    edges: EdgesSpec | None = None
    span: SpanIR


class KVCache(Node):
    """`input NAME: kv_cache` (or `kv_cache(paged = true)`): the attention decodes. Its keys and
    values live in a cache given at call time as `NAME_k`, `NAME_v`, `NAME_len` (tokens already
    cached per batch row) and, when paged, `NAME_pages` (the page table). Query i of row b sits
    at position `NAME_len[b] + i`; the row's keys are positions `0 .. NAME_len[b] + q_len - 1`."""

    name: str
    paged: bool
    span: SpanIR

    def argument_names(self) -> tuple[str, ...]:
        """The keyword arguments the cache takes at call time, in order.

        >>> KVCache(name="cache", paged=True, span=SpanIR(line=1, col=1, end_line=1,
        ...         end_col=2)).argument_names()
        ('cache_k', 'cache_v', 'cache_len', 'cache_pages')
        """
        suffixes = ("k", "v", "len") + (("pages",) if self.paged else ())
        return tuple(f"{self.name}_{s}" for s in suffixes)


class Init(Node):
    kind: Literal["zeros", "ones", "normal", "uniform", "alibi_slopes"]
    args: tuple[float, ...] = ()  # normal: (std,), uniform: (lo, hi)


class ParamDecl(Node):
    """A learned tensor. `origin` says who declared it: the spec (`param`), `t5(...)` (`t5`),
    `sinks = true` (`sinks`), `qk_norm = rms` (`qk_norm`), `position learned` (`position`)."""

    name: str
    dims: tuple[Dim, ...]
    init: Init
    origin: Literal["param", "t5", "sinks", "qk_norm", "position"]
    span: SpanIR


class Group(Node):
    """A token group; `size` None means `*` (given at call time in `sizes=`)."""

    name: str
    size: int | None
    span: SpanIR


class Pattern(Node):
    queries: tuple[str, ...]
    keys: tuple[str, ...]
    span: SpanIR


class Step(Node):
    """One step of the score pipeline: `bias e` (score += e) or `score = e`."""

    kind: Literal["bias", "assign"]
    expr: Expr
    span: SpanIR


class Rope(Node):
    """Rotary embedding of the first `dims` channels of q and k (`dims` an int expression)."""

    base: float
    dims: Expr
    interleaved: bool
    positions: str | None = None  # an input int/float[batch, seq]
    freqs: str | None = None  # an input float[batch, seq, dims/2] of angles
    span: SpanIR


class AbsolutePosition(Node):
    """Layer mode: an absolute position encoding added to x before the projections."""

    kind: Literal["sinusoidal", "learned"]
    max_len: int | None = None
    span: SpanIR


class Mup(Node):
    """muP: the numeric settings `base_dim`, `base_head_dim`, `attn_mult`, `init_std` live in
    `AttentionIR.numeric`; the width multiplier is `dim / base_dim`."""

    zero_query: bool
    span: SpanIR


class AttentionIR(Node):
    name: str
    mode: Literal["kernel", "layer"]
    cross: bool  # layer mode with `context_dim`
    numeric: tuple[NumericSetting, ...]
    qk_norm: Literal["none", "rms"]
    backend: str  # "auto" or a name of the backend registry (checked by the builder)
    qkv_bias: bool
    out_bias: bool
    sinks: bool
    groups: tuple[Group, ...]
    patterns: tuple[Pattern, ...]
    inputs: tuple[InputDecl, ...]
    params: tuple[ParamDecl, ...]
    masks: tuple[Expr, ...]
    pipeline: tuple[Step, ...]
    rope: Rope | None
    absolute_position: AbsolutePosition | None
    mup: Mup | None
    span: SpanIR
    kv_cache: KVCache | None = None  # set: a decoding attention (see KVCache)

    def setting(self, name: str) -> NumericSetting | None:
        return next((s for s in self.numeric if s.name == name), None)

    def input(self, name: str) -> InputDecl | None:
        return next((i for i in self.inputs if i.name == name), None)

    def param(self, name: str) -> ParamDecl | None:
        return next((p for p in self.params if p.name == name), None)


class ModuleIR(Node):
    """Everything compiled from one `.attn` file."""

    source_name: str
    source_text: str
    attentions: tuple[AttentionIR, ...]
