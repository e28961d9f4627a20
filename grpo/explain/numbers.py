"""How `grpo explain` writes a number: the article's worked example's way."""

from __future__ import annotations


def fmt(x: float) -> str:
    """7 significant digits; float noise below 1e-10 (0.8 - 0.7 = 0.10000000000000009) is not shown."""
    return f"{round(float(x), 10) + 0.0:.7g}"


def p(x: float) -> str:
    """A factor in a product: negatives in parentheses, `0.99 * (-0.1)`."""
    return f"({fmt(x)})" if fmt(x).startswith("-") else fmt(x)


def signed_sum(values) -> str:
    """`a + b - c`: a sum written with its signs."""
    out = fmt(values[0])
    for v in values[1:]:
        out += f" - {fmt(-v)}" if fmt(v).startswith("-") else f" + {fmt(v)}"
    return out
