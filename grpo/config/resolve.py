"""A run's settings resolved from their sources: field defaults < preset < demo defaults (only when
no --model is given) < YAML < flags; and a config written back as YAML."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import yaml

from ..errors import ConfigError
from .checks import coerce, validate
from .fields import FIELDS, TrainConfig
from .presets import CALCULATOR_DEMO_DEFAULTS, CALCULATOR_DEMO_ENVS, DEMO_DEFAULTS, PRESETS


def load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (--config)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML file (--config)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{path}{where}: not valid YAML ({what}"
                          f"{f', column {mark.column + 1}' if mark is not None else ''})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of setting: value, got {type(data).__name__}")
    for key in data:
        check_known(key, where=path)
    return data


def check_known(key: str, where: str = "") -> None:
    if key not in FIELDS:
        near = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        src = f"{where}: " if where else ""
        raise ConfigError(f"{src}unknown setting {key!r}{hint}")


def resolve(yaml_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
            yaml_path: str = "", demo: bool | None = None) -> TrainConfig:
    """Build the final config: defaults < preset < demo defaults < YAML < overrides (flags).

    `demo`: apply DEMO_DEFAULTS; by default, exactly when no model is named."""
    yaml_values = dict(yaml_values or {})
    overrides = dict(overrides or {})
    for k in overrides:
        check_known(k)
    explicit = {**yaml_values, **overrides}
    if demo is None:
        demo = not explicit.get("model")
    demo = DEMO_DEFAULTS if demo else {}
    if demo and explicit.get("env") in CALCULATOR_DEMO_ENVS:
        demo = {**demo, **CALCULATOR_DEMO_DEFAULTS}
    preset = coerce("preset", explicit.get("preset", demo.get("preset", FIELDS["preset"].default)))
    values: dict[str, Any] = dict(PRESETS[preset])
    values.update({k: v for k, v in demo.items() if k != "preset"})
    for k, v in yaml_values.items():
        values[k] = coerce(k, v, where=yaml_path)
    for k, v in overrides.items():
        values[k] = coerce(k, v, where="command line")
    values["preset"] = preset
    sources = {**{k: yaml_path for k in yaml_values if yaml_path}, **{k: "command line" for k in overrides}}
    return validate(TrainConfig(**values), sources)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_yaml(cfg: TrainConfig, path: str) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
