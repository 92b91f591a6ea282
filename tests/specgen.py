"""Hypothesis strategies that write random, valid `.attn` specs (differential fuzzing, issue 6).

`specs()` draws one `attention Fuzz { ... }` block (plus, sometimes, `let` macros) that covers
the language broadly: masks built with `&`, `|`, `!` from the standard library (causal, both
alignments, windows, local, dilated, prefix-LM, strides, BigBird random links), raw bands
(`q - k <= c`, bottom-right forms, settings as offsets), document segments, key padding and
key lengths, token groups with `pattern`s, graph edges; score pipelines (ALiBi, T5, learned
tables indexed by `h` and by clamped or typed values, softcap, sigmoid gates, `where`, inputs,
`-inf` biases); GQA, kernel / layer / cross-attention modes, muP, sinks, qk_norm, RoPE (with
position or angle inputs), absolute positions, `scale`, `value_dim`.

Every drawn spec must pass `attnspec.build`: a spec the checker rejects is a generator bug (or
a checker bug). Sizes stay small (heads <= 4, head_dim <= 16) so one verification is fast.
Features are drawn with booleans that shrink to "absent", so hypothesis minimises a failing
spec towards the fewest statements.

Three profiles steer the mask and pipeline towards what each backend recognises:
`general` (anything), `structured` (only recognised mask structure: bands, segments, key
padding/lengths, prefixes, so flex builds its BlockMask from block bounds) and `flash` (what
one flash-attn call expresses: one band, one `same(doc)` or key padding, softcap then ALiBi).

Example:
    >>> import attnspec
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, database=None, deadline=None)
    ... @given(specs())
    ... def test_builds(spec):
    ...     attnspec.build(spec.text)
    >>> test_builds()
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

NAME = "Fuzz"
PROFILES = ("general", "structured", "flash")


@dataclass(frozen=True)
class GeneratedSpec:
    """One drawn spec: its source text and the features it uses (for statistics)."""

    text: str
    features: frozenset[str]
    profile: str

    def __str__(self) -> str:
        return self.text


@dataclass
class _Draft:
    """What a spec declares while its statements are drawn."""

    mode: str  # "kernel", "layer" or "cross"
    heads: int
    kv_heads: int | None
    head_dim: int
    profile: str
    groups: list[tuple[str, int | None]] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # name -> type text
    params: dict[str, str] = field(default_factory=dict)  # name -> "float[...] = init"
    lets: dict[str, str] = field(default_factory=dict)  # name with signature -> body
    features: set[str] = field(default_factory=set)
    t5: bool = False
    graph: tuple[int, int] | None = None  # (types, max_distance) of the edges input `g`

    @property
    def cross(self) -> bool:
        return self.mode == "cross"

    def seq_dim(self, side: str) -> str:
        """The dim name for a `[batch, seq]` input read at `side` ("q" or "k"): cross-attention
        must name its side; elsewhere `seq`, which fixes q_len == kv_len."""
        if self.cross:
            return "q_seq" if side == "q" else "kv_seq"
        return "seq"

    def input(self, name: str, type_text: str, feature: str) -> str:
        self.inputs.setdefault(name, type_text)
        self.features.add(feature)
        return name

    def param(self, name: str, decl: str, feature: str) -> str:
        self.params.setdefault(name, decl)
        self.features.add(feature)
        return name

    def kv_head(self) -> str:
        """The index of a `kv_heads` dim: `h // (heads // kv_heads)`, or `h` without GQA."""
        return "h // (heads // kv_heads)" if self.kv_heads else "h"


def _maybe(draw, percent: int) -> bool:
    """True with about `percent`% probability; shrinks to False (the feature left out)."""
    return draw(st.integers(0, 99)) >= 100 - percent


# --- masks -------------------------------------------------------------------------------------
_OPS = ("<", "<=", ">", ">=")


# Band forms: stdlib macros, raw comparisons, bottom-right offsets, settings as offsets. The
# placeholders are drawn only when the chosen form has them (no unused draws: hypothesis then
# rarely draws one text twice, and shrinks faster).
_BAND_FORMS = (
    "causal", "causal_bottom_right", "sliding_window({w})", "window({l}, {r})", "local({w})",
    "q - k {op} {c}", "k - q {op} {c}", "k <= q + {c}", "abs(q - k) < {p}",
    "q + kv_len - q_len - k <= {w}", "!(k > q)", "sliding_window(head_dim)",
    "q - k <= heads + {p}",
)
_BAND_VALUES = {"w": st.integers(0, 40), "l": st.integers(0, 20), "r": st.integers(0, 20),
                "op": st.sampled_from(_OPS), "c": st.integers(-6, 24), "p": st.integers(1, 24),
                "s": st.integers(-4, 4)}


def _band_atom(draw, d: _Draft) -> str:
    """A band in any written form (`_BAND_FORMS`, and the file's `fz_band` let when present)."""
    forms = _BAND_FORMS + (("fz_band({s})",) if "fz_band" in _let_names(d) else ())
    form = draw(st.sampled_from(forms))
    d.features.add("band")
    return form.format(**{name: draw(strategy) for name, strategy in _BAND_VALUES.items()
                          if "{" + name + "}" in form})


def _let_names(d: _Draft) -> set[str]:
    return {signature.split("(")[0] for signature in d.lets}


def _structured_atom(draw, d: _Draft) -> str:
    """A conjunct the analysis recognises (band, segment, key padding/length, prefix)."""
    kinds = ["band", "valid", "lens", "prefix", "prefix_input"]
    if not d.cross:
        kinds.append("doc")
    kind = draw(st.sampled_from(kinds))
    if kind == "band":
        return _band_atom(draw, d)
    if kind == "doc":
        return f"same({d.input('doc', 'int[batch, seq]', 'documents')})"
    if kind == "valid":
        side = draw(st.sampled_from(["seq", "kv_seq"])) if not d.cross else "kv_seq"
        return f"key_valid({d.input('valid', f'bool[batch, {side}]', 'key_padding')})"
    if kind == "lens":
        form = draw(st.sampled_from(["key_len({n})", "k < {n}[b]", "{n}[b] > k"]))
        return form.format(n=d.input("lens", "int[batch]", "key_lengths"))
    if kind == "prefix":
        d.features.add("prefix_lm")
        return f"prefix_lm({draw(st.integers(0, 40))})"
    d.features.add("prefix_lm")
    return f"(k < {d.input('pfx', 'int[batch]', 'prefix_input')}[b] | causal)"


def _other_atom(draw, d: _Draft) -> str:
    """A conjunct outside the recognised structure (flex builds it with create_block_mask)."""
    kinds = ["stride", "modular", "random_links", "head", "batch", "const", "query_valid",
             "param_flag", "scalar_input", "dilated"]
    if d.groups:
        kinds += ["group", "group", "group_bound"]
    if d.graph is not None or _maybe(draw, 30):
        kinds += ["graph", "graph"]
    kind = draw(st.sampled_from(kinds))
    d.features.add(f"mask_{kind}")
    s = draw(st.integers(1, 6))
    if kind == "stride":
        return draw(st.sampled_from([f"strided({s})", f"k % {s} == 0", f"q % {s} != {s - 1}"]))
    if kind == "modular":
        return f"(q + k) % {s + 1} < {draw(st.integers(1, s + 1))}"
    if kind == "random_links":
        return f"random_links({draw(st.integers(1, 5))}, {draw(st.integers(0, 5000))})"
    if kind == "dilated":
        return f"dilated({draw(st.integers(0, 30))}, {s})"
    if kind == "head":
        return draw(st.sampled_from([f"h % 2 == {s % 2}", f"q - k <= h + {s}", f"h < {s}"]))
    if kind == "batch":
        return draw(st.sampled_from(["b == 0", "b != 0 | q >= k"]))
    if kind == "const":  # constant masks, also through settings and sizes
        return draw(st.sampled_from(["true", "false", "heads > 2", "q_len > 3",
                                     "kv_len - q_len >= 0"]))
    if kind == "query_valid":
        qv = d.input("qv", f"bool[batch, {d.seq_dim('q')}]", "query_padding")
        return f"{qv}[b, q]"
    if kind == "param_flag":
        return f"{d.param('mflag', 'float[heads] = normal(1.0)', 'mask_param')}[h] > 0.0"
    if kind == "scalar_input":  # 0-d inputs of each type
        choice = draw(st.integers(0, 2))
        if choice == 0:
            return f"{d.input('temp', 'float[]', 'scalar_input')} > -0.5"
        if choice == 1:
            return f"({d.input('flag', 'bool[]', 'scalar_input')} | q >= k)"
        return f"q - k <= {d.input('shift', 'int[]', 'scalar_input')}"
    if kind in ("group", "group_bound"):
        return _group_atom(draw, d, kind)
    return _graph_mask(draw, d)


def _group_atom(draw, d: _Draft, kind: str) -> str:
    name = draw(st.sampled_from([g for g, _ in d.groups]))
    if kind == "group":
        return draw(st.sampled_from([f"q in {name}", f"k in {name}", f"!(k in {name})",
                                     f"q - 1 in {name}"]))
    return draw(st.sampled_from([f"k < {name}.end", f"q >= {name}.start",
                                 f"q - k < {name}.size", f"k + {name}.size > q"]))


def _graph(draw, d: _Draft) -> tuple[str, int, int]:
    """The edges input `g` (declared on first use): (name, types, max_distance)."""
    if d.graph is None:
        d.graph = (draw(st.integers(1, 3)), draw(st.integers(1, 6)))
        loops = ", self_loops = true" if _maybe(draw, 40) else ""
        d.input("g", f"edges(types = {d.graph[0]}, max_distance = {d.graph[1]}{loops})",
                "graph")
    return ("g", *d.graph)


def _graph_mask(draw, d: _Draft) -> str:
    g, types, dist = _graph(draw, d)
    return draw(st.sampled_from([f"{g}.edge", f"{g}.edge", f"{g}.type == {types - 1}",
                                 f"{g}.distance <= {dist // 2}", f"({g}.edge | q == k)"]))


def _mask_expr(draw, d: _Draft, depth: int) -> str:
    """A random bool expression: atoms combined with `&`, `|`, `!` (always parenthesised)."""
    if d.profile == "structured":
        atom = lambda: _structured_atom(draw, d)  # noqa: E731
    else:
        atom = lambda: draw(st.sampled_from([  # noqa: E731
            _band_atom, _band_atom, _structured_atom, _other_atom, _other_atom]))(draw, d)
    if depth == 0 or not _maybe(draw, 45):
        return atom()
    op = draw(st.sampled_from(["&", "|", "!"])) if d.profile == "general" else "&"
    if op == "!":
        return f"!({_mask_expr(draw, d, depth - 1)})"
    return f"({_mask_expr(draw, d, depth - 1)} {op} {_mask_expr(draw, d, depth - 1)})"


def _flash_masks(draw, d: _Draft) -> list[str]:
    """At most one band and one of documents / key padding / key lengths (not a band with
    padding, which flash-attn cannot align), as flash-attn expresses them."""
    masks = []
    extra = draw(st.sampled_from(["none", "doc", "valid", "lens"]))
    if extra == "doc" and not d.cross:
        masks.append(f"same({d.input('doc', 'int[batch, seq]', 'documents')})")
    elif extra == "valid":
        masks.append(f"key_valid({d.input('valid', 'bool[batch, kv_seq]', 'key_padding')})")
    elif extra == "lens":
        masks.append(f"key_len({d.input('lens', 'int[batch]', 'key_lengths')})")
    if extra in ("none", "doc") and _maybe(draw, 70):
        masks.append(draw(st.sampled_from(["causal", "causal_bottom_right"]) | st.builds(
            "sliding_window({})".format, st.integers(0, 40)) | st.builds(
            "window({}, {})".format, st.integers(0, 20), st.integers(0, 20))))
        d.features.add("band")
    return masks


def _masks(draw, d: _Draft) -> list[str]:
    if d.profile == "flash":
        return _flash_masks(draw, d)
    count = draw(st.integers(0, 3))
    return [_mask_expr(draw, d, depth=2) for _ in range(count)]


# --- score pipeline ----------------------------------------------------------------------------
def _table_index(draw, size: int) -> str:
    return draw(st.sampled_from([f"clamp(q - k, 0, {size - 1})", f"(q - k) % {size}",
                                 f"(k - q) % {size}", f"k % {size}",
                                 f"clamp(abs(q - k) // 2, 0, {size - 1})"]))


def _bias_step(draw, d: _Draft) -> str:
    kinds = ["alibi", "alibi_explicit", "t5", "table", "kv_table", "distance", "funcs",
             "where", "head_scale", "float_input", "int_input", "scalar"]
    if d.groups:
        kinds.append("group")
    kind = draw(st.sampled_from(kinds))
    d.features.add(f"bias_{kind}")
    if kind == "alibi":
        return "bias alibi"
    if kind == "alibi_explicit":
        return draw(st.sampled_from(["bias -alibi_slope(h) * abs(q - k)",
                                     "bias alibi_slope(h) * (k - q)"]))
    if kind == "t5" and not d.t5:
        d.t5 = True
        buckets, distance = draw(st.sampled_from([(4, 8), (8, 20), (16, 10), (32, 128)]))
        return f"bias t5(buckets = {buckets}, max_distance = {distance})"
    if kind == "table":
        size = draw(st.integers(1, 12))
        tbl = d.param(f"tbl{size}", f"float[heads, {size}] = normal(0.02)", "param_table")
        return f"bias {tbl}[h, {_table_index(draw, size)}]"
    if kind == "kv_table":
        tbl = d.param("kvt", "float[kv_heads] = uniform(-0.1, 0.1)", "param_kv_heads")
        return f"bias {tbl}[{d.kv_head()}]"
    if kind == "distance":
        return f"bias {draw(st.sampled_from(['0.25', '-0.1', '1.5']))} * (q - k) / kv_len"
    if kind == "funcs":
        return draw(st.sampled_from([
            "bias log(1.0 + abs(q - k))", "bias -sqrt(abs(q - k) + 1.0)",
            "bias exp(-abs(q - k) / 4.0)", "bias min(q - k, 3) * 0.5",
            "bias max(0.1 * (q - k), -1.0, 0.05 * k)", "bias floor(log2(1.0 + abs(q - k)))",
            "bias ceil(k / 3) % 4", "bias exp2(-abs(q - k) * 0.5) - tanh(q * 0.1)",
            "bias clamp(k - q, -2, 2) // 2"]))
    if kind == "where":
        c = draw(st.integers(-3, 10))
        return draw(st.sampled_from([f"bias where(q - k > {c}, -1.0, 0.5)",
                                     f"bias where(k % 3 == 0 | q < {abs(c)}, 2, -1)"]))
    if kind == "head_scale":
        return "bias 0.5 * h - 0.25 * (heads - 1)"
    if kind == "float_input":
        return _float_input_bias(draw, d)
    if kind == "int_input":
        lens = d.input("lens", "int[batch]", "key_lengths")
        return f"bias 0.1 * {lens}[b] - 0.05 * k"
    if kind == "group":
        name = draw(st.sampled_from([g for g, _ in d.groups]))
        return f"bias where(k in {name}, 0.75, -0.25)"
    return f"bias {draw(st.sampled_from(['0.5', '-2', '3.25']))}"


def _float_input_bias(draw, d: _Draft) -> str:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        mix = d.input("headmix", "float[batch, heads]", "float_input")
        temp = d.input("temp", "float[]", "scalar_input")
        return f"bias {mix}[b, h] * {temp}"
    if choice == 1:
        kb = d.input("kb", "float[batch, kv_seq]", "float_input")
        return f"bias {kb}[b, k]"
    qb = d.input("qb", f"float[batch, {d.seq_dim('q')}]", "float_input")
    return f"bias 0.5 * {qb}[b, q]"


def _score_step(draw, d: _Draft) -> str:
    kinds = ["softcap", "softcap", "gate", "gate_table", "where", "clamp", "affine", "tanh",
             "constant"]
    kind = draw(st.sampled_from(kinds))
    d.features.add(f"score_{kind}")
    if kind == "softcap":
        return f"score = softcap(score, {draw(st.sampled_from(['1.0', '5.0', '20.0', '50']))})"
    if kind == "gate":
        gate = d.param("gate", "float[heads] = zeros", "param_gate")
        return f"score = score * sigmoid({gate}[h])"
    if kind == "gate_table":
        gate = d.param("gtab", "float[heads, 8] = normal(0.5)", "param_gate")
        return f"score = score * (0.5 + sigmoid({gate}[h, {_table_index(draw, 8)}]))"
    if kind == "where":
        c = draw(st.integers(-3, 10))
        return f"score = where(q - k > {c}, score, score - 1.5)"
    if kind == "clamp":
        return draw(st.sampled_from(["score = clamp(score, -2.0, 3.0)",
                                     "score = max(score, -1.0)", "score = min(score, 2, q)"]))
    if kind == "affine":
        return draw(st.sampled_from(["score = score / 2.0 + 0.1 * h", "score = -score",
                                     "score = score * (1.0 + 0.5 * h) - k % 3"]))
    if kind == "constant":  # the score replaced by something that does not read it
        return draw(st.sampled_from(["score = 0.5", "score = where(q >= k, score, 1.0)",
                                     "score = -0.1 * abs(q - k)", "score = h"]))
    return "score = score + 0.5 * tanh(score)"


def _graph_step(draw, d: _Draft) -> str:
    g, types, dist = _graph(draw, d)
    kind = draw(st.integers(0, 2))
    d.features.add("graph_score")
    if kind == 0:
        tb = d.param("type_bias", f"float[heads, {types}] = zeros", "param_graph")
        return f"bias {tb}[h, {g}.type]"
    if kind == 1:
        return f"bias -0.1 * {g}.distance"
    gate = d.param("gate_logit", f"float[heads, {types}, {dist}] = zeros", "param_graph")
    return f"score = score * sigmoid({gate}[h, {g}.type, {g}.distance])"


def _neg_inf_step(draw, d: _Draft) -> str:
    """A `-inf`-ish bias; drawn last, so no later step turns -inf into NaN or +inf.
    (Not -1e4: float32 logits near 1e4 keep ~3 digits, and two correct backends then differ by
    more than the tolerance rule's 2x of the interpreter's own rounding; see
    docs/verification.md.)"""
    d.features.add("neg_inf_bias")
    c = draw(st.integers(-2, 8))
    return draw(st.sampled_from([f"bias where(q - k > {c}, -inf, 0.0)",
                                 "bias where(k % 2 == 1, -inf, 0.0)",
                                 "bias where(h == 0 & k > q, -inf, 0.0)",
                                 f"bias where(k < {abs(c)}, -30.0, 0.0)"]))


def _pipeline(draw, d: _Draft) -> list[str]:
    if d.profile == "flash":
        steps = []
        if _maybe(draw, 50):
            steps.append(f"score = softcap(score, {draw(st.sampled_from(['5.0', '30.0']))})")
        if _maybe(draw, 40):
            steps.append("bias alibi")
        return steps
    steps = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["bias", "bias", "score", "graph"]))
        step = {"bias": _bias_step, "score": _score_step, "graph": _graph_step}[kind]
        if kind == "graph" and not _maybe(draw, 50):
            step = _bias_step
        steps.append(step(draw, d))
    if _maybe(draw, 20):
        steps.append(_neg_inf_step(draw, d))
    return steps


