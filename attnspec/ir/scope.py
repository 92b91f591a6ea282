"""Name tables the builder and checker share: settings, builtins, reserved identifiers."""

from __future__ import annotations

import builtins
import keyword
from pathlib import Path

from attnspec.cache import cached_json
from attnspec.runtime import source

INT_SETTINGS = ("heads", "kv_heads", "head_dim", "value_dim", "dim", "context_dim")
FLOAT_SETTINGS = ("scale", "dropout")
BOOL_SETTINGS = ("qkv_bias", "out_bias", "sinks")
ENUM_SETTINGS = ("qk_norm", "backend")
ALL_SETTINGS = INT_SETTINGS + FLOAT_SETTINGS + BOOL_SETTINGS + ENUM_SETTINGS


def enum_choices(name: str) -> tuple[str, ...]:
    """The values an enum setting takes, its default first. Backend names come from the backend
    registry, the one place they are spelled (imported here late: the registry builds on the IR).

    >>> enum_choices("qk_norm")
    ('none', 'rms')
    """
    if name == "backend":
        from attnspec.backends import CHOICES

        return CHOICES
    return {"qk_norm": ("none", "rms")}[name]

MUP_INT_SETTINGS = ("base_dim", "base_head_dim")
MUP_FLOAT_SETTINGS = ("attn_mult", "init_std")
MUP_BOOL_SETTINGS = ("zero_query",)
ALL_MUP_SETTINGS = MUP_INT_SETTINGS + MUP_FLOAT_SETTINGS + MUP_BOOL_SETTINGS

KEYWORDS = frozenset(
    "attention let input param tokens pattern mask bias score position mup true false inf in"
    .split()
)
INDEX_NAMES = ("b", "h", "q", "k")
SEQ_LEN_NAMES = ("q_len", "kv_len")

# name -> (min args, max args); None = variadic upper bound
BUILTINS = {
    "abs": (1, 1), "min": (2, None), "max": (2, None), "clamp": (3, 3), "where": (3, 3),
    "exp": (1, 1), "exp2": (1, 1), "log": (1, 1), "log2": (1, 1), "sqrt": (1, 1),
    "tanh": (1, 1), "sigmoid": (1, 1), "floor": (1, 1), "ceil": (1, 1),
    "alibi_slope": (1, 1), "t5_bucket": (4, 4),
}
INTRINSIC_MACROS = ("t5",)  # expanded by the builder (they declare params)

INIT_KINDS = {"zeros": 0, "ones": 0, "normal": 1, "uniform": 2, "alibi_slopes": 0}
POSITION_KINDS = ("rope", "sinusoidal", "learned")
ROPE_ARGS = ("base", "dims", "interleaved", "positions", "freqs")


def runtime_names() -> frozenset[str]:
    """The names the runtime package binds at top level (`attnspec.runtime.source`), kept in
    attnspec's cache: parsing the runtime costs more than checking a spec.

    >>> "_flex_run" in runtime_names()
    True
    """
    names = cached_json("runtime-names", source.digest(),
                        lambda: sorted(source.top_level_names()))
    return frozenset(names)


_RUNTIME_NAMES = runtime_names()
# Names a generated module already uses for its own attributes, arguments and locals, and the
# public names it imports or defines at module level (torch, math, ...: see `runtime_names`).
RESERVED = frozenset(
    """self q k v x b h context sizes backend overrides training forward parameters
    buffers children modules state_dict to cuda cpu float half double bfloat16 type eval train
    apply zero_grad extra_repr add_module register_buffer register_parameter register_module
    load_state_dict named_parameters named_buffers named_children named_modules requires_grad_
    get_parameter get_buffer get_submodule share_memory dump_patches call_super_init
    q_proj k_proj v_proj o_proj mup_param_groups settings score inputs cp
    cu_seqlens max_seqlen return_lse
    """.split()
) | frozenset(ALL_SETTINGS) | frozenset(ALL_MUP_SETTINGS) | frozenset(
    name for name in _RUNTIME_NAMES if not name.startswith("_"))


def identifier_problem(name: str) -> str | None:
    """Why `name` may not become a Python identifier, or None when it may (contract §2).

    >>> identifier_problem("class")
    '`class` is a Python keyword'
    >>> identifier_problem("doc") is None
    True
    """
    if not name.isidentifier() or not name.isascii():
        return f"`{name}` is not a valid Python identifier"
    if keyword.iskeyword(name):
        return f"`{name}` is a Python keyword"
    if name.startswith("__"):
        return f"`{name}` starts with `__`"
    return None


