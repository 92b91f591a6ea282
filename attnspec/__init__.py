"""attnspec: write attention once, declaratively, in a `.attn` file; compile it to a standalone
PyTorch module verified against an independent eager interpreter.

Example:
    >>> import attnspec
    >>> mod = attnspec.load('''
    ... attention Causal {
    ...     heads = 4
    ...     head_dim = 16
    ...     mask causal
    ... }''')
    >>> attn = mod.Causal()
    >>> import torch
    >>> q = k = v = torch.randn(1, 4, 10, 16)
    >>> attn(q, k, v).shape
    torch.Size([1, 4, 10, 16])
"""

from __future__ import annotations

import builtins
import hashlib
import linecache
import sys
import threading
import types
from pathlib import Path

from attnspec.errors import AttnSpecError, UnsupportedBackendError

__version__ = "0.1.0"
__all__ = ["AttnSpecError", "UnsupportedBackendError", "build", "compile", "load", "cp_plan",
           "cp_reduce_param_grads", "kv_cache_append", "__version__"]


def __getattr__(name: str):
    # `attnspec.kv_cache_append` imports torch, so only on first use: `attnspec compile` must
    # not import torch.
    if name == "kv_cache_append":
        from attnspec.runtime.kv_cache import kv_cache_append

        return kv_cache_append
    raise AttributeError(f"module 'attnspec' has no attribute {name!r}")


def build(path_or_text: str | Path):
    """The checked IR (`attnspec.ir.nodes.ModuleIR`) of a spec file or spec text."""
    from attnspec.compiler import as_source
    from attnspec.compiler import build as _build

    return _build(as_source(path_or_text))


def compile(path_or_text: str | Path, backend: str | None = None,  # noqa: A001
            link: str = "standalone") -> str:
    """The generated module's Python source for a spec file or spec text; `link="import"`
    imports the runtime helpers from `attnspec.runtime` instead of inlining them."""
    from attnspec.compiler import as_source, compile_source

    return compile_source(as_source(path_or_text), backend, link)


def load(path_or_text: str | Path, backend: str | None = None,
         link: str = "standalone") -> types.ModuleType:
    """Compile a spec in memory and return the module, the same as importing the file that
    `attnspec compile` writes.

    The module is named after a digest of its generated code (so of the spec text, its source
    name and `backend`) and registered in `sys.modules` under that name. Like an import, a
    second load of the same code returns the same module: its classes stay the ones that pickle
    finds under that name, so `torch.save(model)` and `pickle.dumps(model)` work for modules of
    every load, and a process that loads the same spec can unpickle them."""
    from attnspec.compiler import as_source, compile_source

    source = as_source(path_or_text)
    code = compile_source(source, backend, link)
    digest = hashlib.sha256(code.encode()).hexdigest()
    with _LOAD_LOCK:  # one module per code, also when threads load the same spec at once
        module = _LOADED.get(digest)
        if module is None:
            module = _LOADED[digest] = _execute(code, source.name, digest)
        # Registered like an imported module: pickle and torch.compile (flex) look modules up
        # by name (again on every load, in case it was removed from sys.modules).
        sys.modules[module.__name__] = module
    return module


def cp_plan(group_or_mesh, seq_len: int, balance="head_tail", documents=None):
    """A context-parallel plan: which positions of a `seq_len` sequence each rank of
    `group_or_mesh` (a ProcessGroup, a 1-D DeviceMesh, or None: the default group) holds.
    Pass it as `cp=plan` to any generated module; `plan.shard(t, dim)` / `plan.unshard(t,
    dim)` cut and rejoin sequences. `balance`: "head_tail", "none", "documents" (with
    `documents` ids [S]) or W position lists; a generated class's CP_BALANCE suits its mask.
    The same function is in every generated module (docs/parallel.md).

    Example (on every rank of a torch.distributed job)::

        plan = attnspec.cp_plan(mesh["cp"], 8192, balance=Attention.CP_BALANCE)
        out_local = attention(plan.shard(q, 2), plan.shard(k, 2), plan.shard(v, 2), cp=plan)
    """
    from attnspec.runtime.cp import cp_plan as make

    return make(group_or_mesh, seq_len, balance, documents)


def cp_reduce_param_grads(module, plan) -> None:
    """Sum every parameter gradient of `module` over the plan's group, in place: under context
    parallelism each rank holds only its rows' part (docs/parallel.md).

    Example (after backward, when no FSDP/DDP wrapper over the cp ranks does it)::

        loss.backward()
        attnspec.cp_reduce_param_grads(model, plan)
    """
    from attnspec.runtime.cp import cp_reduce_param_grads as reduce

    reduce(module, plan)


# Modules `load` made, by the full digest of their code (a name carries only part of it).
_LOADED: dict[str, types.ModuleType] = {}
_LOAD_LOCK = threading.Lock()


def _execute(code: str, source_name: str, digest: str) -> types.ModuleType:
    """A new module running `code` (generated by attnspec: a spec is data; no spec text runs
    as code)."""
    stem = Path(source_name).stem if source_name != "<spec>" else "spec"
    short = digest[:12]
    name = "_attnspec_" + "".join(c if c.isalnum() or c == "_" else "_" for c in stem) + short
    module = types.ModuleType(name)
    module.__file__ = f"<attnspec:{source_name}:{short}>"
    # The source is findable like a file's (tracebacks show it; torch.compile then gives each
    # function its own compile cache instead of one shared wrapper's).
    linecache.cache[module.__file__] = (len(code), None, code.splitlines(True), module.__file__)
    # Registered before it runs, as an import would be.
    sys.modules[name] = module
    exec(builtins.compile(code, module.__file__, "exec"), module.__dict__)
    return module