# --- settings, groups, positions ---------------------------------------------------------------
def _groups(draw, d: _Draft) -> list[str]:
    """A `tokens` block and, usually, `pattern`s where every group is a query exactly once."""
    count = draw(st.integers(1, 4))
    sizes = [draw(st.none() | st.integers(1, 12)) for _ in range(count)]
    d.groups = [(f"grp{i}", size) for i, size in enumerate(sizes)]
    d.features.add("groups")
    body = ", ".join(f"{n}: {'*' if s is None else s}" for n, s in d.groups)
    lines = [f"tokens {{ {body} }}"]
    if _maybe(draw, 65):
        d.features.add("patterns")
        names = [n for n, _ in d.groups]
        order = draw(st.permutations(names))
        cuts = sorted(draw(st.sets(st.integers(1, count - 1), max_size=count - 1))) \
            if count > 1 else []
        for lo, hi in zip([0, *cuts], [*cuts, count]):
            keys = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
            lines.append(f"pattern {', '.join(order[lo:hi])} -> {', '.join(keys)}")
    return lines


def _head_settings(draw, profile: str,
                   flash_head_dims: tuple[int, ...]) -> tuple[int, int | None, int]:
    heads = draw(st.integers(1, 4))
    kv_heads = draw(st.sampled_from([None] + [n for n in range(1, heads + 1) if heads % n == 0]))
    dims = flash_head_dims if profile == "flash" else (2, 4, 8, 16, 6)
    return heads, kv_heads, draw(st.sampled_from(dims))


