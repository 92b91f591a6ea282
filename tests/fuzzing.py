"""Front-end fuzzing: input generators and the end-to-end check of one input.

Shared by `tests/test_robustness.py` (a short seeded run) and `benchmarks/fuzz_frontend.py` (the
long run). Every generator maps a `random.Random` to the bytes of one spec file:

- `text`:    the original small mutator: insert pieces, delete runs, duplicate runs of a spec;
- `bytes`:   byte-level mutations of a shipped spec (bit flips, invalid UTF-8, BOMs, NUL,
  CR/LF mixes, Unicode line separators, very long lines and numbers, deep nesting);
- `tokens`:  token-level mutations (swap, drop, duplicate tokens; names replaced by keywords,
  builtins, reserved or unknown names; numbers by huge, negative, float, `1e999`, `0x10`...);
- `grammar`: random specs written from the grammar (settings, groups, patterns, inputs, params,
  typed expressions over them, lets, positions, muP), most of which build and generate.

`check_input(data)` runs one input through the API end to end and returns the `Result`; a
`Result.finding` is anything but attnspec's own errors.

Example:
    >>> import random
    >>> data = GENERATORS["grammar"](random.Random(1))
    >>> check_input(data).finding is None
    True
"""

from __future__ import annotations

import ast as python_ast
import random
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import attnspec
from attnspec.compiler import decode_spec
from attnspec.errors import AttnSpecError, UnsupportedBackendError
from attnspec.grammar.parser import parse
from attnspec.ir import scope
from attnspec.rules import RULES

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").rglob("*.attn"))
BACKENDS = (None, "auto", "eager", "sdpa", "flex", "flash")  # None: the spec's own setting
OUTCOMES = ("decode error", "parse error", "check error", "built", "generated", "finding")


def seed_texts() -> list[str]:
    """The shipped specs, the seeds every mutator starts from."""
    return [p.read_text() for p in SPECS]


# --- generator 1: the original small mutator ----------------------------------------------------

PIECES = list("(){}[]<>=!&|+-*/%,.;:#\n\r\t _0123456789") + [
    "causal", "score", "in", "let", "attention", "inf", "1e999", "9" * 30, "q", "k", "h", "b",
    "mask", "bias", "tokens", "pattern", "param", "input", "__x", "class", "é", "\x00", "\u2028",
]


def mutate(text: str, rng: random.Random) -> str:
    """1 to 6 insertions of `PIECES`, deletions and duplications of short runs."""
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(len(text) + 1)
        op = rng.random()
        if op < 0.4:
            text = text[:pos] + rng.choice(PIECES) + text[pos:]
        elif op < 0.8:
            text = text[:pos] + text[pos + rng.randint(1, 5):]
        else:
            start = rng.randrange(len(text) + 1)
            text = text[:pos] + text[start:start + 20] + text[pos:]
    return text


def gen_text(rng: random.Random) -> bytes:
    return mutate(rng.choice(_SEEDS), rng).encode()


# --- generator 2: bytes ---------------------------------------------------------------------------

_ODD_BYTES = [
    b"\xef\xbb\xbf", b"\x00", b"\r", b"\r\n", b"\n\r", b"\x0b", b"\x0c", b"\x1c", b"\x85",
    "\u2028".encode(), "\u2029".encode(), "\x85".encode(), "\u202e".encode(), "\u0301".encode(),
    "\ufeff".encode(), "é".encode(), "漢".encode(), "😀".encode(), b"\t",
    b"\xff", b"\xfe", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80",
]


