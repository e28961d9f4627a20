"""The report's charts as PNG files, drawn with matplotlib (`pip install 'grpo[report]'`)."""

from __future__ import annotations

from pathlib import Path

from .charts import chart_series
from .run import ReportError, RunFiles


def write_pngs(run: RunFiles, folder: Path, dpi: int = 110) -> list[Path]:
    """One PNG per chart in `folder` (named by the chart's id); the paths written."""
    try:
        import matplotlib
    except ImportError:
        raise ReportError("--png needs matplotlib: pip install 'grpo[report]'") from None
    matplotlib.use("Agg")                      # files only, no display
    import matplotlib.pyplot as plt
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for chart in chart_series(run):
        fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=dpi)
        for s in chart["series"]:
            pts = [(x, y) for x, y in zip(s["x"], s["y"]) if y is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=s["name"], marker="o" if len(xs) <= 40 else None, markersize=3, linewidth=1.4)
        ax.set_title(chart["title"], fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(chart["series"]) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{chart['id']}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
