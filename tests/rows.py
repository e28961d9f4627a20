"""Comparing two runs' metrics.jsonl rows, shared by the tests that check two ways of running give
the same run."""

from __future__ import annotations

import pytest


def assert_rows_match(a: list[dict], b: list[dict], keys, what: str, rel: float = 1e-5, abs: float = 1e-6) -> None:
    """Same steps, and at each step every key in `keys` equal within tolerance (or None in both)."""
    assert len(a) > 0 and [r["step"] for r in a] == [r["step"] for r in b], what
    for ra, rb in zip(a, b):
        for k in keys:
            if ra[k] is None or rb[k] is None:
                assert ra[k] is None and rb[k] is None, f"{what}: step {ra['step']} {k}"
            else:
                assert ra[k] == pytest.approx(rb[k], rel=rel, abs=abs), f"{what}: step {ra['step']} {k}"
