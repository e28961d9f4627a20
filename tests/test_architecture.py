"""The package's architecture, enforced: no import cycles, and the layers declared below.

Every import counts, at module level or inside a function (a function-level import is still a
dependency; it only hides a cycle from the interpreter). The rules:
  * no cycle among modules, and none among the package's parts (its subpackages and top-level
    modules);
  * each part imports only parts of lower layers (or itself), as `LAYERS` declares;
  * grpo/algo is pure tensor math: it imports torch and the standard library, nothing else of the
    package or outside it;
  * grpo/fast is optional: only grpo/train/plug.py (and cli.py, for the command's allocation
    policy) import it, inside `try: ... except ImportError`, and the package trains without it
    (tests/test_levers.py);
  * modules stay under 400 lines and functions under 60 (docs/architecture.md);
  * the layout's promises: one per-token loss for the update and `grpo explain`, the settings
    package's parts, the step's stages called in the algorithm's order.
The checks are functions of a source tree, so the tests below also run them on small planted
trees to show that each rule catches what it should.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "grpo"

# Lower layers first; a part may import parts of its own or lower layers only.
LAYERS = [
    {"errors"},
    {"device", "files", "compat", "algo", "sinks", "report"},
    {"config"},
    {"data", "explain"},
    {"rewards", "rollout"},
    {"envs"},
    {"models"},
    {"parallel", "demo"},
    {"fast"},
    {"train"},
    {"api"},
    {"cli"},
    {"__main__", "__init__"},
]
PURE = {"algo": {"torch"}}                  # part -> the only outside packages it may import
OPTIONAL = {"fast": {"train.plug", "cli"}}   # part -> the only modules that may import it (guarded)


# --------------------------------------------------------------------------------- the graph
def modules(root: Path) -> dict[str, Path]:
    """Dotted name relative to the package (`train.step`, `cli`, `rollout` for its __init__) -> file."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _is_package(root: Path, name: str) -> bool:
    return (root / Path(*name.split(".")) / "__init__.py").exists()


def _resolve(root: Path, known: dict, here: str, node: ast.ImportFrom | ast.Import, pkg: str) -> list[tuple]:
    """(target inside the package or None, outside top-level name or None, imported names) per import."""
    if isinstance(node, ast.Import):
        out = []
        for a in node.names:
            if a.name == pkg or a.name.startswith(pkg + "."):
                out.append((a.name[len(pkg) + 1:] or "__init__", None))
            else:
                out.append((None, a.name.split(".")[0]))
        return out
    if node.level == 0:
        if node.module == pkg or (node.module or "").startswith(pkg + "."):
            base = node.module[len(pkg) + 1:]
        else:
            return [(None, (node.module or "").split(".")[0])]
    else:
        here_pkg = here.split(".") if _is_package(root, here) or here == "__init__" else here.split(".")[:-1]
        if here == "__init__":
            here_pkg = []
        up = here_pkg[:len(here_pkg) - (node.level - 1)] if node.level > 1 else here_pkg
        base = ".".join(up + ([node.module] if node.module else []))
    targets = []
    for a in node.names:
        sub = f"{base}.{a.name}" if base else a.name
        targets.append((sub if sub in known else (base or "__init__"), None))
    return targets


def _with_packages(target: str, here: str, known: dict) -> set[str]:
    """`target` and the packages above it that importing it runs (their __init__), except those
    `here` sits in (already running when `here` runs)."""
    parts = target.split(".")
    out = {target}
    for i in range(1, len(parts)):
        anc = ".".join(parts[:i])
        if anc in known and not (here == anc or here.startswith(anc + ".")):
            out.add(anc)
    return out


def graph(root: Path, pkg: str = "grpo") -> dict[str, set[str]]:
    """module -> the modules of the package it imports (anywhere in its source), the __init__ of
    each package an import enters included."""
    known = modules(root)
    edges = {m: set() for m in known}
    for m, f in known.items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, _ in _resolve(root, known, m, node, pkg):
                    if target is not None and target in known:
                        edges[m] |= _with_packages(target, m, known) - {m}
    return edges


