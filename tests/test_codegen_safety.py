"""Code generation safety (contract §2, §9.7): a spec is data. Adversarial names and literals
either stop at an `AttnSpecError` with a `file:LINE:COL` diagnostic, or reach the generated module
only as checked identifiers and repr() literals; compiling or loading a spec runs none of it.

How the tests prove it:
- twins: a spec with an accepted adversarial name generates exactly the text of the same spec
  with a same-length placeholder name once the placeholder is replaced (the name changed
  nothing but itself); and a spec holding every accepted name of a role at once gives a module
  whose AST is inspected: every identifier, call, import and constant is one the generator
  writes or a checked spec name;
- scopes: `symtable` lists every local of every generated function that a call-time input
  reaches, every module-level name and every attribute of the generated classes; the reserved
  tables of `attnspec.ir.scope` must hold them all, so an accepted name shadows nothing;
- characters: look-alikes, zero-width and line-breaking characters never reach a name, and in
  comments they change nothing but SPEC_SOURCE (the AST is that of the spec without them);
- literals: numbers are repr() of ints and floats (`float("inf")`, `float("nan")`), huge ones
  are errors;
- loading: an audit hook sees every compile, exec, import, open and process call while a hostile
  spec loads; the only code compiled from anything holding spec text is the generated module.
"""

from __future__ import annotations

import ast
import builtins
import math
import random
import re
import symtable
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from runtimes import identifiers, runtime_identifiers

import attnspec
from attnspec import verify
from attnspec.cache import cache_dir
from attnspec.codegen.emit import GENERATED_NAMES, generate
from attnspec.codegen.expr import literal
from attnspec.errors import AttnSpecError
from attnspec.ir import scope
from attnspec.ir.build import build_text

ROOT = Path(__file__).resolve().parent.parent
FILE = "s.attn"
# Identifiers made from checked spec names: temporaries, per-attention functions, flex aliases.
PER_SPEC = (r"_t\d+|_(flex|mask_mod|block_lists|decode_flex|decode_mask)_[A-Za-z]\w*"
            r"|_[pes]\d*_\w+|a\d+")
# What generated modules may import (difflib: on an error path of the token-group checks).
SAFE_IMPORTS = {"torch", "math", "collections", "importlib.util", "warnings", "difflib",
                "torch.distributed"}
SAFE_FROM = {"attnspec.runtime.errors", "collections.abc", "flash_attn", "flash_attn.cute",
             "torch.nn.attention.flex_attention", "torch.distributed"}
# Calls that would run or reach code: never a call target (torch.compile compiles our own code).
BANNED_CALLS = {"eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "open",
                "globals", "locals", "vars", "input", "breakpoint", "system", "popen",
                "import_module", "exec_module", "load_module", "Popen", "spawn"}
ALLOWED_DOTTED_CALLS = {"torch.compile"}


def spec_names(text: str) -> set[str]:
    """Names of the spec that may become identifiers (attentions, settings, params, inputs)."""
    names = set()
    for a in build_text(text, FILE).attentions:
        names |= {a.name} | {s.name for s in a.numeric} | {p.name for p in a.params}
        names |= set(input_arguments(a))
    return names


def input_arguments(attn) -> list[str]:
    names = []
    for i in attn.inputs:
        names.append(i.name)
        if i.dtype == "edges":
            names += [f"{i.name}_type", f"{i.name}_distance"]
    return names


