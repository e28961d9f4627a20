"""Sizes of a package's pieces: the longest modules and functions, and those over the limits.

    python bench/size_report.py                      # this checkout's grpo/
    python bench/size_report.py OLD/grpo grpo        # two trees side by side (e.g. a former commit)

A module's size is its line count; a function's is the lines from its `def` (decorators
included) to its last line. Limits: modules 400 lines, functions 60 (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

MODULE_LIMIT, FUNCTION_LIMIT = 400, 60


def sizes(root: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """([(lines, module)], [(lines, module:function)]), longest first."""
    mods, funcs = [], []
    for f in sorted(root.rglob("*.py")):
        text = f.read_text()
        name = str(f.relative_to(root.parent))
        mods.append((len(text.splitlines()), name))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                funcs.append((node.end_lineno - first + 1, f"{name}:{node.name}"))
    return sorted(mods, reverse=True), sorted(funcs, reverse=True)


def report(root: Path, top: int) -> None:
    mods, funcs = sizes(root)
    print(f"## {root}: {len(mods)} modules, {sum(n for n, _ in mods)} lines, {len(funcs)} functions")
    print(f"longest modules (limit {MODULE_LIMIT}):")
    for n, name in mods[:top]:
        print(f"  {n:5d}  {name}")
    print(f"longest functions (limit {FUNCTION_LIMIT}):")
    for n, name in funcs[:top]:
        print(f"  {n:5d}  {name}")
    over_m = [m for m in mods if m[0] > MODULE_LIMIT]
    over_f = [f for f in funcs if f[0] > FUNCTION_LIMIT]
    print(f"over the limits: {len(over_m)} modules, {len(over_f)} functions")
    for n, name in over_m + over_f:
        print(f"  {n:5d}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("roots", nargs="*", default=[str(Path(__file__).resolve().parents[1] / "grpo")])
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    for r in args.roots:
        report(Path(r), args.top)
        print()


if __name__ == "__main__":
    main()
