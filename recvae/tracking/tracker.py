"""The tracker: MLflow runs around the models (which know nothing of MLflow).

One experiment per dataset and protocol; a pipeline is a parent run and each model a nested child
run, so the MLflow UI's compare view lines the models up. What a child run records: flattened
params, per-epoch metrics with ``step=epoch`` (through :meth:`Tracker.epoch_callback`), final
``test/...`` and ``val/...`` metrics with the same names for every model, ``time/...`` timings,
tags (dataset digest, recvae version, device), the dataset as an MLflow input, and artifacts
(resolved config, ``metrics.json``, ``learning_curves.png``, top-k file, the pyfunc model).

Example::

    tracker = Tracker(config_uri)                     # fails fast if a server is unreachable
    with tracker.start_pipeline("quickstart", dataset=ds, config=cfg):
        with tracker.start_model("mult-vae", params=model_cfg):
            model.fit(ds, callbacks=[tracker.epoch_callback()])
            tracker.log_final(result.as_metrics("test"))
            tracker.log_model(model, ds)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

import recvae
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.models.base import Callback, EpochReport, Recommender
from recvae.tracking.artifacts import sample_name, write_head_sample
from recvae.tracking.logged_model import input_example, pip_requirements, signature
from recvae.tracking.plots import plot_learning_curves
from recvae.tracking.store import (
    check_tracking_server,
    dataset_digest,
    default_artifact_location,
    experiment_name,
    resolve_tracking_uri,
    set_tracking_uri,
    short_digest,
)
from recvae.tracking.values import finite_metrics, flatten_params, plain

MAX_BATCH = 100  # params / metrics per log_batch call
TOPK_ARTIFACT_MAX_BYTES = 50 * 2**20
TOPK_SAMPLE_ROWS = 100_000


# A search trial's state (Optuna's names) → the status its MLflow run ends with.
TRIAL_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class TrialRun:
    """The MLflow run of one search trial; set ``state`` before the run ends."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.state = "FAIL"