def dotted(func: ast.expr) -> str:
    """`torch.nn.functional.pad` for an attribute chain; '' when the target is computed."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        inner = dotted(func.value)
        return f"{inner}.{func.attr}" if inner else f"?.{func.attr}"
    return ""


def spec_source_value(tree: ast.Module) -> ast.expr:
    [value] = [n.value for n in tree.body if isinstance(n, ast.Assign)
               and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["SPEC_SOURCE"]]
    return value


def assert_safe_module(src: str, text: str) -> None:
    """The generated module compiles; its identifiers, calls, imports and constants are the
    generator's own or the spec's checked names; the spec text is the one SPEC_SOURCE literal."""
    tree = ast.parse(src)
    builtins.compile(tree, "<generated>", "exec")
    allowed = GENERATED_NAMES | runtime_identifiers() | spec_names(text)
    unknown = {n for n in identifiers(tree) - allowed if not re.fullmatch(PER_SPEC, n)}
    assert not unknown
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Call):  # f(...)(...): the inner call is checked
                continue
            target = dotted(node.func)
            assert target, ast.unparse(node)  # calls name what they call
            assert target in ALLOWED_DOTTED_CALLS or target.split(".")[-1] not in BANNED_CALLS
        elif isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= SAFE_IMPORTS
        elif isinstance(node, ast.ImportFrom):
            assert node.module in SAFE_FROM and node.level == 0
        elif isinstance(node, ast.Constant):
            assert type(node.value) in (type(None), bool, int, float, str, type(...)), node.value
    value = spec_source_value(tree)
    assert isinstance(value, ast.Constant) and value.value == text  # adjacent literals, joined


# --- adversarial names ----------------------------------------------------------------------------
# Each role places one name `{n}` in a spec; the spec is also generated with a placeholder.
ROLES = {
    "attention": "attention {n} {{\n heads = 2\n head_dim = 4\n mask causal\n}}\n",
    "input": ("attention A {{\n heads = 2\n head_dim = 4\n input {n}: int[batch, seq]\n"
              " mask same({n}) & causal\n bias {n}[b, k] * 0.5\n}}\n"),
    "edges": ("attention A {{\n heads = 2\n head_dim = 4\n input {n}: edges(types = 2, "
              "max_distance = 4)\n mask {n}.edge | q == k\n bias {n}.distance * 0.25\n}}\n"),
    "param": ("attention A {{\n heads = 2\n head_dim = 4\n param {n}: float[heads, 3] = "
              "normal(0.5)\n bias {n}[h, (q - k) % 3] + {n}[h, 0]\n mask causal\n}}\n"),
    "group": ("attention A {{\n heads = 2\n head_dim = 4\n tokens {{\n  {n}: 3\n  rest: *\n }}\n"
              " pattern {n} -> {n}\n pattern rest -> {n}, rest\n}}\n"),
    "let": "let {n}(w) = q - k <= w\nattention A {{\n heads = 2\n head_dim = 4\n mask {n}(3)\n}}\n",
    "let_param": ("let win({n}) = k <= {n}\nattention A {{\n heads = 2\n head_dim = 4\n"
                  " mask win(3)\n}}\n"),
    "keyword": ("let win(w = 1) = q - k <= w\nattention A {{\n heads = 2\n head_dim = 4\n"
                " mask win({n} = 3)\n}}\n"),
}
MARKER = "attnspec_marker_pwned"
KITCHEN = f"""# {MARKER} \r__import__('os').system('touch {MARKER}') \u2028 \"\"\" ''' \\
let exec(os) = q - k <= os   # a let named exec with a parameter os: neither becomes Python
attention match {{
    heads = 2
    head_dim = 8
    input case: int[batch, seq]
    input sys: bool[batch, seq]
    param print: float[heads, 3] = normal(0.5)
    param nn: float[heads] = normal(0.5)
    mask exec(5) & (case[b, q] == case[b, k]) & (sys[b, k] | q == k)
    bias print[h, (q - k) % 3] + print[h, 0] * 2.0 + nn[h]
}}
attention nn {{                  # a class named like the other's param
    heads = 2
    head_dim = 8
    input match: int[batch, seq]  # an input named like the other class
    param case: float[heads] = normal(0.5)
    mask match[b, q] == match[b, k] | q == k
    bias case[h]
}}
"""
# Roles whose name becomes a Python identifier (group names become strings; lets vanish).
IDENTIFIER_ROLES = ("attention", "input", "edges", "param")
NAMES = (
    # Python keywords and soft keywords
    "class lambda import None await match case type _ "
    # builtins that run or reach code
    "exec eval print open getattr __import__ compile globals breakpoint input "
    # dunder and underscore names
    "__class__ __init__ __builtins__ __ _private "
    # names the generated module imports, defines or uses
    "torch F math nn self os sys importlib warnings collections difflib SPEC_SOURCE "
    "UnsupportedBackendError B Sq dtype mask score probs out x sizes groups choice fast q_idx "
    "kv_idx enable_gqa kernel_options captured kernel score_mod run runner with_lse training "
    "xpu register_forward_hook forward backend SETTINGS last_backend heads q_proj sink "
    "_read _flex_run _t1 a0 _p_t "
    # the language's own words
    "in inf let attention causal alibi abs q b"
).split() + ["n" * 300]
# Lets, let parameters, keyword arguments and groups never become identifiers: a sample.
FEW_NAMES = ("class None match _ exec __import__ __class__ _private torch self SPEC_SOURCE _read "
             "_t1 run in inf q F").split() + ["n" * 300]


def placeholder(name: str) -> str:
    """A name of the same length that nothing else in a module contains."""
    return ("Qj" * len(name))[: len(name)]


@cache
def twin(role: str, length: int) -> str:
    """The generated source of the role's spec with a placeholder name of `length`."""
    return attnspec.compile(ROLES[role].format(n=placeholder("x" * length)))


