"""The report page: the run's data as JSON inside page.html, whose own script draws it."""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path

from .charts import chart_series
from .run import RunFiles

COMPLETION_FIELDS = ("step", "group", "prompt", "completion", "reward", "rewards", "advantage", "length", "truncated",
                     "messages", "opening")


def page_data(run: RunFiles) -> dict:
    """What the page shows, as plain JSON values."""
    name = run.folder.resolve().name
    return {"title": f"grpo run {name}", "folder": str(run.folder.resolve()),
            "steps": max((r["step"] for r in run.metrics), default=0),
            "config": run.config, "summary": run.summary, "charts": chart_series(run),
            "completions": [{k: c.get(k) for k in COMPLETION_FIELDS} for c in run.completions]}


def render(run: RunFiles) -> str:
    data = page_data(run)
    # "</" would end the <script> element early; "<\/" is the same string to JSON.parse
    blob = json.dumps(data, allow_nan=False, default=str).replace("</", "<\\/")
    template = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    return template.replace("__TITLE__", html.escape(data["title"])).replace("__DATA__", blob)


def write_page(run: RunFiles, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(run), encoding="utf-8")
    tmp.replace(path)              # a reader never sees half a page
    return path