def _long_piece(rng: random.Random) -> bytes:
    """A very long line, number or name, or deep nesting of brackets, operators or calls."""
    n = rng.choice([50, 150, 199, 200, 201, 400, 1000, 5000, 30_000, 100_000])
    kind = rng.randrange(9)
    if kind == 0:
        return b"9" * n
    if kind == 1:
        return b"x" * n
    if kind == 2:
        return b"# " + b"c" * n + b"\n"
    if kind == 3:
        opener, closer = rng.choice([(b"(", b")"), (b"[", b"]"), (b"{", b"}"), (b"abs(", b")")])
        return opener * n + b"1" + closer * rng.choice([n, n - 1, 0])
    if kind == 4:
        return rng.choice([b"-", b"!", b"- ", b"!-"]) * n + b"q"
    if kind == 5:
        return b"q" + rng.choice([b" + 1", b" & q", b" | k", b" * 1", b" - -1"]) * n
    if kind == 6:
        return b"1." + b"0" * n + b"e" + str(rng.choice([1, 999, -999, 10**6])).encode()
    if kind == 7:
        return b"\n" * n
    return b";" * n


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """1 to 8 byte-level edits; each keeps the input under ~250 KB."""
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(len(data) + 1)
        op = rng.randrange(10)
        if op == 0 and data:
            i = min(pos, len(data) - 1)
            data = data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]
        elif op == 1:
            data = data[:pos] + bytes([rng.randrange(256)]) + data[pos:]
        elif op in (2, 3):
            piece = rng.choice(_ODD_BYTES)
            at = 0 if rng.random() < 0.2 else pos
            data = data[:at] + piece + data[at:]
        elif op == 4:
            data = data[:pos] + data[pos + rng.randint(1, 40):]
        elif op == 5:
            start = rng.randrange(len(data) + 1)
            data = data[:pos] + data[start:start + rng.randint(1, 200)] + data[pos:]
        elif op == 6:
            data = data[:pos] + _long_piece(rng) + data[pos:]
        elif op == 7:
            data = data.replace(b"\n", rng.choice([b"\r\n", b"\r", b"\n\r", "\u2028".encode()]))
        elif op == 8:
            data = data[:pos]
        else:
            data = data.replace(b" ", rng.choice([b"\t", b"\x0c", b"", b"  "]), rng.randint(1, 9))
    return data[:250_000]


def gen_bytes(rng: random.Random) -> bytes:
    if rng.random() < 0.05:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    return mutate_bytes(rng.choice(_SEEDS).encode(), rng)


# --- generator 3: tokens --------------------------------------------------------------------------

_TOKEN = re.compile(r"\s+|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|[0-9][0-9_]*(?:\.[0-9_]+)?"
                    r"(?:[eE][+-]?[0-9]+)?|//|==|!=|<=|>=|->|.", re.S)
_NAMES = sorted(
    scope.KEYWORDS | set(scope.BUILTINS) | set(scope.ALL_SETTINGS) | set(scope.ALL_MUP_SETTINGS)
    | set(scope.INDEX_NAMES) | set(scope.SEQ_LEN_NAMES) | set(scope.INIT_KINDS)
    | set(scope.POSITION_KINDS) | set(scope.ROPE_ARGS) | {"t5", "edges", "types", "max_distance",
                                                          "self_loops", "edge", "type", "distance",
                                                          "start", "end", "size", "int", "float",
                                                          "bool", "batch", "seq", "q_seq",
                                                          "kv_seq", "rms", "none"}
    | {"causal", "causal_bottom_right", "sliding_window", "window", "local", "strided",
       "prefix_lm", "dilated", "same", "key_valid", "key_len", "alibi", "softcap",
       "random_links", "_rl_mix"}
    | {"class", "def", "None", "True", "lambda", "import", "self", "torch", "math", "SETTINGS",
       "GROUPS", "SPEC_SOURCE", "_t0", "_t12", "forward", "__init__", "__class__", "_attend",
       "q_proj", "sizes", "B", "S", "Sq", "mask_mod", "len", "print", "_", "__", "foo", "Foo2",
       "caual", "x" * 300, "eval", "exec", "open", "object", "nn", "F", "sink", "t5_bias"}
)
_NUMBERS = ["0", "1", "-1", "2", "7", "1_024", "1__0", "1_", "0x10", "0b1", "1e999", "1e-999",
            "inf", "-inf", "1.5", "0.0", "-0.5", "1e3", "1E+3", "2e-3", "9007199254740992",
            "9007199254740991", "9" * 38, "9" * 400, "1." + "5" * 300,
            "2147483647", "2147483648", "-2147483649", "00", "007", "1.e5", ".5", "1.", "1e",
            "16777216", "65536", "3.4e38", "1e308", "1e309"]