@cache
def twin_dump(role: str, length: int) -> str:
    return ast_dump_without_spec_source(twin(role, length))


@cache
def outcome(role: str, name: str) -> str | AttnSpecError:
    """The generated source of the role's spec with `name`, or the error refusing it."""
    try:
        return attnspec.compile(ROLES[role].format(n=name))
    except AttnSpecError as e:
        return e


def accepted(role: str) -> list[str]:
    names = NAMES if role in IDENTIFIER_ROLES else FEW_NAMES
    return [n for n in names if isinstance(outcome(role, n), str)]


def slot_lines(role: str) -> set[int]:
    """The lines of the role's spec that hold the name."""
    return {i for i, line in enumerate(ROLES[role].splitlines(), 1) if "{n}" in line}


def without_spec_source(src: str) -> str:
    """The module text without its SPEC_SOURCE literal (whose line cuts may split a name)."""
    return re.sub(r"^SPEC_SOURCE = \(\n.*?^\)\n", "", src, count=1, flags=re.S | re.M)


def ast_dump_without_spec_source(src: str) -> str:
    tree = ast.parse(src)
    spec_source_value(tree).value = None
    return ast.dump(tree)


@pytest.mark.parametrize("role", list(ROLES))
def test_adversarial_names_are_refused_or_change_nothing_but_themselves(role):
    """Every name, in every role: an AttnSpecError at the name's line, or a module whose text is
    the placeholder twin's with the placeholder replaced (so the same AST up to the name)."""
    for name in NAMES if role in IDENTIFIER_ROLES else FEW_NAMES:
        src = outcome(role, name)
        if isinstance(src, AttnSpecError):
            head = str(src).splitlines()[0]
            found = re.match(r"<spec>:(\d+):\d+: error\[E\d{3}\]: ", head)
            assert found and int(found[1]) in slot_lines(role), (name, head)
            continue
        if role in IDENTIFIER_ROLES:
            assert scope.identifier_problem(name) is None, name
        if len(name) == 1 or len(name) > 60:  # no unique one-letter placeholder; long names
            # are split across the adjacent literals of wrapped messages: compare the ASTs
            assert ast_dump_without_spec_source(src) == renamed(twin_dump(role, len(name)),
                                                                name), name
            continue
        twin_src = without_spec_source(twin(role, len(name)))
        assert twin_src.replace(placeholder(name), name) == without_spec_source(src), name
        if name in ("match", "case", "type"):  # soft keywords: still plain names to Python
            builtins.compile(src, "<generated>", "exec")
    assert accepted(role) or role == "keyword"


def renamed(dump: str, name: str) -> str:
    """An AST dump with the placeholder for `name` replaced by `name` (the dump quotes names
    and strings; messages may cut a long name short, and a cut placeholder is a cut name)."""
    if len(name) == 1:
        return re.sub(rf"(?<![A-Za-z0-9]){placeholder(name)}(?![A-Za-z0-9])", name, dump)
    return re.sub(r"(?:Qj)+Q?", lambda m: name[: len(m[0])], dump)