def _settings(draw, d: _Draft) -> list[str]:
    lines = [f"heads = {d.heads}"]
    if d.kv_heads is not None:
        lines.append(f"kv_heads = {d.kv_heads}")
        d.features.add("gqa" if d.kv_heads != d.heads else "kv_heads_equal")
    if d.mode == "kernel":
        lines.append(f"head_dim = {d.head_dim}")
    else:
        lines += _layer_settings(draw, d)
    if _maybe(draw, 25) and d.profile != "flash":
        lines.append(f"value_dim = {draw(st.sampled_from([2, 4, 8, 12]))}")
        d.features.add("value_dim")
    if _maybe(draw, 30):
        lines.append("scale = " + draw(st.sampled_from(["0.5", "1 / sqrt(head_dim)", "2.0",
                                                        "0.125 * heads"])))
        d.features.add("scale")
    for setting, percent in (("sinks = true", 20), ("qk_norm = rms", 20)):
        if _maybe(draw, percent):
            lines.append(setting)
            d.features.add(setting.split()[0])
    if _maybe(draw, 5) and d.profile == "general":
        lines.append("dropout = 0.1")  # verify runs in eval mode: flex and flash run it
        d.features.add("dropout")
    return lines


def _layer_settings(draw, d: _Draft) -> list[str]:
    explicit = _maybe(draw, 40)
    dim = draw(st.sampled_from([8, 12, 16, 24, 32])) if explicit else d.heads * d.head_dim
    lines = [f"dim = {dim}"]
    if explicit:
        lines.append(f"head_dim = {d.head_dim}")
    if d.cross:
        lines.append(f"context_dim = {draw(st.sampled_from([4, 12, 20]))}")
    for setting in ("qkv_bias = true", "out_bias = true"):
        if _maybe(draw, 30):
            lines.append(setting)
    d.features.add(d.mode)
    return lines