# --------------------------------------------------------------------------- where to track
# --------------------------------------------------------------------------- the tracker
class Tracker:
    """Logs a pipeline (parent run) and its models (nested child runs) to MLflow.

    ``uri`` is resolved with :func:`resolve_tracking_uri` and checked with
    :func:`check_tracking_server` at construction, so create the tracker before any long stage.
    ``artifact_location`` applies to experiments this tracker creates (default: see
    :func:`default_artifact_location`); the experiment is named by :func:`experiment_name`
    unless given.
    """

    def __init__(
        self,
        uri: str | None = None,
        experiment: str | None = None,
        *,
        artifact_location: str | None = None,
        check: bool = True,
    ) -> None:
        self.uri = resolve_tracking_uri(uri)
        if check:
            check_tracking_server(self.uri)
        set_tracking_uri(self.uri)
        self.experiment = experiment
        self.artifact_location = artifact_location
        self.experiment_id: str | None = None
        self.dataset: Dataset | None = None
        self.dataset_source: str | None = None
        self.device: str | None = None
        self._model: str | None = None
        self._history: list[tuple[int, dict[str, float]]] = []
        self._best_epoch: int | None = None
        self._final: dict[str, float] = {}

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    # ------------------------------------------------------------------ runs
    @contextlib.contextmanager
    def start_pipeline(
        self,
        run_name: str | None = None,
        *,
        dataset: Dataset | None = None,
        dataset_source: str | os.PathLike | None = None,
        config: Mapping[str, Any] | Any | None = None,
        experiment: str | None = None,
        description: str | None = None,
        device: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[mlflow.ActiveRun]:
        """Parent run of a pipeline: logs the flattened ``config`` as params and as
        ``config.yaml``, the dataset input and tags. Model runs started inside nest under it."""
        if dataset is not None:
            self.dataset = dataset
            self.dataset_source = None if dataset_source is None else str(dataset_source)
        self.device = device or self.device
        self._set_experiment(experiment)
        with mlflow.start_run(
            run_name=run_name, experiment_id=self.experiment_id, description=description
        ) as run:
            mlflow.set_tags({**self._base_tags(), "recvae.run_type": "pipeline", **(tags or {})})
            if config is not None:
                self.log_params(config)
                self.log_config(config)
            if self.dataset is not None:
                self.log_dataset(self.dataset, source=self.dataset_source)
            yield run

    @contextlib.contextmanager
    def start_model(
        self,
        name: str,
        *,
        params: Mapping[str, Any] | Any | None = None,
        config: Mapping[str, Any] | Any | None = None,
        description: str | None = None,
        device: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[mlflow.ActiveRun]:
        """Child run named after the model (nested under the active pipeline run, if any).

        ``params`` are flattened and logged; ``config`` (the model's resolved config) is logged
        as ``config.yaml``. On success the run gets ``metrics.json`` (final metrics, timings,
        per-epoch history) and ``learning_curves.png`` (if epochs were reported).
        """
        self._model, self._history, self._best_epoch, self._final = name, [], None, {}
        if mlflow.active_run() is None:
            self._set_experiment(None)
        dev = device or self.device or "auto"
        dev = _default_device() if dev == "auto" else dev
        with mlflow.start_run(
            run_name=name, nested=True, experiment_id=self.experiment_id,
            description=description or f"recvae model {name}",
        ) as run:
            mlflow.set_tags(
                {**self._base_tags(), "recvae.run_type": "model", "recvae.model": name,
                 "recvae.device": dev, **(tags or {})}
            )
            if params:
                self.log_params(params)
            if config is not None:
                self.log_config(config)
            if self.dataset is not None:
                self.log_dataset(self.dataset, source=self.dataset_source)
            yield run
            self._finish_model()

    @contextlib.contextmanager
    def start_trial(
        self, number: int, *, params: Mapping[str, Any] | Any | None = None,
    ) -> Iterator[TrialRun]:
        """A hyper-parameter search trial: a run nested under the active model run, named
        ``<model> trial <number>``, holding its params and (through ``epoch_callback(record=
        False)`` and :meth:`log_trial_result`) its validation curve and metrics.

        The caller sets the yielded :class:`TrialRun`'s ``state``: ``COMPLETE`` ends the run
        FINISHED, ``PRUNED`` KILLED, anything else (an exception) FAILED; the state is also the
        tag ``recvae.trial_state``, and the number the tag ``recvae.trial_number``.
        """
        run = mlflow.start_run(
            run_name=f"{self._model or 'model'} trial {number}", nested=True,
            experiment_id=self.experiment_id,
        )
        trial = TrialRun(run.info.run_id)
        try:
            mlflow.set_tags({**self._base_tags(), "recvae.run_type": "trial",
                             "recvae.model": self._model or "", "recvae.trial_number": str(number)})
            if params:
                self.log_params(params)
            yield trial
        finally:
            mlflow.set_tag("recvae.trial_state", trial.state)
            mlflow.end_run(status=TRIAL_STATUS.get(trial.state, "FAILED"))

    def log_trial_result(self, metrics: Mapping[str, float], *, step: int) -> None:
        """A trial's final metrics (its model's validation scores, fit seconds) at ``step``."""
        values = finite_metrics(metrics)
        if values:
            mlflow.log_metrics(values, step=step)

    def close_stale_run(self, run_id: str, reason: str) -> None:
        """End a run left RUNNING by a process that died (status FAILED, tag ``recvae.failed``)."""
        client = self.client
        try:
            if client.get_run(run_id).info.status != "RUNNING":
                return
            client.set_tag(run_id, "recvae.failed", reason)
            client.set_terminated(run_id, status="FAILED")
        except mlflow.exceptions.MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            # a run of another tracking store (a study shared by machines): not ours to close

    # ------------------------------------------------------------- logging
    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        """Log nested params flattened with dots (``model.hidden_dims``) to the active run."""
        run_id = _active_run_id()
        flat = flatten_params(params)
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), MAX_BATCH):
            self.client.log_batch(run_id, params=items[i : i + MAX_BATCH])

    def log_config(self, config: Mapping[str, Any] | Any, name: str = "config.yaml") -> None:
        """The resolved config as a YAML (or JSON, by ``name``'s suffix) artifact."""
        mlflow.log_dict(plain(config), name)

    def epoch_callback(self, *, record: bool = True) -> Callback:
        """A model callback logging each :class:`EpochReport`'s metrics with ``step=epoch``.

        Bound to the run active when it is created (so it also works from worker threads).
        ``record``: also keep the epochs for the model run's ``metrics.json``, best epoch and
        learning curves (not for a trial's run).
        """
        run_id = _active_run_id()
        client = self.client

        def on_epoch(report: EpochReport) -> None:
            values = finite_metrics(report.metrics)
            if record:
                self._history.append((report.epoch, values))
                if report.is_best:
                    self._best_epoch = report.epoch
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, int(report.epoch)) for k, v in values.items()]
            for i in range(0, len(metrics), MAX_BATCH):
                client.log_batch(run_id, metrics=metrics[i : i + MAX_BATCH])

        return on_epoch

    def log_final(self, metrics: Mapping[str, float]) -> None:
        """Final metrics (``test/ndcg_at_100``, ``val/recall_at_20``, ...): the same names for
        every model so the compare view lines them up. Also kept for ``metrics.json``.

        Logged at step = last reported epoch + 1, so that a final value is its metric's latest
        (what the runs table and compare view show) even where a per-epoch curve has the same
        name, e.g. ``val/ndcg_at_100`` of the selected epoch after the last epoch's value.
        """
        values = finite_metrics(metrics)
        self._final.update(values)
        if values:
            step = max(e for e, _ in self._history) + 1 if self._history else 0
            mlflow.log_metrics(values, step=step)

    def log_timings(
        self, *, fit_seconds: float | None = None, score_seconds: float | None = None,
        refit_seconds: float | None = None,
    ) -> None:
        """``time/fit_seconds``, ``time/score_seconds`` and (after a refit) ``time/refit_seconds``."""
        values = {
            "time/fit_seconds": fit_seconds, "time/score_seconds": score_seconds,
            "time/refit_seconds": refit_seconds,
        }
        self.log_final({k: v for k, v in values.items() if v is not None})

    def log_dataset(
        self, dataset: Dataset, *, source: str | os.PathLike | None = None,
        context: str = "training",
    ) -> None:
        """The dataset as an MLflow input (a one-row summary frame named after the dataset, with
        its digest) and the ``recvae.dataset_digest`` tag."""
        digest = dataset_digest(dataset)
        summary = pd.DataFrame([dataset.summary()])
        name = str(dataset.manifest.get("name") or "dataset")
        src = str(source) if source is not None else str(dataset.manifest.get("path") or name)
        with warnings.catch_warnings():
            # MLflow hints about integer columns and ambiguous local sources: noise here
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_pandas(summary, source=src, name=name, digest=short_digest(digest))
            mlflow.log_input(ds, context=context)
        mlflow.set_tag("recvae.dataset_digest", digest)

    def log_learning_curves(self, name: str = "learning_curves.png") -> bool:
        """Plot train loss and validation NDCG@100 (and other ``val/`` metrics) per epoch.

        Returns False (nothing logged) when no epoch was reported.
        """
        if not self._history:
            return False
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            plot_learning_curves(
                self._history, path, title=self._model or "", best=self._best_epoch
            )
            mlflow.log_artifact(str(path))
        return True

    def log_metrics_json(self, name: str = "metrics.json") -> None:
        """Final metrics, best epoch and the per-epoch history as one JSON artifact."""
        doc = {
            "model": self._model,
            "metrics": self._final,
            "best_epoch": self._best_epoch,
            "epochs": [{"epoch": e, **m} for e, m in self._history],
        }
        mlflow.log_dict(doc, name)

    def log_topk(
        self, path: str | os.PathLike, *, max_bytes: int = TOPK_ARTIFACT_MAX_BYTES,
        sample_rows: int = TOPK_SAMPLE_ROWS,
    ) -> str:
        """Log a top-k file under ``recommendations/``; above ``max_bytes`` only its first
        ``sample_rows`` rows (``<name>.sample<suffix>``) and a ``recvae.topk_path`` tag.
        Returns the artifact file name."""
        path = Path(path)
        mlflow.set_tag("recvae.topk_path", str(path.resolve()))
        if path.stat().st_size <= max_bytes:
            mlflow.log_artifact(str(path), artifact_path="recommendations")
            return path.name
        with tempfile.TemporaryDirectory() as tmp:
            sample = Path(tmp) / sample_name(path)
            write_head_sample(path, sample, sample_rows)
            mlflow.log_artifact(str(sample), artifact_path="recommendations")
        return sample.name

    def log_model(
        self,
        model: Recommender,
        dataset: Dataset | None = None,
        *,
        name: str = "model",
        k: int = 10,
        registered_model_name: str | None = None,
    ) -> mlflow.models.model.ModelInfo:
        """Log ``model`` as an MLflow pyfunc model (:class:`recvae.pyfunc.RecvaeTopK`) that maps
        a DataFrame ``user_id, item_id`` of histories to ``user_id, rank, item_id, score``.

        Optionally registers it as ``registered_model_name``. Load it with
        ``mlflow.pyfunc.load_model(info.model_uri)``; ``predict(df, params={"k": 20})``.
        """
        from recvae.pyfunc import MODEL_DIR_ARTIFACT, RecvaeTopK

        example = input_example(model, dataset or self.dataset)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's integer-column schema hint
            saved = model.save(Path(tmp) / "recvae_model")
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=RecvaeTopK(),
                artifacts={MODEL_DIR_ARTIFACT: str(saved)},
                signature=signature(k),
                input_example=example,
                pip_requirements=pip_requirements(),
                registered_model_name=registered_model_name,
                metadata={"recvae_model": model.name, "recvae_version": recvae.__version__},
            )
        return info

    # ------------------------------------------------------------- internals
    def _set_experiment(self, experiment: str | None) -> None:
        name = experiment or self.experiment
        if name is None and self.dataset is not None:
            name = experiment_name(self.dataset)
        self.experiment = name or "recvae"
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                self.client.create_experiment(
                    self.experiment,
                    artifact_location=self.artifact_location
                    or default_artifact_location(self.uri, self.experiment),
                )
            except mlflow.exceptions.MlflowException:
                pass  # created meanwhile by a concurrent pipeline
        self.experiment_id = mlflow.set_experiment(self.experiment).experiment_id

    def _base_tags(self) -> dict[str, str]:
        tags = {"recvae.version": recvae.__version__}
        commit = _git_commit()
        if commit:
            tags["recvae.git_commit"] = commit
        if self.device:
            tags["recvae.device"] = self.device
        return tags

    def _finish_model(self) -> None:
        if self._best_epoch is not None:
            mlflow.log_metric("best_epoch", self._best_epoch)
            mlflow.set_tag("recvae.best_epoch", str(self._best_epoch))
        self.log_metrics_json()
        self.log_learning_curves()


# --------------------------------------------------------------------------- helpers
def _active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RecvaeError("no active MLflow run: call inside Tracker.start_pipeline/start_model")
    return run.info.run_id


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_GIT_COMMIT: list[str | None] = []


def _git_commit() -> str | None:
    """HEAD of the git checkout recvae is imported from (an editable install), if any."""
    if not _GIT_COMMIT:
        commit = None
        git = shutil.which("git")
        if git:
            try:
                res = subprocess.run(
                    [git, "-C", str(Path(recvae.__file__).parent), "rev-parse", "HEAD"],
                    capture_output=True, text=True, timeout=2,
                )
                commit = res.stdout.strip() or None if res.returncode == 0 else None
            except (OSError, subprocess.SubprocessError):
                commit = None
        _GIT_COMMIT.append(commit)
    return _GIT_COMMIT[0]