def combined(role: str, names: list[str]) -> str:
    """One spec with every name in the role at once (each line that holds the name repeated)."""
    if role == "attention":
        return "".join(ROLES[role].format(n=n) for n in names)
    lines = []
    for line in ROLES[role].split("\n"):
        lines += [line.format(n=n) for n in names] if "{n}" in line else [line.format(n="")]
    return "\n".join(lines)


@pytest.mark.parametrize("role", IDENTIFIER_ROLES)
def test_accepted_names_together_give_a_safe_module(role):
    """Every accepted name of a role in one spec: the module compiles, and its identifiers,
    calls, imports and constants are the generator's own or the spec's checked names."""
    text = combined(role, accepted(role))
    assert_safe_module(attnspec.compile(text), text)


def test_refusals_name_the_problem():
    """A few refusals, as the user sees them."""
    cases = {
        ("input", "class"): "`class` is a Python keyword",
        ("param", "__class__"): "starts with `__`",
        ("input", "_private"): "starts with `_`",
        ("input", "exec"): "input name `exec` is reserved",
        ("attention", "torch"): "attention name `torch` is reserved",
        ("attention", "run"): "attention name `run` is reserved",  # its _flex_run is a helper
        ("input", "q_idx"): "input name `q_idx` is reserved",  # a flex mask_mod argument
        ("input", "fast"): "input name `fast` is reserved",  # an _attend_flex argument
        ("param", "compile"): "param name `compile` is reserved",  # nn.Module.compile
        ("param", "AUTO_CPU"): "param name `AUTO_CPU` is reserved",  # a class attribute
        ("group", "import"): "`import` is a Python keyword",
        ("let_param", "inf"): "`inf` is a keyword and cannot name a parameter",
    }
    for (role, name), message in cases.items():
        with pytest.raises(AttnSpecError) as info:
            attnspec.compile(ROLES[role].format(n=name))
        assert message in str(info.value), str(info.value)


# --- no name can shadow anything ----------------------------------------------------------------
# Specs that together reach every part of the template: shipped, one per role, every accepted
# name of a role at once, and the hostile kitchen sink below.
SCOPE_SPECS = [p.stem for p in sorted((ROOT / "specs").glob("*.attn"))] + [
    f"role-{r}" for r in ROLES if r != "keyword"] + ["all-input", "all-edges", "all-param",
                                                     "kitchen"]


def scope_text(spec_id: str) -> str:
    kind, _, role = spec_id.partition("-")
    if kind == "role":
        return ROLES[role].format(n="zname")
    if kind == "all":
        return combined(role, accepted(role))
    return KITCHEN if spec_id == "kitchen" else (ROOT / "specs" / f"{spec_id}.attn").read_text()


def function_scopes(table: symtable.SymbolTable):
    """Every function scope below `table` (defs, lambdas, comprehensions), depth first."""
    for child in table.get_children():
        if child.get_type() == "function":
            yield child
        yield from function_scopes(child)


def symbols(table: symtable.SymbolTable, nested: bool = True) -> set[str]:
    found = {s.get_name() for s in table.get_symbols()}
    if nested:
        for child in table.get_children():
            found |= symbols(child)
    return found


