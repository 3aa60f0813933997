"""The pipeline runner: subsets, failures isolated per model, the summary table, exit status."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from recvae import cli
from recvae.config import load_config
from recvae.models.autoencoders.training import CHECKPOINT_FILE
from recvae.models.popularity import Popularity
from recvae.run.pipeline import run_pipeline
from recvae.run.report import results_table

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, models: str) -> object:
    return load_config(
        REPO / "pipelines" / "quickstart.yaml",
        {
            "data.path": str(REPO / "data" / "ml-latest-small.zip"),
            "data.out": str(tmp_path / "data"),
            "output_dir": str(tmp_path / "runs"),
            "models": [{"model": m} for m in models.split(",")],
            "recommend.k": 5,
        },
    )


def test_a_failing_model_does_not_stop_the_others(tmp_path: Path, monkeypatch, capsys) -> None:
    def boom(self, dataset, **kwargs):  # noqa: ANN001, ANN003, ANN202
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Popularity, "fit", boom)
    cfg = _config(tmp_path, "popularity,item-knn")
    outcomes = run_pipeline(cfg, track=False, show_progress=False)
    assert [o.ok for o in outcomes] == [False, True]
    assert "disk on fire" in outcomes[0].error
    assert outcomes[1].metrics["test/ndcg_at_100"] > 0
    recs = pd.read_parquet(outcomes[1].topk_path)
    assert recs.groupby("user_id").size().eq(5).all()
    table = results_table(outcomes)
    assert "FAILED" in table and "item-knn" in table
    assert "popularity] FAILED: RuntimeError: disk on fire" in capsys.readouterr().err


def test_cli_run_exits_non_zero_and_names_the_failed_model(tmp_path: Path, monkeypatch, capsys) -> None:
    def boom(self, dataset, **kwargs):  # noqa: ANN001, ANN003, ANN202
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Popularity, "fit", boom)
    argv = [
        "run", str(REPO / "pipelines" / "quickstart.yaml"), "--no-track", "--quiet",
        "--models", "popularity,item-knn",
        "--set", f"data.path={REPO / 'data' / 'ml-latest-small.zip'}",
        "--set", f"data.out={tmp_path / 'data'}", "--set", f"output_dir={tmp_path / 'runs'}",
    ]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "1 model(s) failed: popularity: RuntimeError: disk on fire" in captured.err
    assert "item-knn" in captured.out and "recall_at_20" in captured.out


def test_models_subset_and_unknown_name(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "popularity,item-knn")
    outcomes = run_pipeline(cfg, only=["item-knn"], track=False, show_progress=False)
    assert [o.run_name for o in outcomes] == ["item-knn"]
    from recvae.errors import RecvaeError

    with pytest.raises(RecvaeError, match="'ease' is not in"):
        run_pipeline(cfg, only=["ease"], track=False, show_progress=False)


def test_refit_retrains_on_validation_for_the_selected_epochs(tmp_path: Path, monkeypatch) -> None:
    from recvae.models.autoencoders import MultDAE

    fits: list[tuple[int, int, int]] = []  # (training nnz, epochs, validation targets)
    real_fit = MultDAE.fit

    def spy(self, dataset, **kwargs):  # noqa: ANN001, ANN003, ANN202
        fits.append((dataset.train.nnz, self.epochs, dataset.validation.holdout.nnz))
        return real_fit(self, dataset, **kwargs)

    monkeypatch.setattr(MultDAE, "fit", spy)
    cfg = _config(tmp_path, "mult-dae")
    cfg.models[0].params.update(epochs=4, batch_size=100)
    cfg.refit = True
    outcome, = run_pipeline(cfg, track=False, show_progress=False)
    assert outcome.ok, outcome.error
    from recvae.data.dataset import Dataset

    ds = Dataset.load(tmp_path / "data")
    v = ds.validation
    assert fits[0] == (ds.train.nnz, 4, v.holdout.nnz)
    assert fits[1] == (ds.train.nnz + v.fold_in.nnz + v.holdout.nnz, outcome.refit_epochs, 0)
    assert 1 <= outcome.refit_epochs <= 4
    saved = MultDAE.load(outcome.model_dir)
    assert saved.epochs == saved.best_epoch_ == outcome.refit_epochs  # no validation: the last
    assert outcome.metrics["test/ndcg_at_100"] > 0 and "val/ndcg_at_100" in outcome.metrics
    assert outcome.refit_seconds is not None and outcome.refit_seconds > 0


def test_resumed_pipeline_continues_from_checkpoints(tmp_path: Path, capsys) -> None:
    cfg = _config(tmp_path, "mult-dae,popularity")
    cfg.models[0].params.update(epochs=3, batch_size=100)
    first = run_pipeline(cfg, track=False, show_progress=False)
    assert [o.ok for o in first] == [True, True]
    assert "[mult-dae] epoch   3" in capsys.readouterr().out  # epochs are printed when trained
    again = run_pipeline(cfg, track=False, show_progress=False, resume=True)
    out = capsys.readouterr().out
    assert [o.ok for o in again] == [True, True]  # popularity has no checkpoints: simply refitted
    assert "[mult-dae] epoch" not in out  # all 3 epochs were in the checkpoint
    for a, b in zip(first, again, strict=True):
        assert a.metrics["test/ndcg_at_100"] == b.metrics["test/ndcg_at_100"], a.run_name
    # the resumed fit trained nothing, yet reports the seconds its checkpoint carried
    saved = torch.load(Path(cfg.output_dir) / "checkpoints" / "mult-dae" / CHECKPOINT_FILE,
                       weights_only=True)["state"]
    epochs_own = sum(h["epoch_seconds"] + h["val_seconds"] for h in saved["history"])
    assert again[0].fit_seconds >= saved["seconds"] >= epochs_own > 0


def raw_ratings() -> pd.DataFrame:
    import zipfile

    with zipfile.ZipFile(REPO / "data" / "ml-latest-small.zip") as zf, zf.open(
        "ml-latest-small/ratings.csv"
    ) as f:
        return pd.read_csv(f)


def test_terminal_lines_table_and_shippable_topk(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """One line per epoch for Mult-DAE, one per fit for the baselines (BPR's 20 epochs
    included), a top-k line per model, a labeled table; top-k files hold no pair of the raw log
    and cover the users preprocessing dropped, marked as fallback."""
    cfg = _config(tmp_path, "mult-dae,bpr,popularity")
    cfg.models[0].params.update(epochs=2, batch_size=100)
    cfg.models[1].params.update(iterations=20, factors=8)
    outcomes = run_pipeline(cfg, track=False, show_progress=True)  # bars: terminals only
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("[mult-dae] epoch")][1].startswith(
        "[mult-dae] epoch   2")
    bpr = [line for line in lines if line.startswith("[bpr]")]
    assert len(bpr) == 2 and bpr[0].startswith("[bpr] fit: 20 epochs in ") and "train/auc" in bpr[0]
    assert bpr[1].startswith("[bpr] top-5: 610 users (603 from the model, 7 from the popularity ")
    assert [line for line in lines if line.startswith("[popularity]")][0].startswith(
        "[popularity] fit: ")
    assert "it/s" not in out and "\r" not in out  # no progress bar when not on a terminal

    table = results_table(outcomes, ["test/recall_at_20", "test/ndcg_at_100"]).splitlines()
    assert table[0].startswith("test metrics, 59 users (mean ± standard error); val/ndcg_at_100")
    assert table[1].split() == ["model", "val/ndcg_at_100", "recall_at_20", "ndcg_at_100", "fit_s",
                                "status"]
    dae = outcomes[0].metrics
    assert f"{dae['test/ndcg_at_100']:.4f} ± {dae['test/ndcg_at_100_stderr']:.4f}" in table[2]
    assert f"{dae['val/ndcg_at_100']:.4f}" in table[2].split()[1]

    raw = raw_ratings()
    pairs = pd.MultiIndex.from_frame(raw[["userId", "movieId"]])
    for o in outcomes:
        recs = pd.read_parquet(o.topk_path)
        assert not pd.MultiIndex.from_frame(recs[["user_id", "item_id"]]).isin(pairs).any(), o.run_name
        assert set(recs["user_id"]) == set(raw["userId"])  # every user of the raw log
        fallback = set(recs.loc[recs["source"] == "fallback", "user_id"])
        assert len(fallback) == 7 and recs.groupby("user_id").size().eq(5).all()


@pytest.mark.slow
def test_two_identical_runs_give_identical_metrics(tmp_path: Path) -> None:
    """Every model is reproducible run to run on CPU: seeds for ALS and BPR (one thread)."""
    outcomes = []
    for run in ("a", "b"):  # the randomized models (EASE, item-kNN and popularity are closed-form)
        cfg = _config(tmp_path / run, "mult-vae,als,bpr")
        cfg.models[0].params.update(epochs=1, batch_size=100)
        cfg.models[1].params.update(iterations=5)  # num_threads 0: every core
        cfg.models[2].params.update(iterations=20)
        outcomes.append(run_pipeline(cfg, track=False, show_progress=False))
    for a, b in zip(*outcomes, strict=True):
        assert a.ok and b.ok, (a.error, b.error)
        assert a.metrics == b.metrics, a.run_name
        pd.testing.assert_frame_equal(pd.read_parquet(a.topk_path), pd.read_parquet(b.topk_path))