def outside_imports(root: Path, pkg: str = "grpo") -> dict[str, set[str]]:
    """module -> top-level names of the outside packages it imports."""
    known = modules(root)
    out = {m: set() for m in known}
    for m, f in known.items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out[m] |= {o for _, o in _resolve(root, known, m, node, pkg) if o}
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def part(module: str) -> str:
    return module.split(".")[0]


def part_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, ts in edges.items():
        out.setdefault(part(m), set()).update(part(t) for t in ts if part(t) != part(m))
    return out


# --------------------------------------------------------------------------------- the rules
def layer_violations(edges: dict[str, set[str]], layers=LAYERS) -> list[str]:
    level = {p: i for i, names in enumerate(layers) for p in names}
    bad = []
    for m, ts in sorted(edges.items()):
        for t in sorted(ts):
            a, b = part(m), part(t)
            if a not in level or b not in level:
                bad.append(f"{m} -> {t}: part {a if a not in level else b!r} has no layer in LAYERS")
            elif a != b and level[b] >= level[a]:
                bad.append(f"{m} -> {t}: layer {level[a]} ({a}) imports layer {level[b]} ({b})")
    return bad


def purity_violations(root: Path, pkg: str = "grpo", pure=PURE) -> list[str]:
    edges, outside, bad = graph(root, pkg), outside_imports(root, pkg), []
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for m in sorted(edges):
        allowed = pure.get(part(m))
        if allowed is None:
            continue
        bad += [f"{m} imports {t} (outside {part(m)}/)" for t in sorted(edges[m]) if part(t) != part(m)]
        bad += [f"{m} imports {o}" for o in sorted(outside[m] - stdlib - allowed)]
    return bad


def _guarded(tree: ast.AST, node: ast.AST) -> bool:
    """`node` sits in the body of a `try` that catches ImportError."""
    for t in ast.walk(tree):
        if isinstance(t, ast.Try) and any(n is node for s in t.body for n in ast.walk(s)):
            for h in t.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
                    return True
    return False


def optional_violations(root: Path, pkg: str = "grpo", optional=OPTIONAL) -> list[str]:
    known, bad = modules(root), []
    for m, f in known.items():
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, _ in _resolve(root, known, m, node, pkg):
                opt = part(target) if target else None
                if opt not in optional or part(m) == opt:
                    continue
                if m not in optional[opt]:
                    bad.append(f"{m} imports {target}: only {', '.join(sorted(optional[opt]))} may")
                elif not _guarded(tree, node):
                    bad.append(f"{m} imports {target} outside `try: ... except ImportError`")
    return bad


def size_violations(root: Path, module_limit: int = 400, function_limit: int = 60) -> list[str]:
    """Modules longer than `module_limit` lines and functions (decorators included) longer than
    `function_limit`, as docs/architecture.md sets them (bench/size_report.py prints the longest)."""
    out = []
    for f in sorted(root.rglob("*.py")):
        text = f.read_text()
        name = f.relative_to(root).as_posix()
        if len(text.splitlines()) > module_limit:
            out.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - first + 1 > function_limit:
                    out.append(f"{name}:{node.name}: {node.end_lineno - first + 1} lines")
    return out


# --------------------------------------------------------------------------------- on grpo
def test_no_import_cycles_among_modules():
    assert cycles(graph(ROOT)) == []


def test_no_import_cycles_among_parts():
    assert cycles(part_graph(graph(ROOT))) == []


def test_every_part_imports_only_lower_layers():
    assert layer_violations(graph(ROOT)) == []


def test_the_math_imports_torch_only():
    assert purity_violations(ROOT) == []


def test_fast_is_imported_in_one_guarded_place():
    assert optional_violations(ROOT) == []


def test_the_graph_sees_function_level_and_relative_imports():
    edges = graph(ROOT)
    assert "rewards.reward_model" in edges["rewards.scoring"]           # imported inside a function
    assert "algo.losses" in edges["train.update"] and "models.logprobs" in edges["train.update"]
    assert "fast.lean_decode" in edges["train.plug"]


def test_modules_and_functions_stay_within_the_limits():
    assert size_violations(ROOT) == []


def test_explain_and_the_update_share_one_per_token_loss():
    edges = graph(ROOT)
    assert "algo.token_loss" in edges["train.update"] and "algo.token_loss" in edges["explain.compute"]