@pytest.mark.parametrize("spec_id", SCOPE_SPECS)
def test_reserved_names_cover_every_name_a_spec_name_could_shadow(spec_id):
    """Inputs: every other symbol of a generated function that an input reaches (and of the
    functions nested in it) is reserved for inputs. Attentions: every module-level name, and
    every runtime name made of an attention-function prefix, is reserved for attentions. Params:
    every attribute of the class (its own and nn.Module's) is reserved for params."""
    module_ir = build_text(scope_text(spec_id), FILE)
    src = generate(module_ir)
    top = symtable.symtable(src, "<generated>", "exec")
    runtime = set(scope.GENERATED_MODULE_NAMES)
    inputs = {n for a in module_ir.attentions for n in input_arguments(a)}
    for table in top.get_children():
        if table.get_name() in runtime or table.get_name().startswith("_block_lists_"):
            continue  # runtime helpers, and BlockMask builders (inputs arrive as a0, a1, ...)
        # class bodies do not enclose their methods: only function scopes matter
        functions = ([table] if table.get_type() == "function" else []) + list(
            function_scopes(table))
        for fn in functions:
            if symbols(fn, nested=False) & inputs:
                others = {n for n in symbols(fn) - inputs
                          if not re.fullmatch(PER_SPEC, n) and not n.startswith(".")}
                assert others <= scope.RESERVED_BY_KIND["input"], others - scope.RESERVED_BY_KIND[
                    "input"]
    attentions = {a.name for a in module_ir.attentions}
    own = {p + a for a in attentions for p in scope.ATTENTION_FUNCTION_PREFIXES} | attentions
    module_names = {s.get_name() for s in top.get_symbols()}
    module_names |= {s.get_name() for t in function_scopes(top) for s in t.get_symbols()
                     if s.is_global()}
    for name in module_names - own:
        if not name.startswith("_"):
            assert name in scope.RESERVED_BY_KIND["attention"], name
        for prefix in scope.ATTENTION_FUNCTION_PREFIXES:
            if name.startswith(prefix) and not name[len(prefix):].startswith("_"):
                assert name[len(prefix):] in scope.RESERVED_BY_KIND["attention"], name
    tree = ast.parse(src)
    params_of = {a.name: {p.name for p in a.params} for a in module_ir.attentions}
    for cls in [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in attentions]:
        params = params_of[cls.name]
        attributes = {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
                      and isinstance(n.value, ast.Name) and n.value.id == "self"}
        attributes |= {s.get_name() for t in top.get_children() if t.get_name() == cls.name
                       for s in t.get_symbols() if s.is_assigned() or s.is_local()}
        attributes = {n for n in attributes - params if not n.startswith("_")}
        reserved = scope.RESERVED_BY_KIND["param"]
        assert attributes <= reserved, attributes - reserved


def test_every_nn_module_attribute_is_reserved_for_params():
    """A param named like an nn.Module attribute cannot be registered (`compile`: KeyError)."""
    public = {n for n in dir(torch.nn.Module) if not n.startswith("_")}
    public |= {n for n in vars(torch.nn.Module()) if not n.startswith("_")}  # training
    assert public <= scope.RESERVED_BY_KIND["param"], public - scope.RESERVED_BY_KIND["param"]


def test_flex_param_aliases_never_collide():
    """Two reads of `t` and a param `t_2`: the second read's alias once was `_p_t_2`, the same
    as t_2's, so flex read t_2's values for t. Now flex agrees with the interpreter."""
    text = ("attention A {\n heads = 2\n head_dim = 8\n param t: float[heads, 3] = normal(1.0)\n"
            " param t_2: float[heads, 3] = normal(1.0)\n param p2_t: float[heads] = normal(1.0)\n"
            " bias t[h, (q - k) % 3] * 2.0\n bias t[h, 1] + t_2[h, 0] * 3.0 + p2_t[h]\n"
            " mask causal\n}\n")
    module_ir, mod = build_text(text, FILE), attnspec.load(text)
    src = attnspec.compile(text)
    aliases = re.findall(r"^ +(_p\d*_\w+) = _spread\(self\.(\w+)\.", src, re.M)
    assert len({a for a, _ in aliases}) == len(aliases) == 4  # t is read twice
    assert {a: p for a, p in aliases}["_p2_t"] == "t"
    assert_matches_interpreter(module_ir, mod, ["flex"])


def assert_matches_interpreter(module_ir, mod, backends: list[str]) -> None:
    """Each attention on each backend, one case (forward, and backward where the backend has
    one on CPU) against the eager interpreter, on fresh random inputs."""
    seed = random.randrange(2**31)
    for attn in module_ir.attentions:
        case = verify.cases_for(attn)[0]
        for backend in backends:
            result = verify.check_case(attn, getattr(mod, attn.name), backend, case,
                                       torch.float64, "cpu", seed)
            assert result.ok, (attn.name, backend, seed, result.detail)


