"""What a run prints at the end: the results table, and a dataset's counts.

Example::

    print(results_table(outcomes, ["test/recall_at_20", "test/ndcg_at_100"]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recvae.run.context import SELECTION_METRIC, ModelOutcome

SUMMARY_METRICS = ("test/recall_at_20", "test/recall_at_50", "test/ndcg_at_100")


def format_summary(summary: dict[str, Any], *, one_line: bool = False) -> str:
    """Dataset counts, one per line (like Table 1 of Liang et al.) or on one line."""
    if one_line:
        return (
            f"{summary['users']} users, {summary['items']} items, {summary['interactions']} "
            f"interactions, {summary['protocol']} generalization"
        )
    width = max(len(k) for k in summary)
    lines = []
    for k, v in summary.items():
        text = f"{v:.6f}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))
        lines.append(f"{k:<{width}}  {text}")
    return "\n".join(lines)


def results_table(
    outcomes: Sequence[ModelOutcome], metrics: Sequence[str] = SUMMARY_METRICS, *,
    selection: str = SELECTION_METRIC,
) -> str:
    """model × (the validation selection metric, ``metrics`` ± standard error, fit seconds) as a
    fixed-width table under a title naming the part and its number of users; failed models say
    so."""
    part = metrics[0].split("/", 1)[0] if metrics else "test"
    counts = sorted({int(o.metrics[f"{part}/n_users"]) for o in outcomes if f"{part}/n_users" in o.metrics})
    users = f"{counts[0]} users" if len(counts) == 1 else f"{'/'.join(map(str, counts)) or 'no'} users"
    title = (f"{part} metrics, {users} (mean ± standard error); {selection}: the validation metric "
             "that selected each model")

    def cell(o: ModelOutcome, name: str) -> str:
        if name not in o.metrics:
            return "-"
        se = o.metrics.get(f"{name}_stderr")
        return f"{o.metrics[name]:.4f}" + (f" ± {se:.4f}" if se is not None and se == se else "")

    header = ["model", selection, *(m.split("/", 1)[1] for m in metrics), "fit_s", "status"]
    rows = []
    for o in outcomes:
        fit = f"{o.fit_seconds:.1f}" if o.fit_seconds is not None else "-"
        sel = f"{o.metrics[selection]:.4f}" if selection in o.metrics else "-"
        rows.append([o.run_name, sel, *(cell(o, m) for m in metrics), fit, "ok" if o.ok else "FAILED"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([title, *(fmt.format(*r) for r in [header, *rows])])
