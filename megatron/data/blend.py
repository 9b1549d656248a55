"""The `--data-path` syntax: `prefix` or `w1 prefix1 w2 prefix2 ...` (Megatron's blend)."""
from __future__ import annotations


def parse_data_path(data_path) -> list[tuple[float, str]]:
    """[(weight, prefix), ...]; weights are 1.0 when none are given."""
    items = list(data_path)
    if not items:
        return []
    if len(items) == 1:
        return [(1.0, items[0])]
    try:
        float(items[0])
    except ValueError:
        return [(1.0, p) for p in items]
    if len(items) % 2:
        raise ValueError(f"--data-path {' '.join(items)}: weights and prefixes must alternate "
                         f"(w1 prefix1 w2 prefix2 ...); got an odd number of items")
    pairs = []
    for w, prefix in zip(items[0::2], items[1::2]):
        try:
            weight = float(w)
        except ValueError as e:
            raise ValueError(f"--data-path: expected a weight before {prefix!r}, got {w!r}") from e
        if weight < 0:
            raise ValueError(f"--data-path: weight {w} of {prefix} is negative")
        pairs.append((weight, prefix))
    return pairs


def megatron_blend(data_path):
    """megatron-core's (prefixes, weights or None) blend tuple."""
    pairs = parse_data_path(data_path)
    weighted = len(pairs) * 2 == len(data_path)  # every prefix came with a weight
    return [p for _, p in pairs], ([w for w, _ in pairs] if weighted else None)