# --- characters -------------------------------------------------------------------------------
BASE = "attention A {\n heads = 2\n head_dim = 4\n mask causal\n}\n"
BREAKERS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029",
            '"""', "'''", "\\", "\\N{BULLET}", "\x7f", "\u200b", "\ufeff", "\u202e"]


def test_lookalike_and_invisible_characters_never_reach_a_name():
    """Python reads `ｅｘｅｃ` (fullwidth) as `exec` (NFKC): the lexer admits only ASCII names, so
    look-alikes and zero-width characters are `unexpected character` errors at their column;
    identifier_problem (and generate) refuse them too, whoever builds the IR."""
    assert ast.parse("ｅｘｅｃ").body[0].value.id == "exec"  # the danger is real
    for bad in ["ｅｘｅｃ", "ℯxec", "еxec", "éxec", "a\u200bb", "a\u200db", "a\u2060b", "a\ufeffb",
                "a\u00a0b", "a\u3000b"]:
        text = BASE.replace(" mask causal", f" input {bad}: int[batch, seq]\n mask causal")
        with pytest.raises(AttnSpecError) as info:
            attnspec.compile(text)
        column = 8 + next(i for i, c in enumerate(bad) if not c.isascii())
        head = f"<spec>:4:{column}: error[E102]: unexpected character"
        assert str(info.value).startswith(head), str(info.value)
        assert scope.identifier_problem(bad) is not None
    module_ir = build_text(BASE, FILE)
    relabelled = module_ir.attentions[0].model_copy(update={"name": "ｅｘｅｃ"})
    with pytest.raises(ValueError, match="not a valid Python identifier"):
        generate(module_ir.model_copy(update={"attentions": (relabelled,)}))


def test_comment_content_changes_only_spec_source():
    """Comments holding line breaks Python honours (\\r), ones it does not (\\u2028, \\x85),
    quotes and backslashes, followed by code: the module's AST is that of the spec without the
    comments, but for SPEC_SOURCE, which holds the text exactly. Two specs: one comment with
    every breaker, and one per breaker on a line of its own, after the statements."""
    payloads = [f"# {b} import os; os.system('x') {b}print(1) \"\"\" {b}" for b in BREAKERS]
    one_line = BASE.replace(" head_dim = 4\n", f" head_dim = 4 {''.join(payloads)}\n")
    own_lines = BASE + "\n".join(payloads) + "\n"
    for text in (one_line, own_lines):
        src = attnspec.compile(text)
        assert_same_ast_but_spec_source(src, base_source())
        assert spec_source_value(ast.parse(src)).value == text
    # `"""` once stopped the layout pass: lines past 100 characters
    src = attnspec.compile(BASE.replace(" head_dim = 4\n", ' head_dim = 4 # """\n'))
    assert max(len(line) for line in src.split("\n")) <= 100


@cache
def base_source() -> str:
    return attnspec.compile(BASE)


def assert_same_ast_but_spec_source(src: str, reference: str) -> None:
    trees = [ast.parse(s) for s in (src, reference)]
    for tree in trees:
        spec_source_value(tree).value = None
    assert ast.dump(trees[0]) == ast.dump(trees[1])


def test_line_breaks_outside_comments():
    """CRLF files and form feeds are whitespace; other line breaks, quotes and backslashes
    outside comments are errors at their position."""
    assert_same_ast_but_spec_source(attnspec.compile(BASE.replace("\n", "\r\n")),
                                    base_source())
    assert_same_ast_but_spec_source(attnspec.compile(BASE.replace(" mask", "\x0c mask")),
                                    base_source())
    for bad in ["\u2028", "\x85", "\x0b", "\x1c", '"', "'", "\\", "`", "$", "@"]:
        with pytest.raises(AttnSpecError) as info:
            attnspec.compile(BASE.replace(" mask causal", f" mask {bad}causal"))
        assert str(info.value).startswith("<spec>:4:7: error[E102]: unexpected"), str(info.value)


