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


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
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
    if (folder / "config.yaml").is_file():
        run.config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    if (folder / "summary.json").is_file():
        try:
            run.summary = json.loads((folder / "summary.json").read_text())
        except json.JSONDecodeError as e:
            raise ReportError(f"{folder / 'summary.json'}: not valid JSON ({e.msg})") from None
    return run
