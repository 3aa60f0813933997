"""Figures logged as artifacts: learning curves per epoch."""

from __future__ import annotations

import os
from pathlib import Path


def plot_learning_curves(
    history: list[tuple[int, dict[str, float]]], path: str | os.PathLike, *, title: str = "",
    best: int | None = None,
) -> Path:
    """PNG with two panels: training losses and validation metrics per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = sorted({k for _, m in history for k in m})
    panels = [
        ("training loss", [k for k in keys if k.startswith("train/") and "loss" in k]),
        ("validation", [k for k in keys if k.startswith("val/")]),
    ]
    panels = [(t, ks) for t, ks in panels if ks] or [("metrics", keys)]
    fig = Figure(figsize=(5 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (label, ks) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key in ks:
            pts = [(e, m[key]) for e, m in history if key in m]
            ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 30 else None, ms=3, label=key)
        if best is not None:
            ax.axvline(best, color="grey", ls="--", lw=0.8, label=f"best epoch {best}")
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)