def test_source_name_cannot_end_the_header_comment():
    """The source name is ascii()-quoted in the header comment, and elsewhere (messages that
    locate a spec line) only inside string literals."""
    reference = ast.dump(ast.parse(generate(build_text(BASE, "s.attn"))))
    for name in ["evil\nimport os.attn", "a\rb.attn", "a\u2028b.attn", "a\x85b.attn", "a'b\".attn"]:
        src = generate(build_text(BASE, name))
        header = src.split("\n", 1)[0]
        assert header == f"# Generated by attnspec from {ascii(name)} — do not edit."
        tree = ast.parse(src)
        wrapped = name.translate({ord(c): " " for c in "\t\n\x0b\x0c\r"})  # textwrap's
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                node.value = node.value.replace(name, "s.attn").replace(wrapped, "s.attn")
        assert ast.dump(tree) == reference


# --- numbers ------------------------------------------------------------------------------------
def spec_with(line: str) -> str:
    return BASE.replace(" mask causal", line)


def short(value) -> str | None:
    return value[:28] if isinstance(value, str) else None


@pytest.mark.parametrize("line, message", [
    (" mask q - k <= " + "9" * 5000, "integer literal of 5000 digits is too large"),
    (" scale = " + "1_" * 300 + "1", "integer literal of 301 digits is too large"),
    (" mask q - k <= 99999999999999999999", "is too large"),
    (" value_dim = " + " * ".join(["4503599627370495"] * 3), "overflows int64"),
    (" param t: float[heads, " + " * ".join(["4503599627370495"] * 3) + "] = zeros\n"
     " bias t[h, 0]", "overflows int64"),
    (" scale = 0.", "unexpected"),
    (" scale = .5", "unexpected"),
    (" scale = 0x10", "unexpected name `x10`"),
    (" scale = 1e", "unexpected name `e`"),
    (" mask q - k <= 4 // 0", "division by zero"),
], ids=short)
def test_bad_numbers_are_diagnosed(line, message):
    with pytest.raises(AttnSpecError) as info:
        attnspec.compile(spec_with(line))
    assert re.match(r"<spec>:\d+:\d+: error\[E\d{3}\]: ", str(info.value)), str(info.value)
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize("line, expected", [
    (" bias 1e999", 'float("inf")'),
    (" bias -1e999", '-float("inf")'),
    (" bias inf * 0.0", 'float("nan")'),
    (" bias 1e999 - 1e999", 'float("nan")'),
    (" bias 1e-999", "0.0"),
    (" bias 1." + "0" * 4000 + "1", "1.0"),
    (" bias " + "1" * 400 + ".0", 'float("inf")'),
    (" bias 1.0e" + "9" * 5000, 'float("inf")'),
    (" bias 1_0 * 1__0 * 0.5", "50.0"),
    (" scale = 1E+3", "1000.0"),
    (" bias 9007199254740991 * 0.0", "0.0"),
], ids=short)
def test_numbers_become_repr_literals(line, expected):
    """The literal's value, as repr() of a float or int, or float("inf"/"nan"); never the spec's
    spelling of it."""
    tree = ast.parse(attnspec.compile(spec_with(line)))
    spec_source_value(tree).value = None
    code = ast.unparse(tree).replace("'", '"')
    assert expected in code
    spelled = line.split("bias ")[-1].split("= ")[-1]
    assert spelled == expected or spelled not in code
    numbers = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and type(n.value) in (int, float)]
    assert all(math.isfinite(n) for n in numbers)


def test_literal_is_repr_of_real_numbers():
    values = [0, -1, 2**63 - 1, -(2**63), 0.0, -0.0, 5e-324, 1.7976931348623157e308, 0.1,
              -2.5e-10, float("inf"), float("-inf"), float("nan"), True, False]
    for value in values:
        text = literal(value)
        node = ast.parse(text, mode="eval").body
        if isinstance(node, ast.UnaryOp):
            assert isinstance(node.op, ast.USub)
            node = node.operand
        if isinstance(node, ast.Call):  # float("inf") / float("nan")
            assert dotted(node.func) == "float" and [a.value for a in node.args] in (["inf"],
                                                                                      ["nan"])
        else:
            assert isinstance(node, ast.Constant)
        got = eval(text, {"__builtins__": {}, "float": float})  # noqa: S307 — our own literal
        assert got == value or (math.isnan(got) and math.isnan(value))
        assert math.copysign(1, got) == math.copysign(1, value) or math.isnan(value)
    for bad in ["1", None, 1j, b"1"]:
        with pytest.raises(TypeError):
            literal(bad)


