"""recvae.run.search through the pipeline: trials as nested MLflow runs, pruned trials
marked, the best params in the final model, the test set scored once, studies that resume."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest

import recvae.run.fit
import recvae.run.search
import recvae.run.steps
from recvae import cli
from recvae.config import load_config
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.models.autoencoders import MultDAE
from recvae.models.ease import EASE
from recvae.run.pipeline import run_pipeline
from recvae.search.spec import SearchSpec, parse_named
from recvae.search.study import make_sampler

STUDY = "search-test:tiny:{}"


def _study(tmp_path: Path, run_name: str) -> optuna.Study:
    return optuna.load_study(
        study_name=STUDY.format(run_name), storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    )


def _spy_fits(monkeypatch: pytest.MonkeyPatch, cls: type) -> list[dict]:
    """Record each fit's params and training nnz."""
    fits: list[dict] = []
    real = cls.fit

    def spy(self, dataset, **kwargs):  # noqa: ANN001, ANN003, ANN202
        fits.append({**self.params(), "nnz": dataset.train.nnz})
        return real(self, dataset, **kwargs)

    monkeypatch.setattr(cls, "fit", spy)
    return fits


def _spy_test_scoring(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> list[str]:
    """Record which part every evaluation scores ('test', 'validation' or 'other'), in every
    module that evaluates (the pipeline, the search, the autoencoders' training loop)."""
    import recvae.models.autoencoders.training as training

    parts: list[str] = []
    real = recvae.run.fit.evaluate

    def same(a, b) -> bool:  # noqa: ANN001
        return a.shape == b.shape and (a != b).nnz == 0

    def spy(score, part, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        ds = Dataset.load(data_dir)
        parts.append(
            "test" if same(part.holdout, ds.test.holdout) and same(part.fold_in, ds.test.fold_in)
            else "validation" if same(part.holdout, ds.validation.holdout) else "other"
        )
        return real(score, part, *args, **kwargs)

    for module in (recvae.run.fit, recvae.run.steps, recvae.run.search, training):
        monkeypatch.setattr(module, "evaluate", spy)
    return parts


# lr 1e-2 learns the popular items within an epoch (validation NDCG@100 ≈ 0.27 on this log);
# lr 1e-7 stays at the random start (≈ 0.09): the threshold pruner stops it after epoch 1,
# whichever order the grid takes them in.
PRUNED_BY_THRESHOLD = {
    "model": "mult-dae",
    "params": {"epochs": 3, "batch_size": 100},
    "search": {"lr": {"choices": [1.0e-2, 1.0e-7]}},
    "trials": 2,
    "sampler": "grid",
    "pruner": {"name": "threshold", "lower": 0.15, "n_warmup_steps": 0},
}


def test_trials_are_nested_runs_and_the_best_trials_model_is_the_final_one(
    tmp_path: Path, write_pipeline: Callable[..., Path], tiny_log: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fits = _spy_fits(monkeypatch, MultDAE)
    parts = _spy_test_scoring(monkeypatch, tiny_log[1])
    cfg = load_config(write_pipeline([PRUNED_BY_THRESHOLD]))
    outcome, = run_pipeline(cfg, show_progress=False)
    assert outcome.ok, outcome.error
    study = _study(tmp_path, "mult-dae")
    states = {t.number: t.state for t in study.trials}
    assert sorted(s.name for s in states.values()) == ["COMPLETE", "PRUNED"]
    best = study.best_trial
    assert best.params["lr"] == 1.0e-2

    # without refit the best trial's fitted model is the final one: no third fit
    assert len(fits) == 2
    assert parts.count("test") == 1, parts  # the final model, once
    assert parts[-1] == "test"

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model_run = client.get_run(outcome.run_id)
    trials = client.search_runs(
        [model_run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.run_id}'",
    )
    assert len(trials) == len(study.trials) == 2
    for run in trials:
        number = int(run.data.tags["recvae.trial_number"])
        state = states[number].name
        assert run.data.tags["recvae.trial_state"] == state
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[state]
        assert float(run.data.params["model.lr"]) == study.trials[number].params["lr"]
        curve = client.get_metric_history(run.info.run_id, "val_curve/ndcg_at_100")
        epochs = sorted(m.step for m in curve if m.step <= 3)
        assert epochs == ([1] if state == "PRUNED" else [1, 2, 3]), epochs

    # the model run: the best params, search counts, the final model's val/test metrics
    params, metrics = model_run.data.params, model_run.data.metrics
    assert float(params["model.lr"]) == 1.0e-2 and params["search.best_trial"] == str(best.number)
    assert params["search.sampler"] == "grid" and params["search.trials"] == "2"
    assert metrics["search/pruned"] == 1 and metrics["search/complete"] == 1
    assert metrics["val/ndcg_at_100"] == pytest.approx(best.value)
    assert metrics["test/ndcg_at_100"] == outcome.metrics["test/ndcg_at_100"]
    saved = json.loads((Path(outcome.model_dir) / "recvae_model.json").read_text())
    assert saved["params"]["lr"] == 1.0e-2 and saved["params"]["epochs"] == 3
    assert outcome.search["best_trial"] == best.number and outcome.search["pruned"] == 1


def test_refit_uses_the_best_params_and_epoch_and_scores_test_once(
    tmp_path: Path, write_pipeline: Callable[..., Path], tiny_log: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fits = _spy_fits(monkeypatch, MultDAE)
    parts = _spy_test_scoring(monkeypatch, tiny_log[1])
    block = {
        "model": "mult-dae", "params": {"epochs": 4, "batch_size": 100, "lr": 0.01},
        "search": {"dropout": {"low": 0.1, "high": 0.7}}, "trials": 2, "sampler": "random",
        "pruner": "none",
    }
    cfg = load_config(write_pipeline([block], refit=True))
    outcome, = run_pipeline(cfg, track=False, show_progress=False)
    assert outcome.ok, outcome.error
    best = _study(tmp_path, "mult-dae").best_trial
    assert len(fits) == 3  # two trials, then the refit
    trial_nnz, refit = fits[0]["nnz"], fits[2]
    assert refit["nnz"] > trial_nnz  # training + validation
    assert refit["dropout"] == best.params["dropout"] and refit["lr"] == 0.01
    assert refit["epochs"] == best.user_attrs["recvae.best_epoch"] == outcome.refit_epochs
    assert refit["patience"] is None
    assert parts.count("test") == 1 and parts[-1] == "test", parts
    saved = json.loads((Path(outcome.model_dir) / "recvae_model.json").read_text())
    assert saved["params"]["dropout"] == best.params["dropout"]
    assert saved["params"]["epochs"] == outcome.refit_epochs
    # the validation metrics come from the best trial's model, fitted without validation rows
    assert outcome.metrics["val/ndcg_at_100"] == pytest.approx(best.value)


def test_a_resumed_search_whose_best_trial_changed_refits_afresh(
    tmp_path: Path, write_pipeline: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Resuming a finished search that gained a better trial (here: forced) must not meet the
    old best's refit checkpoint, whose params differ; the same best resumes its own refit."""
    block = {
        "model": "mult-dae", "params": {"epochs": 2, "batch_size": 100, "lr": 0.01},
        "search": {"dropout": {"low": 0.1, "high": 0.7}}, "trials": 2, "sampler": "random",
        "pruner": "none",
    }
    argv = ["run", str(write_pipeline([block], refit=True)), "--no-track", "--quiet"]
    assert cli.main(argv) == 0
    first = _study(tmp_path, "mult-dae").best_trial
    other = next(t for t in _study(tmp_path, "mult-dae").trials if t.number != first.number)
    assert other.params["dropout"] != first.params["dropout"]
    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(recvae.run.search, "_best_trial", lambda *a: other)
        assert cli.main([*argv, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "[mult-dae refit] epoch   2" in out  # refitted afresh, with the new best's params
    (model,) = json.loads((tmp_path / "runs" / "results.json").read_text())["models"]
    assert model["search"]["best_trial"] == other.number
    saved = json.loads((Path(model["model_dir"]) / "recvae_model.json").read_text())
    assert saved["params"]["dropout"] == other.params["dropout"]
    checkpoints = tmp_path / "runs" / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} == {
        f"mult-dae.refit.trial{first.number}", f"mult-dae.refit.trial{other.number}"}
    # the original best again: its refit is in its checkpoint, no epoch is trained
    assert cli.main([*argv, "--resume"]) == 0
    assert "[mult-dae refit] epoch" not in capsys.readouterr().out


def test_resume_continues_a_study_and_a_plain_run_starts_afresh(
    tmp_path: Path, write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str],
) -> None:
    block = {"model": "ease", "search": "default", "sampler": "random"}
    path = write_pipeline([block], search={"trials": 2})
    argv = ["run", str(path), "--no-track", "--quiet"]
    assert cli.main(argv) == 0
    assert len(_study(tmp_path, "ease").trials) == 2
    capsys.readouterr()
    assert cli.main([*argv, "--resume", "--set", "search.trials=3"]) == 0
    out = capsys.readouterr().out
    assert "2/3 trials done" in out and "[ease trial 2]" in out and "[ease trial 1]" not in out
    study = _study(tmp_path, "ease")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    # the searched model's fit time is all three trials', not only the one run by this process
    (ease,) = json.loads((tmp_path / "runs" / "results.json").read_text())["models"]
    trial_seconds = sum(t.duration.total_seconds() for t in study.trials)
    assert ease["fit_seconds"] == pytest.approx(trial_seconds)
    assert ease["fit_seconds"] > study.trials[2].duration.total_seconds()
    assert ease["search"]["trial_seconds"] == pytest.approx(trial_seconds)
    # the best trial's saved model is the final model: a finished search resumes to it
    best = json.loads((tmp_path / "runs" / "search" / "ease" / "best.json").read_text())
    assert best["trial"] == study.best_trial.number
    assert cli.main([*argv, "--set", "search.trials=1"]) == 0
    assert "starting afresh (3 earlier trials deleted" in capsys.readouterr().out
    assert len(_study(tmp_path, "ease").trials) == 1


def test_a_changed_search_does_not_join_the_old_study(
    tmp_path: Path, write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_pipeline([{"model": "ease", "search": "default", "trials": 1}])
    assert cli.main(["run", str(path), "--no-track", "--quiet"]) == 0
    changed = write_pipeline([{"model": "ease", "search": {"l2": {"low": 1, "high": 10}}, "trials": 1}])
    assert cli.main(["run", str(changed), "--no-track", "--quiet", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "was made for another search (it differs in space)" in err


def test_a_shared_storage_is_joined_with_resume_and_never_deleted(
    tmp_path: Path, write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    path = write_pipeline([{"model": "ease", "search": "default"}],
                          search={"storage": url, "trials": 1})
    assert cli.main(["run", str(path), "--no-track", "--quiet"]) == 0
    assert cli.main(["run", str(path), "--no-track", "--quiet"]) == 1
    assert "already has 1 trials; run with --resume" in capsys.readouterr().err
    assert cli.main(["run", str(path), "--no-track", "--quiet", "--resume",
                     "--set", "search.trials=2"]) == 0
    study = optuna.load_study(study_name=STUDY.format("ease"), storage=url)
    assert len(study.trials) == 2
    assert not (tmp_path / "runs" / "optuna.db").exists()


def test_a_failing_trial_counts_and_the_search_goes_on(
    tmp_path: Path, write_pipeline: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = EASE.fit

    def diverge(self, dataset, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if self.l2 < 10:
            raise RecvaeError("ease: singular for this λ")
        return real(self, dataset, **kwargs)

    monkeypatch.setattr(EASE, "fit", diverge)
    block = {"model": "ease", "search": {"l2": {"choices": [1.0, 100.0]}}, "sampler": "grid",
             "trials": 2}
    outcome, = run_pipeline(load_config(write_pipeline([block])), track=False, show_progress=False)
    assert outcome.ok, outcome.error
    study = _study(tmp_path, "ease")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
    failed, = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed.user_attrs["recvae.error"] == "ease: singular for this λ"
    assert outcome.search["failed"] == 1 and study.best_trial.params["l2"] == 100.0

    monkeypatch.setattr(EASE, "fit", lambda self, ds, **kw: diverge(self.__class__(l2=1.0), ds))
    outcome, = run_pipeline(load_config(write_pipeline([block])), track=False, show_progress=False)
    assert not outcome.ok
    assert "no trial completed (0 pruned, 2 failed, 0 lost); first error: ease: singular" in outcome.error


def _draws(study: optuna.Study, n: int) -> list[float]:
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=n)
    return [t.params["x"] for t in study.trials]


def test_trials_draw_from_the_seed_and_their_number() -> None:
    spec = SearchSpec(space={}, trials=3, timeout_minutes=None, sampler=parse_named("random", {
        "random": ()}, "sampler"), pruner=parse_named("none", {"none": ()}, "pruner"),
        storage=None, seed=7)
    first = _draws(optuna.create_study(sampler=make_sampler(spec)), 3)
    assert _draws(optuna.create_study(sampler=make_sampler(spec)), 3) == first  # reproducible
    assert len(set(first)) == 3
    # a second process joining the study (its own sampler, same seed) draws new points
    storage = optuna.storages.InMemoryStorage()
    a = optuna.create_study(storage=storage, study_name="s", sampler=make_sampler(spec))
    _draws(a, 2)
    b = optuna.load_study(storage=storage, study_name="s", sampler=make_sampler(spec))
    joined = _draws(b, 1)
    assert joined[:3] == first[:3] and not np.isclose(joined[2], first[:2]).any()


def test_the_blocks_own_point_and_the_defaults_run_first(
    tmp_path: Path, write_pipeline: Callable[..., Path],
) -> None:
    """A study starts from the block's own values, then the model's defaults: a search cannot
    end below either (here both outside the random draws)."""
    block = {"model": "ease", "params": {"l2": 3.0}, "trials": 3, "sampler": "random",
             "search": {"l2": {"low": 1.0, "high": 1.0e4, "log": True}}}
    outcome, = run_pipeline(load_config(write_pipeline([block])), show_progress=False)
    assert outcome.ok, outcome.error
    trials = sorted(_study(tmp_path, "ease").trials, key=lambda t: t.number)
    assert [t.params["l2"] for t in trials[:2]] == [3.0, 500.0]  # queued, in that order: EASE's λ 500
    assert trials[0].system_attrs.get("fixed_params") == {"l2": 3.0}
    assert "fixed_params" not in trials[2].system_attrs  # then the sampler


def test_timeout_minutes_prunes_a_long_trial_at_an_epoch_boundary(
    tmp_path: Path, write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first trial starts within the budget (12 s) and its first epoch ends past it (it
    takes 15 s here): the trial is pruned there, not after its 50 epochs."""
    real = MultDAE.fit

    def slow_first_epoch(self, dataset, *, callbacks=(), **kwargs):  # noqa: ANN001, ANN003, ANN202
        def wait(report) -> None:  # noqa: ANN001
            if report.epoch == 1:
                time.sleep(15)
        return real(self, dataset, callbacks=[wait, *callbacks], **kwargs)

    monkeypatch.setattr(MultDAE, "fit", slow_first_epoch)
    block = {"model": "mult-dae", "params": {"epochs": 50, "batch_size": 100}, "trials": 5,
             "search": {"lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}}, "timeout_minutes": 0.2}
    outcome, = run_pipeline(load_config(write_pipeline([block])), show_progress=False)
    study = _study(tmp_path, "mult-dae")
    (trial,) = study.trials  # one trial: the search stopped with it
    assert trial.state.name == "PRUNED" and max(trial.intermediate_values) == 1  # after epoch 1
    out = capsys.readouterr().out
    assert "PRUNED (timeout_minutes reached at epoch 1)" in out and "timeout_minutes reached after 1" in out
    assert not outcome.ok and "no trial completed (1 pruned" in outcome.error
