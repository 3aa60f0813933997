"""The pipeline's comparison of its models: one row per model, the validation metric that
selected it, the test metrics with their standard errors, fit seconds, the selected epoch and
(for tuned models) the trial counts; as CSV, Markdown and a bar chart, and as the table the
pipeline's MLflow run shows.

The best model is the best on validation (``SELECTION_METRIC``), never on test.

Example::

    table = Comparison.of(outcomes, ["test/recall_at_20", "test/ndcg_at_100"])
    table.best.run_name, table.write("runs/quickstart")   # comparison.csv, .md, .png
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recvae.io import atomic_file
from recvae.reporting import Tracker
from recvae.run.context import SELECTION_METRIC, ModelOutcome

FILES = ("comparison.csv", "comparison.md", "comparison.png")
TABLE_ARTIFACT = "comparison.json"  # the run's table (mlflow.log_table's format)
CHAMPION_ALIAS = "champion"  # the registry alias of the best model on validation


@dataclass
class Comparison:
    """Rows (one per model, best on validation first, failed models last) and the columns."""

    columns: list[str]
    rows: list[dict[str, Any]]
    selection: str
    test_metrics: list[str]
    best: ModelOutcome | None
    test_users: int | None

    @classmethod
    def of(
        cls, outcomes: Sequence[ModelOutcome], test_metrics: Sequence[str],
        selection: str = SELECTION_METRIC,
    ) -> Comparison:
        """The comparison of ``outcomes`` on ``test_metrics`` (``test/...`` names)."""
        tuned = any(o.search for o in outcomes)
        columns = ["model", "type", selection]
        for m in test_metrics:
            columns += [m, f"{m}_stderr"]
        columns += ["time/fit_seconds", "selected_epoch"]
        if tuned:
            columns += ["trials_complete", "trials_pruned", "trials_failed"]
        columns.append("status")

        def score(o: ModelOutcome) -> float:
            value = o.metrics.get(selection) if o.ok else None
            return -math.inf if value is None or not math.isfinite(value) else value

        ranked = sorted(outcomes, key=lambda o: (not o.ok, -score(o)))  # stable: file order on ties
        rows = []
        for o in ranked:
            row: dict[str, Any] = {"model": o.run_name, "type": o.model, selection: o.metrics.get(selection)}
            for m in test_metrics:
                row[m] = o.metrics.get(m)
                row[f"{m}_stderr"] = o.metrics.get(f"{m}_stderr")
            row["time/fit_seconds"] = o.fit_seconds
            row["selected_epoch"] = o.selected_epoch
            if tuned:
                s = o.search or {}
                for k in ("complete", "pruned", "failed"):
                    row[f"trials_{k}"] = s.get(k)
            row["status"] = "ok" if o.ok else "FAILED"
            rows.append(row)
        best = ranked[0] if ranked and score(ranked[0]) > -math.inf else None
        part = test_metrics[0].split("/", 1)[0] if test_metrics else "test"
        users = {int(o.metrics[f"{part}/n_users"]) for o in outcomes if f"{part}/n_users" in o.metrics}
        return cls(columns, rows, selection, list(test_metrics), best,
                   users.pop() if len(users) == 1 else None)

    @property
    def title(self) -> str:
        users = f", {self.test_users} users" if self.test_users is not None else ""
        best = f"; best on validation: {self.best.run_name}" if self.best is not None else ""
        return (f"test metrics{users} (mean ± standard error); {self.selection}: the validation "
                f"metric that selected each model{best}")

    def table(self, digits: int = 4) -> dict[str, list[Any]]:
        """``{column: values}`` for the MLflow table, metrics rounded to ``digits`` decimals
        (seconds to 1): what a reader compares, not float noise."""
        out: dict[str, list[Any]] = {c: [] for c in self.columns}
        for row in self.rows:
            for c in self.columns:
                value = row.get(c)
                if isinstance(value, float):
                    places = 1 if c.startswith("time/") else digits
                    value = round(value, places) if math.isfinite(value) else None
                out[c].append(value)
        return out

    @property
    def headline(self) -> str | None:
        """The test metric a verdict is told in: the selection metric's own, else the last."""
        same = "test/" + self.selection.split("/", 1)[1]
        return same if same in self.test_metrics else (self.test_metrics[-1] if self.test_metrics else None)

    def verdict(self) -> str:
        """In words: the model selected on validation, and which leads on test and by how much
        (in the headline metric, with the standard errors)."""
        if self.best is None:
            return "No model finished: nothing was selected."
        ok = [r for r in self.rows if r["status"] == "ok"]
        chosen = next(r for r in ok if r["model"] == self.best.run_name)
        text = (f"Selected on validation ({self.selection}): **{chosen['model']}** "
                f"({_num(chosen[self.selection])}).")
        metric = self.headline
        scored = [r for r in ok if isinstance(r.get(metric), float) and math.isfinite(r[metric])]
        if metric is None or chosen not in scored:
            return text
        leader = max(scored, key=lambda r: r[metric])
        if leader is chosen:
            others = [r for r in scored if r is not chosen]
            runner = max(others, key=lambda r: r[metric]) if others else None
            gap = f", {_gap(chosen, runner, metric)} ahead of {runner['model']}" if runner else ""
            return text + f" It also leads on test ({metric}: {_cell(chosen, metric)}{gap})."
        return (text + f" On test ({metric}) **{leader['model']}** leads: {_cell(leader, metric)} against "
                f"{_cell(chosen, metric)}, {_gap(leader, chosen, metric)} ahead.")

    def overview(self, heading: str) -> str:
        """The pipeline run's description (its Overview page): the verdict, then the models ranked
        as selected, with the validation metric, the test metrics ± SE, the gap to the selected
        model in the headline metric, and seconds."""
        metric = self.headline
        head = ["rank", "model", self.selection, *(m.split("/", 1)[1] for m in self.test_metrics)]
        head += ([f"Δ {metric.split('/', 1)[1]}"] if metric else []) + ["fit s", "status"]
        rule = "|" + "|".join(["---:", "---"] + ["---:"] * (len(head) - 3) + ["---"]) + "|"
        lines = [self.verdict(), "", "| " + " | ".join(head) + " |", rule]
        best = self.best.run_name if self.best is not None else None
        chosen = next((r for r in self.rows if r["model"] == best), None)
        for rank, row in enumerate(self.rows, 1):
            name = f"**{row['model']}**" if row is chosen else row["model"]
            cells = [str(rank), name, _num(row[self.selection]), *(_cell(row, m) for m in self.test_metrics)]
            if metric:
                both = chosen is not None and _finite(row, metric) and _finite(chosen, metric)
                delta = row[metric] - chosen[metric] if both else None
                cells.append("-" if delta is None else f"{delta:+.4f}")
            fit = row["time/fit_seconds"]
            cells += [f"{fit:.1f}" if isinstance(fit, float) else "-", row["status"]]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"{heading}: {self.title}."]
        return "\n".join(lines) + "\n"

    def markdown(self) -> str:
        """A Markdown table: ``mean ± SE`` cells, the best model in bold."""
        head = ["model", self.selection, *(m.split("/", 1)[1] for m in self.test_metrics),
                "fit s", "epoch"]
        extra = [c for c in self.columns if c.startswith("trials_")]
        head += [c.removeprefix("trials_") + " trials" for c in extra] + ["status"]
        lines = [f"**{self.title}**", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|"]
        best = self.best.run_name if self.best is not None else None
        for row in self.rows:
            cells = [f"**{row['model']}**" if row["model"] == best else row["model"],
                     _num(row[self.selection])]
            for m in self.test_metrics:
                se = row[f"{m}_stderr"]
                cells.append(_num(row[m]) + (f" ± {_num(se)}" if _num(se) != "-" else ""))
            fit = row["time/fit_seconds"]
            cells += [f"{fit:.1f}" if isinstance(fit, float) else "-", _num(row["selected_epoch"])]
            cells += [_num(row[c]) for c in extra] + [row["status"]]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write(self, output_dir: str | Path, suffix: str = "") -> list[Path]:
        """``comparison<suffix>.csv`` (full precision), ``.md`` and ``.png`` in ``output_dir``,
        each written atomically; returns their paths. ``suffix`` keeps a ``--models`` subset's
        files beside the whole pipeline's (``comparison.mult-vae.md``)."""
        from recvae.tracking.plots import plot_comparison

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv_path, md_path, png_path = (out / name.replace(".", f"{suffix}.", 1) for name in FILES)
        with atomic_file(csv_path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            for row in self.rows:
                w.writerow({c: "" if row.get(c) is None else row[c] for c in self.columns})
        with atomic_file(md_path) as tmp:
            tmp.write_text(self.markdown())
        panels = [(self.selection, None), *((m, f"{m}_stderr") for m in self.test_metrics),
                  ("time/fit_seconds", None)]
        ok = [r for r in self.rows if r["status"] == "ok"]
        with atomic_file(png_path) as tmp:
            plot_comparison(
                [r["model"] for r in ok],
                [(name, [r.get(name) for r in ok], [r.get(se) for r in ok] if se else None)
                 for name, se in panels],
                tmp, title=self.title, best=self.best.run_name if self.best is not None else None,
            )
        return [csv_path, md_path, png_path]


def log_comparison(
    tracker: Tracker, comparison: Comparison, outcomes: Sequence[ModelOutcome], *, register: bool,
    registered_name: str, heading: str = "Models compared",
) -> None:
    """On the open pipeline run: the comparison as its description (the run's Overview page:
    the verdict and the ranked table, under ``heading``) and as a table (``comparison.json``),
    the number of models and failures as tags; the best model on validation tagged
    ``recvae.best_model`` on the pipeline run and on its own run; with ``register``, the registry
    alias ``champion`` on its version. No metrics: the chart view's first section is then the
    models' test metrics, not the pipeline's own."""
    tracker.log_table(comparison.table(), TABLE_ARTIFACT)
    tracker.set_tags({"mlflow.note.content": comparison.overview(heading),
                      "recvae.models": str(sum(o.ok for o in outcomes)),
                      "recvae.failed": str(sum(not o.ok for o in outcomes))})
    best = comparison.best
    if best is not None:
        tracker.set_tags({"recvae.best_model": best.run_name,
                          "recvae.selection_metric": comparison.selection})
        run = tracker.model_run(best.run_name)
        if run is not None:
            tracker.set_tags({"recvae.best_model": "true"}, run=run)
            if register:
                tracker.set_model_alias(registered_name, CHAMPION_ALIAS, run=run)


def _finite(row: dict[str, Any], key: str) -> bool:
    value = row.get(key)
    return isinstance(value, float) and math.isfinite(value)


def _cell(row: dict[str, Any], metric: str) -> str:
    """``0.3109 ± 0.0251``."""
    se = row.get(f"{metric}_stderr")
    return _num(row.get(metric)) + (f" ± {_num(se)}" if _num(se) != "-" else "")


def _gap(a: dict[str, Any], b: dict[str, Any], metric: str) -> str:
    """``+0.0168 (0.5 standard errors)``: ``a`` less ``b`` in ``metric``, in units of the larger
    standard error of the two."""
    gap = a[metric] - b[metric]
    ses = [se for se in (a.get(f"{metric}_stderr"), b.get(f"{metric}_stderr"))
           if isinstance(se, float) and math.isfinite(se) and se > 0]
    return f"{gap:+.4f}" + (f" ({gap / max(ses):.1f} standard errors)" if ses else "")


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
