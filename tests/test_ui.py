"""The MLflow UI shows a pipeline's runs: one child run per model, with test/ndcg_at_100.

Builds the store with the real quickstart pipeline (``pipelines/quickstart.yaml``, every model,
fewer epochs), serves it with ``mlflow server`` and drives headless Chromium with Playwright.
Needs ``/usr/bin/chromium`` (``apt-get install chromium``). Run alone with ``pytest -m ui``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_COPY = Path("/tmp/recvae_ui.png")
METRIC = "test/ndcg_at_100"

pytestmark = pytest.mark.ui


REPO = Path(__file__).resolve().parents[1]


def build_store(db: Path, work: Path) -> dict[str, object]:
    """Run the real quickstart pipeline (fewer epochs) into ``db``: a parent run, a child per model."""
    from mlflow.tracking import MlflowClient

    from recvae.config import load_config
    from recvae.pipeline import run_pipeline

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
    children = {o.run_name: (o.run_id, o.metrics[METRIC]) for o in outcomes}
    first = MlflowClient(f"sqlite:///{db}").get_run(outcomes[0].run_id)
    return {
        "experiment_id": first.info.experiment_id,
        "parent": first.data.tags["mlflow.parentRunId"],
        "parent_name": cfg.name,
        "children": children,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not up after {limit:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group, started by this test)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def served_store(tmp_path: Path) -> Iterator[tuple[str, dict[str, object]]]:
    """The store, served by ``mlflow server`` on a free port; the server is always stopped."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):  # .ci/run installs it: a missing browser there is a failure
            pytest.fail(f"{CHROMIUM} not found although CI=true; .ci/run should have installed it")
        pytest.skip(f"{CHROMIUM} not found: install it with `apt-get install -y chromium`")
    pytest.importorskip("playwright.sync_api")
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
        wait_until_up(url, proc, log)
        yield url, info
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(store_dir, ignore_errors=True)


def test_runs_page_shows_one_run_per_model_with_ndcg(
    served_store: tuple[str, dict], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    url, info = served_store
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"{url}/#/experiments/{info['experiment_id']}/runs")
            parent = page.locator("[role=row]", has_text=str(info["parent_name"])).first
            parent.wait_for()
            # child runs sit collapsed under their parent: expand it
            parent.locator("button[data-component-id*='runnamecellrenderer']").click()
            models = list(info["children"])
            for name in models:  # exactly one run per model, nested under the pipeline run
                link = page.get_by_role("link", name=name, exact=True)
                link.wait_for()
                assert link.count() == 1, name
            page.get_by_text(f"{len(models) + 1} matching runs").wait_for()

            # metric columns are opt-in in MLflow 3: add test/ndcg_at_100 from "Columns"
            page.get_by_role("button", name="Columns").click()
            page.get_by_placeholder("Search columns").fill(METRIC)
            page.get_by_text(METRIC, exact=True).first.click()
            page.keyboard.press("Escape")
            close = page.get_by_role("button", name="Close")  # the MLflow Assistant side panel
            if close.count():
                close.first.click()

            col = f"metrics.`{METRIC}`"
            page.locator(f"[role=columnheader][col-id='{col}']").first.wait_for()
            for name, (run_id, value) in info["children"].items():
                row = f"[role=row][row-id='{run_id}']"
                cell = page.locator(f"{row} [role=gridcell][col-id='{col}']")
                cell.first.wait_for()
                shown = cell.first.inner_text().strip()
                assert float(shown) == pytest.approx(value, rel=1e-6), (name, shown, value)
            cell.first.scroll_into_view_if_needed()

            shot = tmp_path / "mlflow_runs.png"
            page.screenshot(path=str(shot))
            shutil.copyfile(shot, SCREENSHOT_COPY)
        finally:
            browser.close()
