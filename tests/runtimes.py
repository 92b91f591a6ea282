"""The runtime files that codegen inlines into generated modules, loaded as modules of their own
for the tests (they are tested standalone, then inlined verbatim)."""

import importlib.util
import sys
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent / "attnspec" / "codegen" / "templates"


def load_runtime(filename: str):
    """templates/<filename> (e.g. "flex_runtime.py") as a module."""
    spec = importlib.util.spec_from_file_location(f"attnspec_{Path(filename).stem}",
                                                  TEMPLATES / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # torch.compile looks functions' modules up by name
    spec.loader.exec_module(module)
    return module
