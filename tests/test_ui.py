"""The MLflow UI shows what a user comes for, checked in headless Chromium as a user would:

- the experiment opens in MLflow's model-training view (not the GenAI one), at the link a run
  prints;
- that link lands on the pipeline run's Overview: the verdict (the model selected on validation,
  the one leading on test) and the models ranked, one row each;
- the runs page: the pipeline run with one child run per model (collapsed under it), with
  ``test/ndcg_at_100``;
- the pipeline run's artifacts: the comparison table, one row per model, best on validation first;
- the chart view: its first chart is a test metric with one labelled bar per model; a
  ``test/ndcg_at_100`` chart with one bar per model;
- a logged model's page: named after its model, with its test metrics on the test data.

Builds the store with the real quickstart pipeline (``pipelines/quickstart.yaml``, every model,
fewer epochs), serves it with ``mlflow server`` and drives Chromium with Playwright. Screenshots
go to ``runs/ui-screenshots/`` (CI keeps them as artifacts); a missing one fails the test.
Needs ``/usr/bin/chromium`` (``apt-get install chromium``). Run alone with ``pytest -m ui``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port, stop, wait_for

CHROMIUM = "/usr/bin/chromium"
METRIC = "test/ndcg_at_100"
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "runs" / "ui-screenshots"

pytestmark = pytest.mark.ui


def build_store(db: Path, work: Path) -> dict[str, Any]:
    """Run the real quickstart pipeline (fewer epochs) into ``db``: a parent run, a child per model."""
    from mlflow.tracking import MlflowClient

    from recvae.config import load_config
    from recvae.run.pipeline import run_pipeline

    cfg = load_config(
        REPO / "pipelines" / "quickstart.yaml",
        {
            "data.path": str(REPO / "data" / "ml-latest-small.zip"),
            "data.out": str(work / "data"),
            "output_dir": str(work / "runs"),
            "tracking.uri": f"sqlite:///{db}",
            "recommend.k": 10,
        },
    )
    for m in cfg.models:  # same models and pipeline, shorter training
        if "epochs" in m.params:
            m.params["epochs"] = 2
        if "iterations" in m.params:
            m.params["iterations"] = 5
    outcomes = run_pipeline(cfg, show_progress=False)
    assert all(o.ok for o in outcomes), [(o.run_name, o.error) for o in outcomes]
    assert all(o.model_id for o in outcomes), "every model is a LoggedModel"
    client = MlflowClient(f"sqlite:///{db}")
    parent = client.get_run(outcomes[0].parent_run_id)
    return {
        "experiment_id": parent.info.experiment_id,
        "parent": parent.info.run_id,
        "parent_name": parent.info.run_name,  # "quickstart 2026-12-01 19:04"
        "best": parent.data.tags["recvae.best_model"],
        "children": {o.run_name: (o.run_id, o.metrics[METRIC], o.model_id) for o in outcomes},
    }








@pytest.fixture(scope="module")
def served_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """The store, served by ``mlflow server`` on a free port; the server is always stopped."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):  # .ci/run installs it: a missing browser there is a failure
            pytest.fail(f"{CHROMIUM} not found although CI=true; .ci/run should have installed it")
        pytest.skip(f"{CHROMIUM} not found: install it with `apt-get install -y chromium`")
    if not os.environ.get("CI"):
        pytest.importorskip("playwright.sync_api")  # the dev extra installs it
    tmp_path = tmp_path_factory.mktemp("ui")
    # SQLite on tmpfs: MLflow's schema migrations are fsync-bound on a disk
    shm = Path("/dev/shm")
    store_dir = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else tmp_path))
    proc = None
    try:
        db = store_dir / "mlflow.db"
        from mlflow.tracking import MlflowClient

        MlflowClient(f"sqlite:///{db}").search_experiments()  # create the schema first
        port, log = free_port(), tmp_path / "server.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                 "--artifacts-destination", str(tmp_path / "artifacts"),
                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                # no GenAI job runner: faster start, nothing left behind in /dev/shm
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        url = f"http://127.0.0.1:{port}"
        info = build_store(db, tmp_path)  # while the server boots (~20 s): it only reads at start-up
        wait_for(f"{url}/health", proc, log)
        yield url, info
    finally:
        if proc is not None:
            stop(proc, timeout=10)
        shutil.rmtree(store_dir, ignore_errors=True)