# Identifiers the generated module itself defines (codegen writes no others besides `_t<N>`
# temporaries): spec names must avoid them, per kind of name.
GENERATED_LOCALS = frozenset(
    "self q k v x context sizes B S Sq Sk dtype b h qi ki score mask shape probs out groups "
    "q_len kv_len q_angles k_angles allowed options bias gqa args classes block_mask mask_mod "
    "lse library slopes unexpected total "
    # the flex/auto methods and functions that inputs are passed to (tests/test_codegen_safety.py
    # finds every local of the functions an input reaches and checks that it is listed here)
    "captured choice enable_gqa fast kernel kernel_options kv_idx q_idx score_mod "
    "score_dtype return_lse with_lse "
    # context parallelism: the plan, this rank's rows and the choices `_attend_cp` tries
    "cp q_pos rows n_rows length choices "
    # the edges backend: each edge's key row (one graph over B·Sk keys for per-row edge lists)
    "kv_rows".split())
# Module-level names: SPEC_SOURCE, and every name the runtime binds at top level (a standalone
# module inlines those it reaches, an import-linked one imports them), read from the runtime's
# source (`runtime_names`: ast, no torch).
GENERATED_MODULE_NAMES = frozenset({"SPEC_SOURCE"}) | _RUNTIME_NAMES


def backend_rooms() -> tuple[str, ...]:
    """The backends' names, read from their rooms (`attnspec/backends/<name>/lowering.py`)
    without importing them: the registry builds on the IR (a test checks both agree).

    >>> "eager" in backend_rooms()
    True
    """
    root = Path(__file__).resolve().parent.parent / "backends"
    return tuple(sorted(p.name for p in root.iterdir() if (p / "lowering.py").is_file()))


GENERATED_CLASS_NAMES = frozenset(
    "SETTINGS GROUPS BACKENDS AUTO AUTO_CPU AUTO_CUDA UNSUPPORTED PATTERNS backend forward "
    "_attend _attend_auto _auto_cuda last_backend _mask _score _mup_init "
    "CP_BACKENDS CP_AUTO_CPU CP_AUTO_CUDA CP_UNSUPPORTED CP_BALANCE context_parallel_plan "
    "_attend_cp LSE_BACKENDS "
    "mup_param_groups q_proj k_proj v_proj o_proj "
    # nn.Module habits: re-initialisation and the validated backend property's state
    "reset_parameters _init_params _backend _refused_backends".split()) | frozenset(
    f"_attend_{name}" for name in backend_rooms())  # each backend's method
PYTHON_BUILTINS = frozenset(dir(builtins))

# torch.nn.Module's public attributes (torch 2.5 to 2.13; no torch import here, a test compares
# with the installed torch): a param of the same name cannot be registered (`compile`, `xpu`).
MODULE_ATTRIBUTES = frozenset(
    """T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda
    double dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter
    get_submodule half ipu load_state_dict modules mtia named_buffers named_children
    named_modules named_parameters parameters register_backward_hook register_buffer
    register_forward_hook register_forward_pre_hook register_full_backward_hook
    register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter
    register_state_dict_post_hook register_state_dict_pre_hook requires_grad_ set_extra_state
    set_submodule share_memory state_dict to to_empty train training type xpu zero_grad
    """.split())

# Module-level functions generated per attention: PREFIX + the attention's name.
ATTENTION_FUNCTION_PREFIXES = ("_mask_mod_", "_block_lists_", "_flex_", "_decode_flex_",
                               "_decode_mask_")
# Attention names whose functions would replace a runtime helper (`run`: `_flex_run`).
_PREFIXED_MODULE_NAMES = frozenset(
    name[len(prefix):] for name in GENERATED_MODULE_NAMES for prefix in ATTENTION_FUNCTION_PREFIXES
    if name.startswith(prefix))

RESERVED_BY_KIND = {
    "attention": GENERATED_MODULE_NAMES | PYTHON_BUILTINS | _PREFIXED_MODULE_NAMES,
    "input": RESERVED | GENERATED_LOCALS | GENERATED_MODULE_NAMES | PYTHON_BUILTINS,
    "param": RESERVED | GENERATED_CLASS_NAMES | MODULE_ATTRIBUTES,
    "group": frozenset(),
}
