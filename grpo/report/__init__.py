"""`grpo report RUN_DIR`: a run folder as one self-contained HTML page, and its curves as PNG files.

The page (report.html in the run folder unless told otherwise) embeds the run's data and its own
script and styles, so it opens from disk with no network: the curves of metrics.jsonl and
eval.jsonl grouped as `charts.CHARTS` lists them, and a browser of completions.jsonl (by step or by
prompt, each group's G completions side by side, sortable by reward, advantage or length).
`--png` draws the same charts with matplotlib, one file each.
"""

from __future__ import annotations

from .charts import CHARTS, Chart, chart_series
from .page import write_page
from .run import RunFiles, read_run

__all__ = ["CHARTS", "Chart", "chart_series", "write_page", "RunFiles", "read_run", "write_report"]


def write_report(run_dir, out=None, png: bool = False, log=print) -> list:
    """The page (and with `png` the PNG files) for the run folder `run_dir`; the paths written."""
    from pathlib import Path
    run = read_run(run_dir)
    page = Path(out) if out else Path(run_dir) / "report.html"
    write_page(run, page)
    written = [page]
    log(f"report: {page} ({len(run.metrics)} steps, {len(run.evals)} evaluations, "
        f"{len(run.completions)} completions)")
    if png:
        from .png import write_pngs
        pngs = write_pngs(run, page.parent / (page.stem + "-png"))
        written += pngs
        log(f"report: {len(pngs)} PNG files in {page.parent / (page.stem + '-png')}")
    return written
