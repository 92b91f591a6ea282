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
import types
from pathlib import Path

from attnspec.errors import AttnSpecError, UnsupportedBackendError

__version__ = "0.1.0"
__all__ = ["AttnSpecError", "UnsupportedBackendError", "build", "compile", "load", "__version__"]


def build(path_or_text: str | Path):
    """The checked IR (`attnspec.ir.nodes.ModuleIR`) of a spec file or spec text."""
    from attnspec.compiler import as_source
    from attnspec.compiler import build as _build

    return _build(as_source(path_or_text))


def compile(path_or_text: str | Path, backend: str | None = None) -> str:  # noqa: A001
    """The generated module's Python source for a spec file or spec text."""
    from attnspec.compiler import as_source, compile_source

    return compile_source(as_source(path_or_text), backend)


def load(path_or_text: str | Path, backend: str | None = None) -> types.ModuleType:
    """Compile a spec in memory and return the module, the same as importing the file that
    `attnspec compile` writes."""
    from attnspec.compiler import as_source, compile_source

    source = as_source(path_or_text)
    code = compile_source(source, backend)
    stem = Path(source.name).stem if source.name != "<spec>" else "spec"
    digest = hashlib.sha256(code.encode()).hexdigest()[:12]
    name = "_attnspec_" + "".join(c if c.isalnum() or c == "_" else "_" for c in stem) + digest
    module = types.ModuleType(name)
    module.__file__ = f"<attnspec:{source.name}:{digest}>"
    # The source is findable like a file's (tracebacks show it; torch.compile then gives each
    # function its own compile cache instead of one shared wrapper's).
    linecache.cache[module.__file__] = (len(code), None, code.splitlines(True), module.__file__)
    # Registered like an imported module: torch.compile (flex) looks modules up by name.
    sys.modules[name] = module
    # Executes the module attnspec generated (a spec is data; no spec text runs as code).
    exec(builtins.compile(code, module.__file__, "exec"), module.__dict__)
    return module