@pytest.fixture
def page(served_store: tuple[str, dict]) -> Iterator[Any]:
    """A fresh Chromium page (1920 × 1000), closed after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1000})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def close_assistant(page: Any) -> None:
    """Close MLflow's Assistant side panel, which covers a third of the page."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def screenshot(page: Any, name: str) -> Path:
    """Save the page under ``runs/ui-screenshots/``; fails when the file is not there after."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path))
    assert path.is_file() and path.stat().st_size > 10_000, f"screenshot {path} missing or empty"
    return path


def open_runs(page: Any, url: str, info: dict) -> None:
    """The experiment's runs page with the pipeline run expanded (child runs sit collapsed)."""
    page.goto(f"{url}/#/experiments/{info['experiment_id']}/runs")
    parent = page.locator("[role=row]", has_text=str(info["parent_name"])).first
    parent.wait_for()
    parent.locator("button[data-component-id*='runnamecellrenderer']").click()
    for run_id, _, _ in info["children"].values():
        page.locator(f"a[href$='/runs/{run_id}']").first.wait_for()


def printed_link(url: str, info: dict) -> str:
    """The ``open it:`` link that ``recvae run`` prints for this pipeline run."""
    from recvae.cli import _ui_hint

    return _ui_hint(url, info["experiment_id"], info["parent"])


def test_experiment_opens_in_the_model_training_view(served_store: tuple[str, dict], page: Any) -> None:
    from mlflow.tracking import MlflowClient

    url, info = served_store
    tags = MlflowClient(url).get_experiment(info["experiment_id"]).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    page.goto(f"{url}/#/experiments/{info['experiment_id']}/runs?workflowType=machine_learning")
    page.locator("[role=row]", has_text=str(info["parent_name"])).first.wait_for()
    close_assistant(page)
    nav = page.get_by_role("link", name="Runs")
    assert nav.count() and page.get_by_text("Model training").count()
    for genai in ("Judges", "Agent versions", "Send your first trace"):  # the GenAI view's
        assert page.get_by_text(genai).count() == 0, genai
    screenshot(page, "experiment.png")


def test_printed_link_lands_on_the_ranked_comparison(served_store: tuple[str, dict], page: Any) -> None:
    url, info = served_store
    page.goto(printed_link(url, info))
    page.get_by_text("Selected on validation").first.wait_for()
    close_assistant(page)
    more = page.get_by_text("Show more")
    if more.count():
        more.first.click()
    verdict = page.get_by_text("Selected on validation").first.inner_text()
    assert f"Selected on validation (val/ndcg_at_100): {info['best']}" in verdict, verdict
    table = page.locator("table", has_text="val/ndcg_at_100").first
    table.wait_for()
    rows = table.locator("tbody tr")
    names = [rows.nth(i).locator("td").nth(1).inner_text().strip() for i in range(rows.count())]
    assert sorted(names) == sorted(info["children"]), names  # one row per model
    assert names[0] == info["best"]  # ranked as selected, on validation
    assert page.get_by_text("Model training").count() and page.get_by_text("Judges").count() == 0
    screenshot(page, "pipeline_overview.png")


def test_runs_page_shows_one_run_per_model_with_ndcg(served_store: tuple[str, dict], page: Any) -> None:
    url, info = served_store
    open_runs(page, url, info)
    models = list(info["children"])
    for name, (run_id, _, _) in info["children"].items():  # exactly one run per model
        assert page.locator(f"a[href$='/runs/{run_id}']").count() == 1, name
    page.get_by_text(f"{len(models) + 1} matching runs").wait_for()

    # metric columns are opt-in in MLflow 3: add test/ndcg_at_100 from "Columns"
    page.get_by_role("button", name="Columns").click()
    page.get_by_placeholder("Search columns").fill(METRIC)
    # the item reading exactly test/ndcg_at_100 (the match is in bold): not best/..., not ..._stderr
    page.locator(f"xpath=//strong[normalize-space(..)='{METRIC}']").first.click()
    page.keyboard.press("Escape")
    close_assistant(page)

    col = f"metrics.`{METRIC}`"
    page.locator(f"[role=columnheader][col-id='{col}']").first.wait_for()
    for name, (run_id, value, _) in info["children"].items():
        cell = page.locator(f"[role=row][row-id='{run_id}'] [role=gridcell][col-id='{col}']")
        cell.first.wait_for()
        shown = cell.first.inner_text().strip()
        assert float(shown) == pytest.approx(value, rel=1e-6), (name, shown, value)
    screenshot(page, "runs.png")


