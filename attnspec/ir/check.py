"""Semantic checks on the IR (run after build): identifier safety, index ranges, int32 range,
patterns, mode requirements, setting values. Returns diagnostics; never raises."""

from __future__ import annotations

from attnspec.errors import Diagnostic
from attnspec.ir import nodes as ir


def check_module(module: ir.ModuleIR) -> list[Diagnostic]:
    return []
