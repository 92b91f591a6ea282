"""Token groups (`tokens { ... }`): each group's positions, and membership tests.

Example:
    >>> _token_groups((("image", 3), ("text", None)), None, 5, 5)
    {'image': range(0, 3), 'text': range(3, 5)}
"""

import torch


def _token_groups(declared: tuple[tuple[str, int | None], ...], sizes: dict | None, q_len: int,
                  kv_len: int) -> dict[str, range]:
    """{group: range of its positions}. `declared` holds (name, size or None for `*`); `sizes`
    gives `*` sizes at call time; one `*` group left out takes the remaining length."""
    names = [name for name, _ in declared]
    if sizes is not None and not isinstance(sizes, dict):
        raise ValueError(f"sizes: expected a dict of group sizes, got {type(sizes).__name__}")
    sizes = dict(sizes or {})
    unknown = sorted(set(sizes) - set(names))
    if unknown:
        import difflib  # only on this error path

        close = [c for u in unknown for c in difflib.get_close_matches(str(u), names, n=1)]
        hint = f" (did you mean {close[0]!r}?)" if len(unknown) == 1 and close else ""
        raise ValueError(f"sizes: unknown token group(s) {unknown}{hint}; groups: {names}")
    resolved = {}
    for name, size in declared:
        given = sizes.get(name)
        if given is not None:
            if isinstance(given, bool) or not isinstance(given, int) or given < 0:
                raise ValueError(f"sizes[{name!r}] must be a non-negative integer, got {given!r}")
            if size is not None and given != size:
                raise ValueError(f"sizes[{name!r}]: the group has fixed size {size}, got {given}")
        resolved[name] = size if given is None else given
    if q_len != kv_len:
        raise ValueError(f"token groups need q_len == kv_len, got {q_len} and {kv_len}")
    missing = [name for name in names if resolved[name] is None]
    if len(missing) > 1:
        raise ValueError(f"sizes: give the sizes of the `*` groups {missing} (all but one)")
    if missing:
        rest = q_len - sum(s for s in resolved.values() if s is not None)
        if rest < 0:
            raise ValueError(f"token groups: fixed sizes exceed the sequence length {q_len}")
        resolved[missing[0]] = rest
    total = sum(resolved.values())
    if total != q_len:
        raise ValueError(
            f"token groups: sizes {resolved} add up to {total}, but the sequence has {q_len} tokens"
        )
    ranges, start = {}, 0
    for name in names:
        ranges[name] = range(start, start + resolved[name])
        start += resolved[name]
    return ranges


def _in_group(x: torch.Tensor, positions: range) -> torch.Tensor:
    """x in GROUP: positions.start <= x < positions.stop."""
    return (x >= positions.start) & (x < positions.stop)
