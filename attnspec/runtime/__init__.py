"""The runtime of generated modules: an ordinary package that imports only torch and the
standard library, never the compiler.

A module that `attnspec compile` writes reaches these helpers in one of two ways
(`attnspec.codegen.link`): by default it inlines exactly the top-level statements it reaches
(standalone: it imports only torch and the standard library), or with `--link import` it
imports them from here. Nothing is imported eagerly: `attnspec compile` must not import torch,
and it reads these files as text only.

MODULES lists the submodules in the order a standalone module inlines them.

Example:
    >>> from attnspec.runtime import MODULES
    >>> MODULES[0]
    'errors'
"""

MODULES = ("errors", "checks", "groups", "packed", "edges", "positions", "kv_cache", "core",
           "sdpa", "flex", "flash", "cp")
