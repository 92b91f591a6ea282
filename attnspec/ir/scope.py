"""Name tables the builder and checker share: settings, builtins, reserved identifiers."""

from __future__ import annotations

import builtins
import keyword

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

# Names a generated module already uses for its own attributes, arguments and locals.
RESERVED = frozenset(
    """self q k v x b h context sizes backend overrides torch math training forward parameters
    buffers children modules state_dict to cuda cpu float half double bfloat16 type eval train
    apply zero_grad extra_repr add_module register_buffer register_parameter register_module
    load_state_dict named_parameters named_buffers named_children named_modules requires_grad_
    get_parameter get_buffer get_submodule share_memory dump_patches call_super_init
    q_proj k_proj v_proj o_proj mup_param_groups settings score inputs
    """.split()
) | frozenset(ALL_SETTINGS) | frozenset(ALL_MUP_SETTINGS)


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
    "lse library slopes unexpected "
    # the flex/auto methods and functions that inputs are passed to (tests/test_codegen_safety.py
    # finds every local of the functions an input reaches and checks that it is listed here)
    "captured choice enable_gqa fast kernel kernel_options kv_idx q_idx score_mod "
    "score_dtype".split())
GENERATED_MODULE_NAMES = frozenset(
    "torch math collections SPEC_SOURCE _check_backend _check_overrides _int_setting "
    "_float_setting _check_heads _param_shape _check_rope_dims _check_tensor _same_dtype "
    "_seq_len _check_no_sizes _token_groups _in_group _Edges _edge_tables _alibi_slopes "
    "_alibi_slope _alibi_tensor _ALIBI_TENSORS _t5_bucket _t5_boundaries _rms_norm _rope_angles "
    "_rope _sinusoidal "
    "_compute_dtype "
    "_index_grids _softmax_rows _read _select_backend UnsupportedBackendError _sdpa _sdpa_masked "
    "_runs _sdpa_patterns UnsupportedInputError _SMALL_DENSE importlib warnings "
    "_same_device _check_weight _autocast_on _check_unexpected".split()
) | frozenset(  # the runtimes inlined from codegen/templates/*_runtime.py (a test keeps this true)
    "_BLOCK _num_blocks _block_bounds _classes _band_rect _band_blocks _block_min_max "
    "_segment_blocks _key_length_blocks _key_padding_blocks _prefix_blocks _combine _ordered "
    "_BlockMask _FLEX_BLOCK _FLEX_COMPILED _flex_attention _create_block_mask "
    "_noop_mask _AuxRequest _flex_runner _flex_with_lse _flex_no_cpu_backward _FLEX_FLASH_FAILED "
    "_FLEX_FLASH_OPTIONS _FLEX_MASKS _FLEX_MASKS_KEPT _flex_flash_usable _flex_run "
    "_FLEX_SMALL_OPTIONS _FLEX_SMALL_TILES _FLEX_TRAINING_OPTIONS _flash_remembered "
    "_FLASH_REMEMBERED _flash_id_runs "
    "_spread _FLEX_FLASH_FOUND _structured_block_mask _cached_block_mask _general_block_mask "
    "_built_lists "
    "_FLEX_BUILD_FAILED "
    "_block_lists "
    "_block_mask_of _FLASH_DTYPES "
    "_FLASH_MAX_HEAD_DIM _FLASH_MIN_HEAD_DIM _FLEX_MIN_HEAD_DIM _pad_head_dim _FLASH_LIBRARIES "
    "_FlashLibrary "
    "_flash_library _find_flash _flash_check _flash_backward_problems "
    "_FLASH4_BACKWARD_MIN_HEAD_DIM _flex_needs_backward "
    "_flash_check_documents _flash_window _flash_runs "
    "_flash_keep_keys _flash_pack _flash_empty_rows _flash_attend".split())
GENERATED_CLASS_NAMES = frozenset(
    "SETTINGS GROUPS BACKENDS AUTO AUTO_CPU AUTO_CUDA UNSUPPORTED PATTERNS backend forward "
    "_attend _attend_eager "
    "_attend_sdpa _attend_flex _attend_flash _attend_auto _auto_cuda last_backend _mask _score "
    "_mup_init "
    "mup_param_groups q_proj k_proj v_proj o_proj".split())
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
ATTENTION_FUNCTION_PREFIXES = ("_mask_mod_", "_block_lists_", "_flex_")
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
