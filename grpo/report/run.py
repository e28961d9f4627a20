"""Reading a run folder: the files the trainer's sinks write, each line checked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ReportError(ValueError):
    """A run folder that cannot be reported on: which file, which line, what was wrong."""


@dataclass
class RunFiles:
    folder: Path
    metrics: list[dict] = field(default_factory=list)        # metrics.jsonl, one row per step
    evals: list[dict] = field(default_factory=list)          # eval.jsonl
    completions: list[dict] = field(default_factory=list)    # completions.jsonl
    config: dict = field(default_factory=dict)               # config.yaml
    summary: dict = field(default_factory=dict)              # summary.json (absent while a run is going)


def _text(path: Path) -> str:
    """The file's text, or a ReportError naming the first line that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ReportError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); the file is damaged") from None


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or "step" not in row:
            raise ReportError(f"{path}:{n}: expected an object with a 'step', got {line[:80]!r}")
        rows.append(row)
    return rows


def read_run(folder) -> RunFiles:
    """The run folder's files; metrics.jsonl must be there (a run writes it after its first step)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such run folder")
    if not (folder / "metrics.jsonl").is_file():
        raise ReportError(f"{folder}: no metrics.jsonl (not a run folder, or no step has finished yet)")
    run = RunFiles(folder, _jsonl(folder / "metrics.jsonl"), _jsonl(folder / "eval.jsonl"),
                   _jsonl(folder / "completions.jsonl"))
    config = folder / "config.yaml"
    if config.is_file():
        try:
            run.config = yaml.safe_load(_text(config)) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            what = " ".join(str(getattr(e, "problem", None) or e).split())
            raise ReportError(f"{config}{where}: not valid YAML ({what})") from None
        if not isinstance(run.config, dict):
            raise ReportError(f"{config}: expected a mapping of setting: value, got {type(run.config).__name__}")
    if (folder / "summary.json").is_file():
        try:
            run.summary = json.loads(_text(folder / "summary.json"))
        except json.JSONDecodeError as e:
            raise ReportError(f"{folder / 'summary.json'}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(run.summary, dict):
            raise ReportError(f"{folder / 'summary.json'}: expected a JSON object, got {type(run.summary).__name__}")
    return run
