"""The MLflow UI shows a pipeline's runs: one child run per model, with test/ndcg_at_100.

Builds a small store through ``recvae.tracking.Tracker`` (a parent run, a child run per model,
on a tiny dataset), serves it with ``mlflow server`` and drives headless Chromium with Playwright.
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

import numpy as np
import pytest
import scipy.sparse as sp

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_COPY = Path("/tmp/recvae_ui.png")
METRIC = "test/ndcg_at_100"
MODELS = ("popularity", "ease")

pytestmark = pytest.mark.ui


def _csr(rows: list[list[int]], n_items: int = 10) -> sp.csr_matrix:
    m = sp.lil_matrix((len(rows), n_items), dtype=np.float32)
    for r, items in enumerate(rows):
        m[r, items] = 1.0
    return m.tocsr()


def tiny_dataset():  # noqa: ANN201 - imports stay inside so a skip costs nothing
    from recvae.data.dataset import Dataset, Part

    return Dataset(
        train=_csr([[0, 1, 2], [1, 2, 3, 4], [0, 1, 5, 6], [5, 6, 7], [2, 3, 8, 9]]),
        train_users=np.arange(5),
        validation=Part(fold_in=_csr([[0, 1, 7]]), holdout=_csr([[2]]), users=np.array([5])),
        test=Part(
            fold_in=_csr([[1, 2, 3], [5, 6]]), holdout=_csr([[4], [7]]), users=np.array([6, 7])
        ),
        user_ids=np.array([f"user-{i}" for i in range(8)], dtype=object),
        item_ids=np.arange(500, 510),
        manifest={"name": "tiny-ui", "protocol": "strong", "key": "tiny-ui-0001"},
    )


def build_store(db: Path) -> dict[str, object]:
    """A parent run with one child run per model, logged through the Tracker like a pipeline."""
    from recvae.evaluation import evaluate
    from recvae.models.base import EpochReport
    from recvae.models.ease import EASE
    from recvae.models.popularity import Popularity
    from recvae.tracking import Tracker

    ds = tiny_dataset()
    tracker = Tracker(f"sqlite:///{db}")
    children: dict[str, tuple[str, float]] = {}
    with tracker.start_pipeline("ui-pipeline", dataset=ds, config={"models": list(MODELS)}) as run:
        for name in MODELS:
            model = Popularity() if name == "popularity" else EASE(l2=1.0)
            with tracker.start_model(name, params={"model": model.params()}) as child:
                callback = tracker.epoch_callback()
                model.fit(ds, callbacks=[callback])
                callback(EpochReport(1, {"train/loss": 1.0, "val/ndcg_at_100": 0.5}))
                metrics = evaluate(model.score, ds.test, ks=(20, 100)).as_metrics("test")
                tracker.log_final(metrics)
                children[name] = (child.info.run_id, metrics[METRIC])
    return {"experiment_id": run.info.experiment_id, "parent": run.info.run_id,
            "children": children}


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
        info = build_store(db)  # while the server boots (~20 s): it only reads at start-up
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
            parent = page.locator("[role=row]", has_text="ui-pipeline").first
            parent.wait_for()
            # child runs sit collapsed under their parent: expand it
            parent.locator("button[data-component-id*='runnamecellrenderer']").click()
            for name in MODELS:  # exactly one run per model, nested under the pipeline run
                link = page.get_by_role("link", name=name, exact=True)
                link.wait_for()
                assert link.count() == 1, name
            page.get_by_text(f"{len(MODELS) + 1} matching runs").wait_for()

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