# --- loading runs nothing from the spec -----------------------------------------------------------
EVENTS: list[tuple] | None = None
HOOKED: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if EVENTS is not None and event.split(".")[0] in ("compile", "exec", "import", "open", "os",
                                                      "subprocess", "ctypes", "shutil"):
        EVENTS.append((event, args))




def test_loading_a_hostile_spec_runs_only_the_generated_module(tmp_path, monkeypatch):
    """While a spec full of code-like text loads: the only code executed that holds spec text is
    the generated module, where that text is in string constants only (never an identifier);
    other sources holding it are only parsed to ASTs (the layout pass) or symbol tables (the
    link step's `symtable`, under the name "<link>": no code object); no process starts, no
    file opens for writing outside attnspec's cache, and only torch and standard modules are
    imported."""
    global EVENTS
    if not HOOKED:  # audit hooks cannot be removed: added once, recording only inside this test
        sys.addaudithook(_audit)
        HOOKED.append(True)
    monkeypatch.chdir(tmp_path)
    src = attnspec.compile(KITCHEN)
    EVENTS = []
    try:
        mod = attnspec.load(KITCHEN)
    finally:
        events, EVENTS = EVENTS, None
    for event, args in events:
        if event == "compile" and MARKER in str(args[0]):
            assert args[1] in ("<unknown>", "<link>") or (args[1] == mod.__file__
                                                          and _text(args[0]) == src)
        elif event == "exec":
            code = args[0]
            if code.co_filename == mod.__file__:
                assert not any(MARKER in name for name in _code_names(code))
            else:
                assert not any(MARKER in str(c) for c in _code_constants(code))
        elif event == "open" and isinstance(args[0], str):
            writing = isinstance(args[1], str) and any(m in args[1] for m in "wax+")
            assert not writing or args[0].startswith(str(cache_dir())), args
        elif event == "import":
            assert str(args[0]).split(".")[0] in ("torch", "attnspec", "flash_attn", "importlib",
                                                  "warnings", "collections", "math", "difflib")
        assert not event.startswith(("os.system", "os.exec", "os.spawn", "os.posix_spawn",
                                     "subprocess", "ctypes", "shutil")), event
    assert [e for e, args in events if e == "exec" and args[0].co_filename == mod.__file__]
    assert not (tmp_path / MARKER).exists()
    assert mod.SPEC_SOURCE == KITCHEN
    assert_safe_module(src, KITCHEN)


def _text(source) -> str:
    return source.decode() if isinstance(source, bytes) else str(source)


def _code_objects(code):
    yield code
    for const in code.co_consts:
        if hasattr(const, "co_consts"):
            yield from _code_objects(const)


def _code_names(code) -> set[str]:
    return {n for c in _code_objects(code) for n in
            c.co_names + c.co_varnames + c.co_freevars + c.co_cellvars + (c.co_name,)}


def _code_constants(code) -> list:
    return [k for c in _code_objects(code) for k in c.co_consts if not hasattr(k, "co_consts")]


def test_hostile_names_run_and_match_the_interpreter():
    """The module with names `match case sys print nn` (and a let `exec`), a class named like
    another's param and an input named like another class, runs on every CPU backend and
    agrees with the eager interpreter."""
    module_ir, mod = build_text(KITCHEN, FILE), attnspec.load(KITCHEN)
    assert set(mod.match.BACKENDS) >= {"eager", "sdpa", "flex"} <= set(mod.nn.BACKENDS)
    assert_matches_interpreter(module_ir, mod, ["eager", "sdpa", "flex"])
