"""Reward specs (`NAME[:WEIGHT]`) and the user's own reward functions (`module:function`,
`path/to/file.py:function`), with one-line errors for every way they can be wrong."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable

from ..config import ConfigError


def parse_spec(spec: str, names: tuple | list | None = None) -> tuple[str, float]:
    """`NAME[:WEIGHT]` -> (NAME, weight). The text after the last colon is a weight only when it
    parses as a number, so `pkg.mod:fn`, `file.py:fn` and `pkg.mod:fn:0.5` all work. `names` are
    the plain reward names (a colon after one of them must be followed by a weight; default: the
    built-ins)."""
    if names is None:
        from .builtins import BUILTINS as names     # here, not at the top: a reward worker loads
                                                    # this module and stays free of torch
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("reward: empty reward spec; expected NAME[:WEIGHT]")
    head, sep, tail = spec.rpartition(":")
    if not sep:
        return spec, 1.0
    try:
        weight = float(tail)
    except ValueError:
        weight = None
    if weight is not None:
        if not math.isfinite(weight):
            raise ConfigError(f"reward: bad weight {tail!r} in {spec!r}: the weight must be a finite number")
        if not head:
            raise ConfigError(f"reward: {spec!r} has a weight but no reward name; expected NAME[:WEIGHT]")
        return head, weight
    if not tail.strip():
        raise ConfigError(f"reward: {spec!r} ends with ':'; expected NAME[:WEIGHT], module:function "
                          "or path/to/file.py:function")
    if head in names or ":" in head:
        raise ConfigError(f"reward: bad weight {tail!r} in {spec!r}: the weight must be a number, as in "
                          f"{head}:0.5")
    return spec, 1.0                       # module:function


_loaded_files: dict[str, object] = {}


def _load_file(path: Path, target: str, setting: str = "reward"):
    key = str(path.resolve())
    if key in _loaded_files:
        return _loaded_files[key]
    name = f"grpo_user_reward_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{setting}: cannot import {path} (from {target!r}): not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent = str(path.resolve().parent)
    sys.path.insert(0, parent)             # so the file can import its neighbours while it loads
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        sys.modules.pop(name, None)
        raise ConfigError(f"{setting}: cannot import {path} (from {target!r}): {type(e).__name__}: {e}") from e
    finally:
        try:
            sys.path.remove(parent)
        except ValueError:
            pass
    _loaded_files[key] = module
    return module


def _import_module(modname: str, target: str, setting: str = "reward"):
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)               # `grpo` run as a console script: find modules next to the user
    try:
        return importlib.import_module(modname)
    except (Exception, SystemExit) as e:
        raise ConfigError(f"{setting}: cannot import module {modname!r} (from {target!r}): "
                          f"{type(e).__name__}: {e}") from e


def load_attribute(target: str, setting: str = "reward", kind: str = "function"):
    """`module:NAME` or `path/to/file.py:NAME` -> (NAME, the object), errors naming `setting`."""
    modname, _, attr = target.rpartition(":")
    if not modname or not attr:
        raise ConfigError(f"{setting}: {target!r} is not module:{kind} or path/to/file.py:{kind}")
    if modname.endswith(".py") or "/" in modname or os.sep in modname:
        path = Path(modname).expanduser()
        if not path.is_file():
            raise ConfigError(f"{setting}: cannot import {target!r}: file {modname} not found")
        module = _load_file(path, target, setting)
    else:
        module = _import_module(modname, target, setting)
    if not hasattr(module, attr):
        public = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")]
        near = difflib.get_close_matches(attr, public, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{setting}: {modname} has no {kind} {attr!r}{hint}")
    return attr, getattr(module, attr)


def load_function(target: str) -> tuple[str, Callable]:
    """`module:function` or `path/to/file.py:function` -> (function name, the callable)."""
    attr, fn = load_attribute(target)
    if not callable(fn):
        kind = type(fn).__name__
        raise ConfigError(f"reward: {target!r} is not a function (it is {'an' if kind[0] in 'aeiou' else 'a'} {kind})")
    check_signature(target, attr, fn)
    return attr, fn


def check_signature(target: str, attr: str, fn: Callable) -> None:
    """A function that cannot be called as fn(prompts, completions) is refused when the run starts."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):          # a builtin or C callable without a signature: trust it
        return
    try:
        sig.bind_partial([], [])         # the columns come as keywords, whatever their names
    except TypeError:
        raise ConfigError(f"reward: {target} takes {str(sig).split(' -> ')[0]}, but a reward function is called as "
                          f"{attr}(prompts, completions, **columns)") from None


def target_of(name: str, fn: Callable) -> str:
    """The `module:function` or `path/to/file.py:function` under which a reward worker finds `fn`
    again (a worker is another process: it imports the function, it is not handed the object)."""
    import inspect

    from .trl_style import PREFIX, TRLStyle
    if isinstance(fn, TRLStyle):
        return PREFIX + target_of(name, fn.fn)
    qual = getattr(fn, "__qualname__", "")
    module = getattr(fn, "__module__", None)
    if not inspect.isfunction(fn) or "<" in qual or "." in qual:
        raise ConfigError(f"reward: {name!r} ({type(fn).__name__} {qual or fn!r}) cannot run in a reward worker: a "
                          "worker imports its function by module and name, so it must be a function defined at the "
                          "top level of a file; define it so, or run rewards in this process (reward_workers 0)")
    from importlib.machinery import PathFinder
    if module and module != "__main__" and PathFinder.find_spec(module.split(".")[0], sys.path) is not None:
        return f"{module}:{qual}"                  # importable by name from the path the workers are given
    source = inspect.getsourcefile(fn)
    if not source or not os.path.isfile(source):
        raise ConfigError(f"reward: {name!r} was not defined in a file (a notebook cell or the interactive prompt), so "
                          "a reward worker cannot import it; run rewards in this process (reward_workers 0) or "
                          "define it in a .py file")
    return f"{source}:{qual}"
