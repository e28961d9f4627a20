"""`--env module:Class` / `path/to/file.py:Class`: the user's environment class, checked when the
run starts."""

from __future__ import annotations

import inspect

from ..errors import ConfigError
from ..rewards.user import load_attribute
from .builtin import BUILTIN
from .tools import tool_schema


def load_env(spec: str, task=None, cfg=None):
    """What makes the environments of `spec` (a built-in's name, or module:Class /
    file.py:Class): called with no arguments, once per episode."""
    if spec in BUILTIN:
        return BUILTIN[spec](task, cfg)
    if ":" not in spec:
        raise ConfigError(f"env: unknown environment {spec!r}; built-in: {', '.join(BUILTIN)}; your own is "
                          "module:Class or path/to/file.py:Class")
    name, cls = load_attribute(spec, setting="env", kind="Class")
    return check_env(name, cls, spec)


def check_env(name: str, cls, spec=None):
    """`cls` if it makes environments (a class with reset and step, its tools described, made
    without arguments), else a ConfigError naming it."""
    spec = spec or name
    if not inspect.isclass(cls):
        raise ConfigError(f"env: {spec!r} is not a class (it is {type(cls).__name__}); an environment is a class "
                          "with reset(row) and step(text) methods")
    missing = [m for m in ("reset", "step") if not callable(getattr(cls, m, None))]
    if missing:
        raise ConfigError(f"env: {name} has no {' or '.join(missing)} method; an environment needs reset(row) -> "
                          "messages and step(text) -> Reply (docs/environments.md)")
    for tool in getattr(cls, "tools", None) or []:
        try:
            tool_schema(tool)
        except ValueError as e:
            raise ConfigError(f"env: {name}.tools: {e} (a tool needs type hints and a docstring with its "
                              "arguments, docs/environments.md)") from None
    try:
        inspect.signature(cls).bind()
    except TypeError as e:
        raise ConfigError(f"env: {name}() cannot be made without arguments ({e}); one object is made per episode")
    except ValueError:
        pass
    return cls