def _mup(draw, d: _Draft) -> list[str]:
    parts = [f"base_dim = {draw(st.sampled_from([4, 8, 16]))}"]
    if _maybe(draw, 40):
        parts.append(f"attn_mult = {draw(st.sampled_from(['0.5', '2.0']))}")
    if _maybe(draw, 30):
        parts.append("zero_query = false")
    if _maybe(draw, 20):
        parts.append("base_head_dim = 4")
    d.features.add("mup")
    return [f"mup {{ {'; '.join(parts)} }}"]


def _positions(draw, d: _Draft) -> list[str]:
    lines = []
    if _maybe(draw, 25):
        lines.append(_rope(draw, d))
    if d.mode != "kernel" and _maybe(draw, 20):
        lines.append(draw(st.sampled_from(["position learned(max_len = 512)",
                                           "position sinusoidal"])))
        d.features.add("absolute_position")
    return lines


def _rope(draw, d: _Draft) -> str:
    dims = draw(st.sampled_from([n for n in (2, 4, 8, 16) if n <= d.head_dim]))
    args = [f"base = {draw(st.sampled_from([100, 10000]))}", f"dims = {dims}"]
    if _maybe(draw, 30):
        args.append("interleaved = true")
    source = draw(st.sampled_from(["none", "none", "positions", "float_positions", "freqs"]))
    d.features.add("rope")
    if source == "positions" and not d.cross:
        args.append(f"positions = {d.input('pos', 'int[batch, seq]', 'rope_positions')}")
    elif source == "float_positions" and not d.cross:
        args.append(f"positions = {d.input('fpos', 'float[batch, seq]', 'rope_positions')}")
    elif source == "freqs" and not d.cross:
        args.append(f"freqs = {d.input('angles', f'float[batch, seq, {dims // 2}]', 'rope')}")
    return f"position rope({', '.join(args)})"


