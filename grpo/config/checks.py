"""Typing and checking the settings: a YAML or flag value coerced to its field's type, and a whole
config validated (each field's bounds, then the rules across fields), every error naming the
setting and where its value came from."""

from __future__ import annotations

import functools
import math
import types
import typing
import warnings
from typing import Any, Literal

import yaml

from ..errors import ConfigError
from ..sinks import REPORT_TO, missing_package
from .fields import FIELDS, TrainConfig
from .presets import needs_reference, rollout_is_bounds


@functools.cache
def _hints() -> dict:
    return typing.get_type_hints(TrainConfig)      # resolving every annotation compiles each: once per process


def field_type(name: str) -> tuple[type, tuple | None, bool]:
    """(base type, allowed choices or None, optional?) of a field."""
    hints = _hints()
    tp = hints[name]
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, tp = True, args[0]
    if typing.get_origin(tp) is Literal:
        return str, typing.get_args(tp), optional
    if tp in (list, dict):
        return tp, None, True
    return tp, None, optional


def _mapping(name: str, value: Any, src: str) -> dict:
    """A mapping setting: a mapping (YAML), or its JSON / YAML text (a flag)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{name}{src}: expected a JSON or YAML mapping such as '{{\"key\": 1}}', "
                              f"got {value!r} ({str(e).splitlines()[0]})") from None
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{name}{src}: expected a mapping of name: value, got {value!r}")
    return dict(value)


def coerce(name: str, value: Any, where: str = "") -> Any:
    """Convert a YAML or flag value to the field's type, or raise ConfigError naming the field."""
    tp, choices, optional = field_type(name)
    src = f" (in {where})" if where else ""
    if tp is dict:
        return _mapping(name, value, src)
    if tp is list:
        if value is None:
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v for v in items):
            raise ConfigError(f"{name}{src}: expected a list of non-empty strings, got {value!r}")
        return list(items)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("", "none", "null", "auto")):
        if optional:
            return None
        raise ConfigError(f"{name}{src}: a value is required, got nothing")
    if tp is str and isinstance(value, (list, tuple, dict)):
        joins = FIELDS[name].metadata.get("joins")
        if not (joins and isinstance(value, (list, tuple)) and value
                and all(isinstance(v, str) and v.strip() for v in value)):
            form = "a list" if isinstance(value, (list, tuple)) else "a mapping"
            raise ConfigError(f"{name}{src}: expected text{' or a list of names' if joins else ''}, got {form}: "
                              f"{value!r}")
    try:
        if tp is bool:
            if isinstance(value, bool):
                out = value
            elif isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                out = True
            elif isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                out = False
            else:
                raise ValueError
        elif tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out = int(value)
        elif tp is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        elif isinstance(value, (list, tuple)):            # a YAML list for a comma-separated setting
            out = ",".join(v.strip() for v in value)
        else:
            out = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}{src}: expected {tp.__name__}, got {value!r}") from None
    if choices and out not in choices:
        raise ConfigError(f"{name}{src}: must be one of {', '.join(choices)}; got {out!r}")
    return out


def check_split(cfg: TrainConfig, processes: int) -> None:
    """Each of `processes` data-parallel processes takes whole groups: prompts_per_step a multiple."""
    if cfg.prompts_per_step % processes:
        raise ConfigError(f"prompts_per_step: {cfg.prompts_per_step} prompts do not split evenly over "
                          f"{processes} processes (each process takes whole groups); use a multiple of {processes}")


def validate(cfg: TrainConfig, sources: dict[str, str] | None = None) -> TrainConfig:
    """Check every numeric bound declared in the field metadata, then cross-field rules.
    `sources` maps a field to where its value came from (a YAML path, "command line")."""
    sources = sources or {}
    for name, f in FIELDS.items():
        setattr(cfg, name, coerce(name, getattr(cfg, name), sources.get(name, "")))
        v = getattr(cfg, name)
        if v is None or isinstance(v, (bool, str, list, dict)):
            continue
        m = f.metadata
        label = f"{name} (in {sources[name]})" if name in sources else name
        if not math.isfinite(v):
            raise ConfigError(f"{label}: must be a finite number, got {v}")
        for key, ok, words in (("min", v >= m.get("min", 0), ">="), ("gt", v > m.get("gt", 0), ">"),
                               ("max", v <= m.get("max", 0), "<="), ("lt", v < m.get("lt", 0), "<")):
            if key in m and not ok:
                raise ConfigError(f"{label}: must be {words} {m[key]}, got {v}")
    if cfg.group_size < 4:
        warnings.warn(f"group_size={cfg.group_size}: groups under 4 give unreliable relative advantages "
                      "(the article advises G >= 4)", stacklevel=2)
    if cfg.min_new_tokens > cfg.max_new_tokens:
        raise ConfigError(f"min_new_tokens ({cfg.min_new_tokens}) must be <= max_new_tokens ({cfg.max_new_tokens})")
    if cfg.minibatches > cfg.prompts_per_step:
        raise ConfigError(f"minibatches ({cfg.minibatches}) must be <= prompts_per_step ({cfg.prompts_per_step}): "
                          "each minibatch holds whole groups")
    if cfg.epsilon >= 1.0:
        raise ConfigError(f"epsilon: must be < 1, got {cfg.epsilon}")
    lo, hi = rollout_is_bounds(cfg)
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError(f"rollout_is_min ({lo}) must be < rollout_is_max ({hi})")
    if cfg.ref_sync_every:
        if cfg.lora_rank:
            raise ConfigError("ref_sync_every: under LoRA the reference is the actor's own base weights (the adapter "
                              "switched off), which a refresh cannot move without changing the actor; train the full "
                              "model (lora_rank 0) to refresh the reference")
        if cfg.fsdp:
            raise ConfigError("ref_sync_every: a refreshed reference is not checkpointed under --fsdp; train without "
                              "--fsdp to refresh the reference")
        if not needs_reference(cfg):
            raise ConfigError("ref_sync_every: this run has no reference to refresh (beta is 0 and ratio_vs is old); "
                              "set beta > 0 or leave ref_sync_every at 0")
    if cfg.env_credit == "turn" and not cfg.env:
        raise ConfigError("env_credit: turn credits the turns of multi-turn episodes; it needs --env")
    if cfg.rollout_dtype == "bf16" and cfg.fsdp:
        raise ConfigError(f"rollout_dtype: {cfg.rollout_dtype} sampling keeps a whole copy of the weights, which "
                          "--fsdp does not; sample in fp32 or train without --fsdp")
    if cfg.lora_base_dtype == "bf16":
        if not cfg.lora_rank:
            raise ConfigError(f"lora_base_dtype: {cfg.lora_base_dtype} applies to LoRA's frozen base weights; set "
                              "lora_rank > 0, or use bf16 for autocast of the whole model")
        if cfg.fsdp:
            raise ConfigError(f"lora_base_dtype: {cfg.lora_base_dtype} keeps a copy of the base weights, which --fsdp "
                              "does not shard; use fp32 or train without --fsdp")
    cfg.report_to = [n.strip() for spec in cfg.report_to for n in spec.split(",") if n.strip()]
    for name in cfg.report_to:
        if name not in REPORT_TO:
            raise ConfigError(f"report_to: unknown tracker {name!r}; choose from {', '.join(REPORT_TO)}")
        if name != "none" and (install := missing_package(name)):
            raise ConfigError(f"report_to: {install}")
    return cfg
