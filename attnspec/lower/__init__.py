"""Lowering, backend-neutral: the analysis of mask and score structure (`analysis`) and the
plan stage (`module.lower_module`). Backends and their plans live in `attnspec.backends`."""