def test_pipeline_run_shows_the_comparison_table(served_store: tuple[str, dict], page: Any) -> None:
    url, info = served_store
    page.goto(f"{url}/#/experiments/{info['experiment_id']}/runs/{info['parent']}"
              "/artifacts/comparison.json")
    page.get_by_text("View as table").wait_for()
    assert page.get_by_text(str(info["parent_name"]), exact=True).count()  # a dated run name
    close_assistant(page)
    page.get_by_role("columnheader", name="val/ndcg_at_100").wait_for()
    headers = [h.inner_text().strip() for h in page.get_by_role("columnheader").all()]
    assert {METRIC, f"{METRIC}_stderr", "time/fit_seconds", "selected_epoch"} <= set(headers), headers
    rows = page.locator("[role=row]")
    rows.nth(len(info["children"])).wait_for()
    shown = [rows.nth(i).inner_text().split("\n")[0].strip() for i in range(1, rows.count())]
    assert sorted(shown) == sorted(info["children"]), shown  # one row per model
    assert shown[0] == info["best"]  # best on validation first
    screenshot(page, "comparison_table.png")


def test_chart_view_has_one_bar_per_model(served_store: tuple[str, dict], page: Any) -> None:
    url, info = served_store
    open_runs(page, url, info)  # charts show the runs the list shows: children expanded
    page.locator("input[name=runs-view-mode][value=CHART]").evaluate("e => e.click()")
    cards = page.locator("[data-testid=experiment-view-compare-runs-card]")
    cards.first.wait_for()  # the view is up: a search typed earlier would be dropped
    close_assistant(page)
    first = cards.first
    first.locator("g.trace.bars g.point path").nth(len(info["children"]) - 1).wait_for()
    title = first.inner_text().split("\n")[0]
    assert title.startswith("test/"), title  # the models' test metrics come first, not the pipeline's
    assert first.locator("g.trace.bars g.point path").count() == len(info["children"])
    assert set(info["children"]) <= set(first.inner_text().split("\n"))  # each bar labelled
    screenshot(page, "chart_view_first.png")
    search = page.get_by_placeholder("Search metric charts")
    search.fill(METRIC)
    assert search.input_value() == METRIC
    card = cards.filter(has=page.get_by_text(METRIC, exact=True))
    card.first.wait_for()
    assert card.count() == 1
    bars = card.locator("g.trace.bars g.point path")
    bars.nth(len(info["children"]) - 1).wait_for()
    assert bars.count() == len(info["children"])  # final metrics at one step: a bar per model
    labels = card.first.inner_text().split("\n")
    assert set(info["children"]) <= set(labels), labels
    card.first.scroll_into_view_if_needed()
    screenshot(page, "chart_view.png")


def test_logged_model_page_is_named_after_its_model(served_store: tuple[str, dict], page: Any) -> None:
    url, info = served_store
    name = info["best"]
    _, value, model_id = info["children"][name]
    page.goto(f"{url}/#/experiments/{info['experiment_id']}/models/{model_id}")
    page.get_by_role("heading", name=name, exact=True).first.wait_for()
    close_assistant(page)
    row = page.locator("[role=row]", has_text=METRIC).filter(has_text=":test")
    row.first.wait_for()  # the test metric, linked to the test data
    assert any(f"{value:.6f}"[:6] in t for t in row.all_inner_texts()), row.all_inner_texts()
    screenshot(page, "logged_model.png")