def mutate_tokens(text: str, rng: random.Random) -> str:
    """1 to 5 token-level edits of a spec, whitespace and comments kept."""
    tokens = _TOKEN.findall(text)
    solid = [i for i, t in enumerate(tokens) if not t.isspace() and not t.startswith("#")]
    for _ in range(rng.randint(1, 5)):
        if not solid:
            break
        i, j = rng.choice(solid), rng.choice(solid)
        tok = tokens[i]
        op = rng.randrange(6)
        if op == 0:
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif op == 1:
            tokens[i] = ""
        elif op == 2:
            tokens[i] = tok + rng.choice([" ", ""]) + tok
        elif op == 3 or (op == 4 and not tok[:1].isdigit()):
            tokens[i] = rng.choice(_NAMES) if tok[:1].isalpha() or rng.random() < 0.3 else tok
        elif op == 4:
            tokens[i] = rng.choice(_NUMBERS)
        else:
            tokens[i] = tokens[i] + " " + tokens[j]
    return "".join(tokens)


def gen_tokens(rng: random.Random) -> bytes:
    text = rng.choice(_SEEDS)
    if rng.random() < 0.3:
        text = random_spec(rng)
    return mutate_tokens(text, rng).encode()


# --- generator 4: grammar-aware random specs ------------------------------------------------------

@dataclass
class _Scope:
    """What expressions of one attention may refer to (for typed generation)."""

    layer: bool = False
    groups: list[str] = field(default_factory=list)
    int_reads: list[str] = field(default_factory=list)     # int-valued index expressions
    float_reads: list[str] = field(default_factory=list)
    bool_reads: list[str] = field(default_factory=list)
    lets: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (type, arity)
    in_score: bool = False


