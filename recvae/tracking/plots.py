"""Figures logged as artifacts: learning curves per epoch, the pipeline's comparison."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from recvae.tracking.values import VAL_CURVE


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
        ("validation", [k for k in keys if k.startswith(VAL_CURVE)]),
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


def plot_comparison(
    models: list[str], panels: list[tuple[str, list[Any], list[Any] | None]],
    path: str | os.PathLike, *, title: str = "", best: str | None = None,
) -> Path:
    """PNG with one chart per metric (``(name, values, standard errors or None)``), stacked: a
    horizontal bar per model in the order given, named on every chart and labelled with its value
    (4 significant digits; seconds to 0.1); ``best`` is drawn in its own colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per_panel = 0.9 + 0.3 * max(len(models), 1)
    fig = Figure(figsize=(8.0, per_panel * len(panels) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    colors = ["tab:orange" if m == best else "tab:blue" for m in models]
    ys = list(range(len(models)))
    for i, (name, values, errors) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        vals = [v if isinstance(v, int | float) and math.isfinite(v) else 0.0 for v in values]
        errs = None
        if errors is not None:
            errs = [e if isinstance(e, int | float) and math.isfinite(e) else 0.0 for e in errors]
        ax.barh(ys, vals, xerr=errs, color=colors, capsize=3, error_kw={"lw": 0.8})
        ax.set_yticks(ys, models, fontsize=10)
        ax.invert_yaxis()  # the first (best) model on top
        ax.set_title(name, fontsize=11, loc="left")
        ax.tick_params(axis="x", labelsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.3)  # room for the labels right of the bars
        for y, v, e in zip(ys, vals, errs or [0.0] * len(vals), strict=True):  # right of the error bar
            label = f"{v:.1f} s" if name.startswith("time/") else f"{v:.4g}" + (f" ± {e:.2g}" if e else "")
            ax.annotate(label, (v + e, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=9)
    if title:
        import textwrap

        fig.suptitle(textwrap.fill(title, 100), fontsize=10)
    fig.savefig(path, dpi=100, format="png")
    return Path(path)