def test_the_settings_package_reads_as_its_parts():
    edges = graph(ROOT)
    assert {"config.fields", "config.presets", "config.checks", "config.resolve", "config.levers"} <= set(edges)
    assert not {e for e in edges["config.levers"] if not e.startswith("errors")}      # Levers imports nothing else
    assert "config.resolve" not in edges["config.checks"] and "config.checks" in edges["config.resolve"]


def test_the_step_calls_its_stages_in_the_algorithms_order():
    """train_step reads sample -> advantages -> reference -> update -> metrics, each a named call."""
    tree = ast.parse((ROOT / "train" / "step.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train_step")
    calls = [n.func.id for n in sorted((n for n in ast.walk(fn) if isinstance(n, ast.Call)
                                        and isinstance(n.func, ast.Name)), key=lambda n: (n.lineno, n.col_offset))]
    stages = ["sample_groups", "advantages", "reference", "update_policy", "step_metrics"]
    assert [c for c in calls if c in stages] == stages


# --------------------------------------------------------------------------------- planted trees
def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        (d / "__init__.py").touch()
    return root


def test_a_planted_long_module_and_function_are_found(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    root = plant(tmp_path, {"m.py": "@staticmethod\ndef f():\n" + body + "\n", "n.py": "x = 1\n" * 401,
                            "ok.py": "def g():\n    return 1\n"})
    assert size_violations(root) == ["m.py:f: 62 lines", "n.py: 401 lines"]


def test_a_planted_cycle_is_found(tmp_path):
    root = plant(tmp_path, {"a.py": "from . import b\n", "b.py": "def f():\n    from .c import x\n",
                            "c.py": "from .a import y\n", "d.py": "from . import a\n"})
    assert cycles(graph(root, "pkg")) == [["a", "b", "c"]]


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    # importing sub.leaf runs sub/__init__.py, which imports sub.mid, which imports top
    root = plant(tmp_path, {"top.py": "def f():\n    from .sub import leaf\n", "sub/leaf.py": "",
                            "sub/mid.py": "from .. import top\n", "sub/__init__.py": "from . import mid\n"})
    assert cycles(graph(root, "pkg")) == [["sub", "sub.mid", "top"]]


def test_a_planted_layer_violation_is_found(tmp_path):
    root = plant(tmp_path, {"low/m.py": "def f():\n    from ..high import n\n", "high/n.py": "from ..low import m\n"})
    bad = layer_violations(graph(root, "pkg"), layers=[{"low"}, {"high"}, {"__init__"}])
    assert bad == ["low.m -> high: layer 0 (low) imports layer 1 (high)",         # high/__init__ runs too
                   "low.m -> high.n: layer 0 (low) imports layer 1 (high)"]
    assert cycles(part_graph(graph(root, "pkg"))) == [["high", "low"]]


def test_impure_math_is_found(tmp_path):
    root = plant(tmp_path, {"algo/x.py": "import torch\nimport transformers\nfrom ..io import y\n", "io/y.py": ""})
    assert purity_violations(root, "pkg", {"algo": {"torch"}}) == ["algo.x imports io (outside algo/)",
                                                                    "algo.x imports io.y (outside algo/)",
                                                                    "algo.x imports transformers"]


@pytest.mark.parametrize("text, expected", [
    ("from ..fast import k\n", "core.m imports fast.k: only train.w may"),
    ("try:\n    from ..fast import k\nexcept ValueError:\n    pass\n", "core.m imports fast.k: only train.w may"),
])
def test_an_unguarded_or_misplaced_optional_import_is_found(tmp_path, text, expected):
    root = plant(tmp_path, {"core/m.py": text, "fast/k.py": "",
                            "train/w.py": "from ..fast import k\n"})
    bad = optional_violations(root, "pkg", {"fast": {"train.w"}})
    assert expected in bad
    assert "train.w imports fast.k outside `try: ... except ImportError`" in bad
    guarded = plant(tmp_path / "ok", {"fast/k.py": "",
                                      "train/w.py": "try:\n    from ..fast import k\nexcept ImportError:\n    k = None\n"})
    assert optional_violations(guarded, "pkg", {"fast": {"train.w"}}) == []