class SpecWriter:
    """Writes one random spec; `wrong` is the chance of a deliberate mistake at each choice
    (an unknown name, a wrong type, a bad value), so that checker paths get exercised too."""

    def __init__(self, rng: random.Random, wrong: float = 0.03):
        self.rng = rng
        self.wrong = wrong
        self.names = 0

    def oops(self) -> bool:
        return self.rng.random() < self.wrong

    def fresh(self, stem: str) -> str:
        self.names += 1
        return f"{stem}{self.names}" if not self.oops() else self.rng.choice(_NAMES)

    # files -------------------------------------------------------------------------------------
    def file(self) -> str:
        rng = self.rng
        lets = _Scope()
        items = [self.let(lets) for _ in range(rng.choice([0, 0, 1, 2, 3]))]
        items += [self.attention(lets) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        if rng.random() < 0.2:
            rng.shuffle(items)
        return "\n\n".join(items) + "\n"

    def let(self, lets: _Scope) -> str:
        """A file-level macro; its body reads only its parameters and global names."""
        rng = self.rng
        name = self.fresh("m")
        params = [f"p{i}" for i in range(rng.choice([0, 0, 1, 2]))]
        kind = rng.choice(["bool", "int", "float"])
        body_scope = _Scope(int_reads=list(params))
        body = self.expr(kind, body_scope, 3)
        lets.lets[name] = (kind, len(params))
        sig = f"({', '.join(params)})" if params or rng.random() < 0.1 else ""
        return f"let {name}{sig} = {body}"

    # attention blocks ------------------------------------------------------------------------
    def attention(self, lets: _Scope) -> str:
        rng = self.rng
        s = _Scope(layer=rng.random() < 0.35, lets=dict(lets.lets))
        lines = self.settings(s)
        if rng.random() < 0.25:
            lines += self.tokens(s)
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            lines.append(self.input_decl(s))
        for _ in range(rng.choice([0, 0, 1, 2])):
            lines.append(self.param_decl(s))
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            lines.append("mask " + self.expr("bool", s, rng.randint(0, 4)))
        for _ in range(rng.choice([0, 0, 1, 2])):
            if rng.random() < 0.5:
                lines.append("bias " + self.expr("float", s, rng.randint(0, 4)))
            else:
                lines.append("score = " + self.expr("float", _Scope(**{**vars(s),
                                                                       "in_score": True}), 3))
        if rng.random() < 0.05:
            lines.append(self.deep(s))
        if rng.random() < 0.25:
            lines.append(self.position(s))
        if s.layer and rng.random() < 0.25:
            lines.append(self.mup())
        if rng.random() < 0.2:
            rng.shuffle(lines)
        sep = rng.choice(["\n    ", "\n    ", "; "])
        return f"attention {self.fresh('A')} {{\n    {sep.join(lines)}\n}}"

    def settings(self, s: _Scope) -> list[str]:
        rng = self.rng
        heads = rng.choice([1, 2, 3, 4, 6, 8, 16])
        out = [f"heads = {heads if not self.oops() else rng.choice(_NUMBERS)}"]
        if rng.random() < 0.3:
            out.append(f"kv_heads = {rng.choice([d for d in (1, 2, 4, 8) if heads % d == 0])}")
        if s.layer:
            out.append(f"dim = {heads * rng.choice([8, 16, 32, 64])}")
            if rng.random() < 0.2:
                out.append(f"context_dim = {rng.choice([16, 48, 96])}")
            for flag in ("qkv_bias", "out_bias"):
                if rng.random() < 0.2:
                    out.append(f"{flag} = {rng.choice(['true', 'false'])}")
        if not s.layer or rng.random() < 0.2:
            out.append(f"head_dim = {rng.choice([8, 16, 32, 64, 128, 256, 12])}")
        extra = {
            "value_dim": lambda: rng.choice(["16", "head_dim", "head_dim * 2"]),
            "scale": lambda: rng.choice(["1.0", "1 / sqrt(head_dim)", "0.125", "head_dim ** 2"]),
            "dropout": lambda: rng.choice(["0.0", "0.1", "0.5"]),
            "qk_norm": lambda: rng.choice(["rms", "none"]),
            "sinks": lambda: rng.choice(["true", "false"]),
            "backend": lambda: rng.choice(scope.enum_choices("backend")),
        }
        for name, value in extra.items():
            if rng.random() < 0.12:
                out.append(f"{name} = {value()}")
        if self.oops():
            out.append(f"{rng.choice(_NAMES)} = {self.expr('int', s, 1)}")
        return out

    def tokens(self, s: _Scope) -> list[str]:
        rng = self.rng
        names = [self.fresh("g") for _ in range(rng.randint(1, 4))]
        sizes = [rng.choice(["*", "4", "16", "100"]) for _ in names]
        if sizes.count("*") > 1 and not self.oops():
            sizes = [x if x != "*" else "8" for x in sizes]
        sep = rng.choice([", ", "\n        ", "; "])
        out = ["tokens { " + sep.join(f"{n}: {z}" for n, z in zip(names, sizes)) + " }"]
        s.groups = names
        if rng.random() < 0.6:
            queries = list(names)
            rng.shuffle(queries)
            while queries:
                cut = rng.randint(1, len(queries))
                keys = rng.sample(names, rng.randint(1, len(names)))
                out.append(f"pattern {', '.join(queries[:cut])} -> {', '.join(keys)}")
                queries = queries[cut:]
        return out

    def input_decl(self, s: _Scope) -> str:
        rng = self.rng
        name = self.fresh("x")
        kind = rng.randrange(9)
        if kind == 0:
            s.int_reads += [f"{name}[b, q]", f"{name}[b, k]"]
            return f"input {name}: int[batch, seq]"
        if kind == 1:
            s.bool_reads += [f"{name}[b, k]"]
            return f"input {name}: bool[batch, {rng.choice(['seq', 'kv_seq'])}]"
        if kind == 2:
            s.float_reads.append(name)
            return f"input {name}: float[]"
        if kind == 3:
            s.float_reads.append(f"{name}[b, h]")
            return f"input {name}: float[batch, heads]"
        if kind == 4:
            s.int_reads.append(f"{name}[b]")
            return f"input {name}: int[batch]"
        if kind == 5:
            t, d = rng.choice([1, 2, 3]), rng.choice([1, 4, 32])
            s.bool_reads.append(f"{name}.edge")
            s.int_reads += [f"{name}.type", f"{name}.distance"]
            loops = rng.choice(["", ", self_loops = true", ", true"])
            return f"input {name}: edges(types = {t}, max_distance = {d}{loops})"
        if kind == 6:
            s.float_reads.append(f"{name}[b, h, q, clamp(k, 0, kv_len - 1)]")
            return f"input {name}: float[batch, heads, q_seq, kv_seq]"
        if kind == 7:
            s.float_reads.append(f"{name}[b, clamp(q - 1, 0, q_len - 1), 0]")
            return f"input {name}: float[batch, seq, 2]"
        dims = ", ".join(rng.choice(["batch", "seq", "heads", "3", "kv_heads", "-1", "0"])
                         for _ in range(rng.randint(0, 3)))
        return f"input {name}: {rng.choice(['int', 'float', 'bool', 'str'])}[{dims}]"

    def param_decl(self, s: _Scope) -> str:
        rng = self.rng
        name = self.fresh("w")
        kind = rng.randrange(4)
        if kind == 0:
            s.float_reads.append(f"{name}[h]")
            init = rng.choice(["zeros", "ones", "alibi_slopes", "normal(0.02)"])
            return f"param {name}: float[heads] = {init}"
        if kind == 1:
            n = rng.choice([4, 16, 32])
            s.float_reads.append(f"{name}[h, clamp(q - k, 0, {n - 1})]")
            s.float_reads.append(f"{name}[h, (q - k) % {n}]")
            return f"param {name}: float[heads, {n}] = {rng.choice(['zeros', 'uniform(-1, 1)'])}"
        if kind == 2:
            s.float_reads.append(name + "[0]")
            return f"param {name}: float[1] = normal({rng.choice(['0.5', '-1', '0'])})"
        init = rng.choice(["zeros", "ones", "normal()", "uniform(1)", "alibi_slopes", "eye"])
        return f"param {name}: float[{rng.choice(['kv_heads', 'heads, 2', '0', ''])}] = {init}"

    def position(self, s: _Scope) -> str:
        rng = self.rng
        if s.layer and rng.random() < 0.3:
            return rng.choice(["position sinusoidal", "position learned(max_len = 64)",
                               "position learned(16)"])
        args = [a for a in ("base = 10000", "dims = 8", "interleaved = true",
                            "base = 500.0", "dims = head_dim") if rng.random() < 0.3]
        return f"position rope({', '.join(args)})"

    def mup(self) -> str:
        rng = self.rng
        body = [f"base_dim = {rng.choice([16, 32, 64])}"]
        body += [x for x in ("attn_mult = 2.0", "init_std = 0.01", "zero_query = false",
                             "base_head_dim = 8") if rng.random() < 0.3]
        return "mup { " + "; ".join(body) + " }"

    # expressions -----------------------------------------------------------------------------
    def expr(self, kind: str, s: _Scope, depth: int) -> str:
        """A random expression of type `kind` ("bool", "int", "float") at most `depth` deep.
        Deep ones (depth > 4) are a spine: one operand goes on deep, the others stay shallow,
        so the text grows with the depth, not exponentially."""
        if self.oops():
            kind = self.rng.choice(["bool", "int", "float"])
        if depth <= 0 or self.rng.random() < (0.3 if depth <= 4 else 0.02):
            return self.atom(kind, s)
        return getattr(self, "_" + kind)(s, depth - 1)

    def _operands(self, s: _Scope, depth: int) -> Callable[[str], str]:
        """Writes the operands of one node: all `depth` deep, or for a deep node one of them."""
        if depth <= 4:
            return lambda kind: self.expr(kind, s, depth)
        spine = [True]

        def operand(kind: str) -> str:
            if spine[0] and self.rng.random() < 0.6:
                spine[0] = False
                return self.expr(kind, s, depth)
            return self.expr(kind, s, self.rng.randint(0, 2))
        return operand

    def deep(self, s: _Scope) -> str:
        """A statement whose expression is about MAX_DEPTH (100) deep: the limit's both sides."""
        rng = self.rng
        n = rng.randint(90, 110)
        if rng.random() < 0.5:
            kind = rng.choice(["bool", "float"])
            return ("mask " if kind == "bool" else "bias ") + self.expr(kind, s, n)
        chains = [("mask ", "-" * n + "q <= k"), ("mask ", "!" * n + "true"),
                  ("bias ", " + ".join(["k * 0.5"] * n)), ("mask ", " & ".join(["q >= k"] * n)),
                  ("bias ", "abs(" * n + "q * 1.0" + ")" * n),
                  ("mask ", "where(q >= k, " * n + "true" + ", false)" * n),
                  ("bias ", "(-" * n + "k * 1.0" + ")" * n),
                  ("head_dim = ", "-" * (2 * (n // 2)) + "8")]
        head, body = rng.choice(chains)
        return head + body

    def atom(self, kind: str, s: _Scope) -> str:
        rng = self.rng
        if self.oops():
            return rng.choice(_NAMES)
        lets = [n for n, (t, arity) in s.lets.items() if t == kind and arity == 0]
        if kind == "bool":
            pool = ["causal", "true", "false", "q >= k", "causal_bottom_right",
                    "sliding_window(16)", "local(8)", "strided(4)", "k < 4",
                    "random_links(2, 7)"] + s.bool_reads + lets
            pool += [f"q in {g}" for g in s.groups] + [f"k in {g}" for g in s.groups]
        elif kind == "int":
            pool = ["q", "k", "b", "h", "0", "1", "7", "1_024", "q_len", "kv_len", "heads",
                    "head_dim"] + s.int_reads + lets
            pool += [f"{g}.{f}" for g in s.groups for f in ("start", "end", "size")]
        else:
            pool = ["0.5", "1.0", "1e-3", "-2.5", "inf", "alibi", "scale"] + s.float_reads + lets
            if s.in_score:
                pool += ["score"] * 4
        return rng.choice(pool)

    def _bool(self, s: _Scope, depth: int) -> str:
        rng = self.rng
        op = rng.randrange(8)
        e = self._operands(s, depth)
        if op == 0:
            return f"{e('bool')} {rng.choice(['&', '|'])} {e('bool')}"
        if op == 1:
            return f"!({e('bool')})"
        if op == 2:
            return f"{e('int')} {rng.choice(['==', '!=', '<', '<=', '>', '>='])} {e('int')}"
        if op == 3:
            return f"{e('float')} {rng.choice(['<', '>=', '!='])} {e('float')}"
        if op == 4 and s.groups:
            return f"{e('int')} in {rng.choice(s.groups)}"
        if op == 5:
            return f"where({e('bool')}, {e('bool')}, {e('bool')})"
        if op == 6:
            return self._call("bool", s, depth)
        return f"({e('bool')})"

    def _int(self, s: _Scope, depth: int) -> str:
        rng = self.rng
        op = rng.randrange(7)
        e = self._operands(s, depth)
        if op in (0, 1):
            return f"{e('int')} {rng.choice(['+', '-', '*', '//', '%'])} {e('int')}"
        if op == 2:
            return f"-{e('int')}"
        if op == 3:
            return f"{rng.choice(['abs', 'floor', 'ceil'])}({e(rng.choice(['int', 'float']))})"
        if op == 4:
            args = ", ".join(e("int") for _ in range(rng.randint(2, 4)))
            return f"{rng.choice(['min', 'max'])}({args})"
        if op == 5:
            return rng.choice([f"clamp({e('int')}, 0, 15)", f"where({e('bool')}, {e('int')}, 0)",
                               f"t5_bucket({e('int')}, 32, 128, {rng.choice(['true', 'false'])})"])
        return self._call("int", s, depth)

    def _float(self, s: _Scope, depth: int) -> str:
        rng = self.rng
        op = rng.randrange(7)
        e = self._operands(s, depth)
        if op in (0, 1):
            right = e(rng.choice(["int", "float"]))
            return f"{e('float')} {rng.choice(['+', '-', '*', '/'])} {right}"
        if op == 2:
            fn = rng.choice(["exp", "log", "sqrt", "tanh", "sigmoid", "exp2", "log2", "abs"])
            return f"{fn}({e('float')})"
        if op == 3:
            return rng.choice([f"softcap({e('float')}, 30.0)", "t5()", "t5(16, 64)",
                               f"-alibi_slope(h) * abs({e('int')})",
                               f"where({e('bool')}, {e('float')}, -1.0)"])
        if op == 4:
            return f"{e('int')} * 1.0"
        if op == 5:
            return f"clamp({e('float')}, -5.0, 5.0)"
        return self._call("float", s, depth)

    def _call(self, kind: str, s: _Scope, depth: int) -> str:
        """A call of a file `let` of this type, else a plain atom."""
        calls = [(n, arity) for n, (t, arity) in s.lets.items() if t == kind and arity]
        if not calls:
            return self.atom(kind, s)
        name, arity = self.rng.choice(calls)
        if self.oops():
            arity += self.rng.choice([-1, 1])
        args = ", ".join(self.expr("int", s, depth) for _ in range(max(arity, 0)))
        return f"{name}({args})"


def random_spec(rng: random.Random, wrong: float = 0.03) -> str:
    """A random spec written from the grammar; `wrong` sets how often it errs on purpose."""
    return SpecWriter(rng, wrong).file()


def gen_grammar(rng: random.Random) -> bytes:
    return random_spec(rng, rng.choice([0.0, 0.0, 0.02, 0.05])).encode()


_SEEDS = seed_texts()
GENERATORS: dict[str, Callable[[random.Random], bytes]] = {
    "text": gen_text, "bytes": gen_bytes, "tokens": gen_tokens, "grammar": gen_grammar,
}


def input_for(generator: str, seed: int, index: int) -> bytes:
    """Input number `index` of a run: reproducible from (generator, seed, index) alone."""
    return GENERATORS[generator](random.Random(f"{generator}:{seed}:{index}"))


# --- the end-to-end check ---------------------------------------------------------------------

@dataclass
class Result:
    """What one input did: its outcome (one of OUTCOMES), per backend "generated" or
    "unsupported", whether its module was loaded and every class built, and a finding (the
    stage and a traceback) when something broke."""

    outcome: str = ""
    stage: str = "decode"
    loaded: bool = False
    backends: dict[str, str] = field(default_factory=dict)
    finding: str | None = None


def check_input(data: bytes, generate_for: Sequence[str | None] = BACKENDS,
                load: bool = False) -> Result:
    """Decode, build, explain and generate `data`, checking that only attnspec's own errors
    come out, that they format, and that generated modules parse.

    Modules are generated (and parsed) for the backends in `generate_for`; for the others only
    whether the backend can run the spec is decided (`backends.resolve`), since a module differs
    between backends in nothing but its constructor's default (the long run rotates them).
    With `load`, the spec's own module is also executed and every class built with its default
    settings (what `attnspec.load(spec).NAME()` does; needs torch), when that is small enough."""
    result = Result()
    try:
        _pipeline(data, generate_for, load, result)
    except Exception:  # noqa: BLE001 — anything escaping is the finding itself
        result.outcome = "finding"
        result.finding = f"{result.stage}: {traceback.format_exc()}"
    return result


def _pipeline(data: bytes, generate_for: Sequence[str | None], load: bool,
              result: Result) -> None:
    try:
        text = decode_spec(data, "fuzz.attn").text
    except AttnSpecError as e:
        result.outcome = "decode error"
        _check_error(e, data.decode("utf-8", "replace"))
        return
    result.stage = "build"
    try:
        module = attnspec.build(text)
    except AttnSpecError as e:
        result.outcome = "parse error" if _fails_to_parse(text) else "check error"
        _check_error(e, text)
        return
    result.outcome, result.stage = "built", "explain"
    from attnspec.explain import explain_module
    from attnspec.ir.printer import module_text

    assert isinstance(explain_module(module), str) and isinstance(module_text(module), str)
    for backend in BACKENDS:
        result.stage = f"generate backend={backend}"
        try:
            _generate(module, backend, backend in generate_for)
        except UnsupportedBackendError as e:
            assert str(e), "an UnsupportedBackendError with no message"
            result.backends[str(backend)] = "unsupported"
            continue
        result.backends[str(backend)] = "generated"
        result.outcome = "generated"
    if load and result.backends["None"] == "generated":
        result.stage = "load"
        result.loaded = _load(module)


def _generate(module, backend: str | None, full: bool) -> None:
    """Generate and parse the module for `backend`, or (not `full`) only resolve it the way
    `generate` does for every attention."""
    from attnspec.backends import resolve
    from attnspec.codegen.emit import generate

    if full:
        python_ast.parse(generate(module, backend))  # a SyntaxError here is a finding
        return
    for attn in module.attentions:
        resolve(attn, backend or attn.backend, module.source_name)


LOAD_LIMIT = 2**22  # parameter elements per instance; larger specs are fine, just not built here


def _load(module) -> bool:
    """Execute the generated module and build each class with its default settings, unless an
    instance would hold more than LOAD_LIMIT parameter elements; whether it was built. A spec
    that checks must construct: any exception is a finding."""
    from attnspec.codegen.emit import generate

    if any(_elements(attn) > LOAD_LIMIT for attn in module.attentions):
        return False
    namespace: dict = {}
    # Generated code only (the security rule: no spec text runs as code).
    exec(compile(generate(module), "<fuzz>", "exec"), namespace)
    for attn in module.attentions:
        namespace[attn.name]()
    return True


def _elements(attn) -> int:
    """Parameter elements of one default instance: declared params and the projections."""
    from attnspec.ir.consts import eval_const, resolve_settings

    v = resolve_settings(attn)
    total = 0
    for p in attn.params:
        count = 1
        for d in p.dims:
            count *= v[d.kind] if d.kind in ("heads", "kv_heads") else eval_const(d.size, v)
        total += count
    if attn.mode == "layer":
        width, kv_width = v["dim"], v.get("context_dim", v["dim"])
        q_out, k_out, v_out = (v["heads"] * v["head_dim"], v["kv_heads"] * v["head_dim"],
                               v["kv_heads"] * v["value_dim"])
        total += width * q_out + kv_width * (k_out + v_out) + v["heads"] * v["value_dim"] * width
    return total


def _fails_to_parse(text: str) -> bool:
    try:
        parse(text)
    except AttnSpecError:
        return True
    return False


def _check_error(error: AttnSpecError, text: str) -> None:
    """The error formats; every diagnostic is `file:LINE:COL: severity[CODE]: message` pointing
    inside the file, and shows the line the parser counted (lines end at `\\n` only)."""
    report = str(error)
    assert error.diagnostics and report, "an AttnSpecError with no diagnostics"
    lines = text.split("\n")
    for d in error.diagnostics:
        assert d.severity in ("error", "warning") and d.message, d
        assert d.code in RULES, f"a diagnostic without a registered code: {d}"
        assert 1 <= d.span.line <= len(lines) + 1 and d.span.col >= 1, f"span outside: {d}"
        shown = d.format(error.source).split("\n")
        name = error.source.name if error.source else "<spec>"
        assert shown[0].startswith(f"{name}:{d.span.line}:{d.span.col}: {d.label}: "), shown
        if error.source is not None and error.source.text == text and d.span.line <= len(lines):
            assert error.source.line(d.span.line) == lines[d.span.line - 1].removesuffix("\r")