def _lets(draw, d: _Draft) -> None:
    if _maybe(draw, 15):
        d.lets["fz_band(lo, hi = 4)"] = "q - k >= lo & q - k <= hi"
        d.features.add("let")


# --- the spec ----------------------------------------------------------------------------------
@st.composite
def specs(draw, profiles: tuple[str, ...] = PROFILES,
          flash_head_dims: tuple[int, ...] = (8, 16)) -> GeneratedSpec:
    """A random valid spec: one `attention Fuzz` block, sometimes with `let` macros.
    `flash_head_dims`: the head dims of the `flash` profile (multiples of 8 for flash-attn)."""
    profile = draw(st.sampled_from(profiles))
    mode = draw(st.sampled_from(["kernel", "layer", "cross"]))
    heads, kv_heads, head_dim = _head_settings(draw, profile, flash_head_dims)
    d = _Draft(mode, heads, kv_heads, head_dim, profile)
    _lets(draw, d)
    body = _settings(draw, d)
    if mode != "cross" and profile == "general" and _maybe(draw, 40):
        body += _groups(draw, d)
    masks = [f"mask {m}" for m in _masks(draw, d)]
    if profile == "general" and _maybe(draw, 20):  # a graph attention: edges as the mask
        masks.append(f"mask {_graph_mask(draw, d)}")
    pipeline = _pipeline(draw, d)
    extra = _positions(draw, d) + (_mup(draw, d) if mode != "kernel" and _maybe(draw, 25)
                                   else [])
    decls = [f"input {n}: {t}" for n, t in d.inputs.items()]
    decls += [f"param {n}: {t}" for n, t in d.params.items()]
    statements = body + decls + masks + pipeline + extra
    lets = [f"let {sig} = {expr}" for sig, expr in d.lets.items()]
    text = "\n".join([*lets, f"attention {NAME} {{", *(f"    {s}" for s in statements), "}", ""])
    return GeneratedSpec(text, frozenset(d.features | {profile}), profile)
