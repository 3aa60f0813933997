"""The tracker: MLflow runs around the models (which know nothing of MLflow), local first.

One experiment per dataset and protocol; a pipeline is a parent run and each model a nested child
run, so the MLflow UI's compare view lines the models up. What a child run records: flattened
params, per-epoch metrics with ``step=epoch`` (through :meth:`Tracker.epoch_callback`), final
``test/...`` and ``val/...`` metrics with the same names for every model, ``time/...`` timings,
tags (dataset digest, recvae version, device), the dataset as an MLflow input, and artifacts
(resolved config, ``metrics.json``, ``epochs.csv``, ``learning_curves.png``, top-k file, the
pyfunc model).

Local first: everything is written to the run's record under ``output_dir/tracking`` (see
:mod:`recvae.tracking.record`) before it is sent, and every store call goes through one
:class:`~recvae.tracking.guard.Guard`. When the store stops answering, training goes on, a
warning is printed once, and ``recvae sync OUTPUT_DIR`` sends the rest later. With ``resume``,
runs of the same name under the same parent continue in the same MLflow runs.

Example::

    tracker = Tracker(config_uri, output_dir="runs/x")  # fails fast if a server is unreachable
    with tracker.start_pipeline("quickstart", dataset=ds, config=cfg):
        with tracker.start_model("mult-vae", params=model_cfg):
            model.fit(ds, callbacks=[tracker.epoch_callback()])
            tracker.log_final(result.as_metrics("test"))
            tracker.log_model(model, ds)
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

import recvae
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.io import atomic_file
from recvae.models.base import Recommender
from recvae.reporting import Callback, EpochReport
from recvae.tracking.artifacts import sample_name, write_head_sample
from recvae.tracking.guard import Guard, bounded_call, is_http, outage_errors, probe
from recvae.tracking.logged_model import LoggedModelInfo, content_digest, input_example
from recvae.tracking.plots import plot_learning_curves
from recvae.tracking.record import RECORDS_DIR, Heartbeat, RunRecord, file_stamp, list_records, now_ms
from recvae.tracking.store import (
    check_tracking_server,
    dataset_digest,
    default_artifact_location,
    experiment_name,
    open_store,
    resolve_tracking_uri,
    set_tracking_uri,
    short_digest,
)
from recvae.tracking.sync import OFFLINE_TAG, StoreWriter, close_dead
from recvae.tracking.values import curve_metrics, finite_metrics, flatten_params, plain

TOPK_ARTIFACT_MAX_BYTES = 50 * 2**20
TOPK_SAMPLE_ROWS = 100_000


@dataclass(frozen=True)
class RunInfo:
    """The MLflow identity of a tracked run (``run_id`` is None while the store is away)."""

    run_id: str | None
    run_name: str
    experiment_id: str | None


class TrackedRun:
    """An open run: what :meth:`Tracker.start_pipeline`, :meth:`Tracker.start_model` and
    :meth:`Tracker.start_run` yield. ``record`` is its local record; ``history`` its learning
    curve so far (restored from the record when the run is reopened)."""

    def __init__(self, record: RunRecord, parent: TrackedRun | None, reopened: bool) -> None:
        self.record = record
        self.parent = parent
        self.reopened = reopened
        self.needs_completion = reopened  # the store may hold part of what the record has
        self.end_status: str | None = None  # overrides the status the run ends with
        self.curve: dict[int, dict[str, float]] = {}
        self.best_epoch: int | None = None
        self.final: dict[str, float] = {}
        self.points = {(k, step) for k, _, _, step in record.metric_points()}
        for epoch, metrics, best in record.epochs():
            self.curve[epoch] = dict(metrics)
            if best:
                self.best_epoch = epoch

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def run_id(self) -> str | None:
        return self.record.run_id

    @property
    def info(self) -> RunInfo:
        return RunInfo(self.record.run_id, self.record.name, self.record.meta.get("experiment_id"))

    @property
    def experiment_id(self) -> str | None:
        return self.record.meta.get("experiment_id")

    @property
    def parent_run_id(self) -> str | None:
        return self.parent.run_id if self.parent is not None else None

    @property
    def history(self) -> list[tuple[int, dict[str, float]]]:
        return sorted(self.curve.items())


class TrialRun:
    """The MLflow run of one search trial (``run_id`` None while the store is away); set
    ``state`` (Optuna's COMPLETE, PRUNED or FAIL) before the run ends."""

    def __init__(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.state = "FAIL"


# A search trial's state (Optuna's names) → the status its MLflow run ends with.
TRIAL_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class Tracker:
    """Logs a pipeline (parent run) and its models (nested child runs) to MLflow, local first.

    ``uri`` is resolved with :func:`resolve_tracking_uri` and checked with
    :func:`check_tracking_server` at construction, so create the tracker before any long stage.
    ``output_dir`` holds the run records and the files each run logs (default: a new temporary
    folder, named in the outage warning); ``resume`` reopens the runs of the same name and
    parent found there instead of starting new ones. ``artifact_location`` applies to
    experiments this tracker creates (default: see :func:`default_artifact_location`); the
    experiment is named by :func:`experiment_name` unless given.
    """

    def __init__(
        self,
        uri: str | None = None,
        experiment: str | None = None,
        *,
        artifact_location: str | None = None,
        check: bool = True,
        output_dir: str | os.PathLike | None = None,
        resume: bool = False,
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
        self.resume = resume
        self.output_dir = (
            Path(output_dir) if output_dir is not None
            else Path(tempfile.mkdtemp(prefix="recvae-tracking-"))
        )
        self.records_dir = self.output_dir / RECORDS_DIR
        self.guard = Guard(
            self.uri,
            hint=f"everything is kept in {self.records_dir}; run `recvae sync {self.output_dir}` "
                 "once the store answers again",
        )
        self._writer: StoreWriter | None = None
        self._stack: list[TrackedRun] = []
        self._opened: list[TrackedRun] = []
        self._heartbeat = Heartbeat()
        self._lock = threading.RLock()
        self._swept = False
        self._marked = False

    @property
    def client(self) -> MlflowClient:
        """The store's client (a new SQLite store is created on first use)."""
        return self._store().client

    @property
    def offline(self) -> bool:
        """True once a store call failed: the rest of this process logs locally only."""
        return not self.guard.online

    @property
    def active(self) -> TrackedRun | None:
        """The innermost open run."""
        return self._stack[-1] if self._stack else None

    def use_dataset(self, dataset: Dataset, source: str | None) -> None:
        """The dataset that runs opened from now on log as their input."""
        self.dataset, self.dataset_source = dataset, source

    def not_logged(self) -> list[RunRecord]:
        """Records of runs this tracker opened that the store does not hold completely."""
        return [r.record for r in self._opened if r.record.pending]

    def offline_summary(self) -> str:
        """One line for the end of a run whose tracking went offline."""
        n = len(self.not_logged())
        return (
            f"recvae: tracking: {n} run(s) are not complete in {self.uri} (it failed: "
            f"{self.guard.error}); their records are in {self.records_dir}: run "
            f"`recvae sync {self.output_dir}` once the store answers again"
        )

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
        display_name: str | None = None,
    ) -> Iterator[TrackedRun]:
        """Parent run of a pipeline: logs the flattened ``config`` as params and as
        ``config.yaml``, the dataset input and tags. Model runs started inside nest under it.
        The MLflow run is named ``display_name`` (e.g. ``quickstart 2026-12-01 19:04``, so that
        repeated runs are told apart); ``run_name`` is what ``resume`` finds it by."""
        if dataset is not None:
            self.dataset = dataset
            self.dataset_source = None if dataset_source is None else str(dataset_source)
        self.device = device or self.device
        with self.start_run(
            run_name or "pipeline", kind="pipeline", params=config, config=config,
            experiment=experiment, description=description, tags=tags, display_name=display_name,
        ) as run:
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
    ) -> Iterator[TrackedRun]:
        """Child run named after the model (nested under the open pipeline run, if any).

        ``params`` are flattened and logged; ``config`` (the model's resolved config) is logged
        as ``config.yaml``. On success the run gets ``metrics.json`` (final metrics, timings,
        per-epoch history), ``epochs.csv`` and ``learning_curves.png`` (if epochs were reported).
        """
        dev = device or self.device or "auto"
        dev = _default_device() if dev == "auto" else dev
        with self.start_run(
            name, kind="model", params=params, config=config,
            description=description or f"recvae model {name}",
            tags={"recvae.model": name, "recvae.device": dev, **(tags or {})},
        ) as run:
            yield run
            self._finish_model(run)

    @contextlib.contextmanager
    def start_run(
        self,
        name: str,
        *,
        kind: str,
        params: Mapping[str, Any] | Any | None = None,
        config: Mapping[str, Any] | Any | None = None,
        experiment: str | None = None,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        display_name: str | None = None,
    ) -> Iterator[TrackedRun]:
        """A run of any ``kind`` (tag ``recvae.run_type``), nested under the open run if any:
        the building block of :meth:`start_pipeline` and :meth:`start_model`.

        It ends FINISHED, FAILED on an exception (with a ``recvae.error`` tag), or KILLED on an
        interrupt. With ``resume``, the last run of this name, kind and parent in the output
        folder is reopened.
        """
        parent = self.active
        if parent is None:
            self._set_experiment(experiment)
        self._sweep()
        all_tags = {**self._base_tags(), "recvae.run_type": kind, **(tags or {})}
        if description:
            all_tags["mlflow.note.content"] = description
        run = self._open(name, kind, parent, all_tags, display_name)
        self._stack.append(run)
        self._opened.append(run)
        self._heartbeat.add(run.record)
        try:
            if params:
                self.log_params(params)
            if config is not None:
                self.log_config(config)
            if self.dataset is not None and kind != "trial":  # trials share their model's
                self.log_dataset(self.dataset, source=self.dataset_source)
            yield run
        except BaseException as e:
            killed = isinstance(e, KeyboardInterrupt | SystemExit | GeneratorExit)
            if not killed and run.end_status is None:
                text = f"{type(e).__name__}: {e}"
                self.set_tags({"recvae.error": text.strip().splitlines()[0][:500] if text.strip() else text})
            self._close(run, run.end_status or ("KILLED" if killed else "FAILED"))
            raise
        else:
            self._close(run, run.end_status or "FINISHED")
        finally:
            self._stack.remove(run)
            self._heartbeat.remove(run.record)
            if not self._stack and self.offline:
                self._mark_incomplete()

    @contextlib.contextmanager
    def start_trial(
        self, number: int, *, params: Mapping[str, Any] | Any | None = None,
    ) -> Iterator[TrialRun]:
        """A hyper-parameter search trial: a run nested under the open model run, named
        ``<model> trial <number>``, holding its params and (through :meth:`epoch_callback` and
        :meth:`log_trial_result`) its validation curve and metrics.

        The caller sets the yielded :class:`TrialRun`'s ``state``: ``COMPLETE`` ends the run
        FINISHED, ``PRUNED`` KILLED, anything else (an exception) FAILED; the state is also the
        tag ``recvae.trial_state``, and the number the tag ``recvae.trial_number``.
        """
        model = self._current()
        trial = TrialRun(None)
        with self.start_run(
            f"{model.name} trial {number}", kind="trial", params=params,
            tags={"recvae.model": model.name, "recvae.trial_number": str(number)},
        ) as run:
            trial.run_id = run.run_id
            try:
                yield trial
            finally:
                self.set_tags({"recvae.trial_state": trial.state})
                if trial.state == "PRUNED":  # an exception that is not a failure
                    run.end_status = TRIAL_STATUS["PRUNED"]

    def log_trial_result(self, metrics: Mapping[str, float]) -> None:
        """A trial's final metrics (its model's validation scores, fit seconds), at step 0."""
        self.log_metrics(metrics, step=0)

    def close_stale_run(self, run_id: str, reason: str) -> None:
        """End a run left RUNNING by a process that died (status FAILED, tag ``recvae.failed``);
        a run this store does not hold (a study shared by machines) is not ours to close."""

        def close() -> None:
            client = self.client
            try:
                if client.get_run(run_id).info.status != "RUNNING":
                    return
                client.set_tag(run_id, "recvae.failed", reason)
                client.set_terminated(run_id, status="FAILED")
            except mlflow.exceptions.MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise

        self.guard.call(f"close the stale run {run_id}", close)

    # ------------------------------------------------------------- logging
    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        """Log nested params flattened with dots (``model.hidden_dims``) to the open run.

        A param already logged keeps its first value (MLflow refuses changes); a changed one is
        reported once."""
        run = self._current()
        flat = flatten_params(params)
        have = run.record.merged("params")
        new = {k: v for k, v in flat.items() if k not in have}
        changed = sorted(k for k, v in flat.items() if k in have and have[k] != v)
        if changed:
            print(f"recvae: warning: run {run.name}: params {', '.join(changed)} differ from the "
                  "values logged first; the run keeps the first values", file=sys.stderr, flush=True)
        if new:
            self._log(run, {"op": "params", "params": new})

    def log_config(self, config: Mapping[str, Any] | Any, name: str = "config.yaml") -> None:
        """The resolved config as a YAML (or JSON, by ``name``'s suffix) artifact."""
        self.log_dict(plain(config), name)

    def log_dict(self, obj: Any, name: str, artifact_path: str | None = None) -> Path:
        """``obj`` as a YAML or JSON file (by ``name``'s suffix) in the run's record and as an
        artifact; returns the local file."""
        run = self._current()
        path = run.record.artifacts_dir / (artifact_path or "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            if name.endswith((".yaml", ".yml")):
                tmp.write_text(yaml.safe_dump(plain(obj), default_flow_style=False, sort_keys=False))
            else:
                tmp.write_text(json.dumps(plain(obj), indent=2) + "\n")
        self.log_artifact(path, artifact_path)
        return path

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a file to the open run (under ``artifact_path``). Files outside the run's record
        stay where they are and are uploaded from there, now or at ``recvae sync``."""
        run = self._current()
        path = Path(path)
        if not path.is_file():
            raise RecvaeError(f"{path}: not a file; cannot log it as an artifact")
        ref = run.record.ref(path)
        stamp = file_stamp(path)
        if any(op["op"] == "artifact" and op["file"] == ref and op.get("artifact_path") == artifact_path
               and op.get("stamp") == stamp and op["seq"] <= run.record.confirmed
               for op in run.record.ops):
            return  # the same file is already in the store
        self._log(run, {"op": "artifact", "file": ref, "artifact_path": artifact_path, "stamp": stamp})

    def set_tags(self, tags: Mapping[str, Any], *, run: TrackedRun | None = None) -> None:
        """Tags on the open run, or on ``run`` (one of this tracker's runs, even once ended:
        e.g. the best model's run, tagged at the end of the pipeline); values as strings."""
        run = run or self._current()
        have = run.record.merged("tags")
        new = {k: str(v) for k, v in tags.items() if have.get(k) != str(v)}
        if new:
            self._log(run, {"op": "tags", "tags": new})

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """Metrics at ``step`` on the open run; a key already logged at that step is skipped
        (a reopened run logs nothing twice)."""
        run = self._current()
        values = {k: v for k, v in finite_metrics(metrics).items() if (k, step) not in run.points}
        if values:
            run.points.update((k, step) for k in values)
            self._log(run, {"op": "metrics", "metrics": values, "step": int(step), "time": now_ms()})

    def epoch_callback(self) -> Callback:
        """A model callback logging each :class:`EpochReport`'s metrics with ``step=epoch``.

        Bound to the run open when it is created (so it also works from worker threads). Every
        epoch also rewrites the run's ``epochs.csv``.
        """
        run = self._current()

        def on_epoch(report: EpochReport) -> None:
            self._log_epoch(run, int(report.epoch), finite_metrics(report.metrics), report.is_best)

        return on_epoch

    def complete_curve(self, history: Sequence[Mapping[str, float]], best_epoch: int | None) -> None:
        """Log the epochs of a model's full ``history_`` (``{"epoch": e, metric: value, ...}``)
        that the open run lacks: after a resume, the epochs restored from a checkpoint whose
        report a killed process never sent. ``best_epoch`` is the model's selected epoch."""
        run = self._current()
        for row in history:
            epoch = int(row["epoch"])
            metrics = finite_metrics({k: v for k, v in row.items() if k != "epoch"})
            self._log_epoch(run, epoch, metrics, epoch == best_epoch)
        if best_epoch is not None:
            run.best_epoch = int(best_epoch)

    def log_final(self, metrics: Mapping[str, float]) -> None:
        """Final metrics (``test/ndcg_at_100``, ``val/recall_at_20``, ``time/fit_seconds``, ...):
        the same names for every model, one value each at step 0, so that the compare view
        lines them up and the chart view draws one bar per model. (Per-epoch curves have names
        of their own, e.g. ``val_curve/ndcg_at_100``: a name is a curve or a final value.)
        Also kept for ``metrics.json``."""
        run = self._current()
        values = finite_metrics(metrics)
        run.final.update(values)
        if values:
            self.log_metrics(values, step=0)

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
        context: str = "training", part: str | None = None,
    ) -> dict[str, str]:
        """The dataset as an MLflow input (a one-row summary frame named after the dataset, with
        its digest) and the ``recvae.dataset_digest`` tag; with ``part`` (``"test"``), that part
        of it as a dataset of its own (``ml-latest-small:test``, context ``part``), which
        metrics on it can name. Returns the input's ``{"name", "digest"}``."""
        run = self._current()
        digest = dataset_digest(dataset)
        name = str(dataset.manifest.get("name") or "dataset")
        src = str(source) if source is not None else str(dataset.manifest.get("path") or name)
        summary = dataset.summary()
        if part is not None:
            name, digest, context = f"{name}:{part}", short_digest(f"{digest}:{part}"), part
            split = dataset.part(part)
            summary = {"part": part, "users": int(split.fold_in.shape[0]), "items": dataset.n_items,
                       "fold_in_interactions": int(split.fold_in.nnz),
                       "heldout_interactions": int(split.holdout.nnz)}
        entry = {"name": name, "digest": short_digest(digest), "source": src, "context": context}
        if not run.record.has("input", **entry):
            self._log(run, {"op": "input", **entry, "summary": plain(summary)})
        if part is None:
            self.set_tags({"recvae.dataset_digest": digest})
        return {"name": entry["name"], "digest": entry["digest"]}

    def log_learning_curves(self, name: str = "learning_curves.png") -> bool:
        """Plot train loss and validation NDCG@100 (and other ``val/`` metrics) per epoch.

        Returns False (nothing logged) when no epoch was reported.
        """
        run = self._current()
        if not run.curve:
            return False
        path = run.record.artifacts_dir / name
        with atomic_file(path) as tmp:
            plot_learning_curves(run.history, tmp, title=run.name, best=run.best_epoch)
        self.log_artifact(path)
        return True

    def log_metrics_json(self, name: str = "metrics.json") -> None:
        """Final metrics, best epoch and the per-epoch history as one JSON artifact."""
        run = self._current()
        doc = {
            "model": run.name,
            "metrics": run.final,
            "best_epoch": run.best_epoch,
            "epochs": [{"epoch": e, **m} for e, m in run.history],
        }
        self.log_dict(doc, name)

    def log_topk(
        self, path: str | os.PathLike, *, max_bytes: int = TOPK_ARTIFACT_MAX_BYTES,
        sample_rows: int = TOPK_SAMPLE_ROWS,
    ) -> str:
        """Log a top-k file under ``recommendations/``; above ``max_bytes`` only its first
        ``sample_rows`` rows (``<name>.sample<suffix>``) and a ``recvae.topk_path`` tag.
        Returns the artifact file name."""
        run = self._current()
        path = Path(path)
        self.set_tags({"recvae.topk_path": str(path.resolve())})
        if path.stat().st_size <= max_bytes:
            self.log_artifact(path, "recommendations")
            return path.name
        sample = run.record.artifacts_dir / "recommendations" / sample_name(path)
        sample.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(sample) as tmp:  # the temporary name keeps the suffix: same format
            write_head_sample(path, tmp, sample_rows)
        self.log_artifact(sample, "recommendations")
        return sample.name

    def log_model(
        self,
        model: Recommender,
        dataset: Dataset | None = None,
        *,
        name: str | None = None,
        k: int = 10,
        metrics: Mapping[str, float] | None = None,
        registered_model_name: str | None = None,
        model_dir: str | os.PathLike | None = None,
    ) -> LoggedModelInfo | None:
        """Log ``model`` as an MLflow LoggedModel named ``name`` (default: the run's name, e.g.
        ``mult-vae``): the pyfunc :class:`recvae.pyfunc.RecvaeTopK` (logged from code), which
        maps a DataFrame ``user_id, item_id`` of histories to ``user_id, rank, item_id, score``.

        ``metrics`` (the test metrics) are logged on the run linked to the model and to the
        dataset's test part (an input of the run); they are final metrics like
        :meth:`log_final`'s. ``model_dir`` is where the model is already saved (else it is
        saved into the run's record). A model identical to one logged before in the experiment
        (same name and files) is linked, not stored again. ``registered_model_name`` registers
        it (see :meth:`set_model_alias`). Returns where it is (None while the store is away:
        ``recvae sync`` logs it later). ``mlflow.pyfunc.load_model(info.model_uri)
        .predict(df, params={"k": 20})``.
        """
        run = self._current()
        name = name or run.name
        if any(op["op"] == "model" and op["name"] == name and op["seq"] <= run.record.confirmed
               for op in run.record.ops):
            return None  # a reopened run that already has its model
        if model_dir is None:
            model_dir = model.save(run.record.path / "model" / "recvae_model", overwrite=True)
        model_dir = Path(model_dir)
        dataset = dataset or self.dataset
        values = finite_metrics(metrics or {})
        test_data = self.log_dataset(dataset, source=self.dataset_source, part="test") if (
            values and dataset is not None) else None
        run.final.update(values)
        run.points.update((key, 0) for key in values)
        example = input_example(model, dataset)
        op = {
            "op": "model", "name": name, "model_dir": run.record.ref(model_dir),
            "stamp": file_stamp(model_dir), "digest": content_digest(model_dir), "k": int(k),
            "registered_model_name": registered_model_name,
            "example": {c: [plain(v) for v in example[c]] for c in example.columns},
            "metadata": {"recvae_model": model.name, "recvae_version": recvae.__version__},
            "params": run.record.merged("params"), "metrics": values, "dataset": test_data,
            "time": now_ms(),
        }
        return self._log(run, op)

    def log_table(self, data: Mapping[str, Sequence[Any]], artifact_file: str) -> Path:
        """A table (``{column: values}``) as the run's artifact ``artifact_file`` (``.json``), in
        the form ``mlflow.log_table`` writes, so the MLflow UI shows it as a table (artifact
        view, evaluation view); returns the local file. Logging it again replaces it."""
        run = self._current()
        frame = pd.DataFrame({k: list(v) for k, v in data.items()})
        path = run.record.artifacts_dir / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(frame.to_json(orient="split", index=False) + "\n")
        self._log(run, {"op": "table", "file": run.record.ref(path), "artifact_file": artifact_file,
                        "stamp": file_stamp(path)})
        return path

    def set_model_alias(self, registered_model_name: str, alias: str, *, run: TrackedRun) -> None:
        """Point the registry alias ``alias`` (e.g. ``champion``) at the registered version of
        ``run``'s logged model (``run``: a model run of this tracker, logged with
        ``registered_model_name``)."""
        model = next((op["name"] for op in reversed(run.record.ops) if op["op"] == "model"), None)
        if model is None:
            raise RecvaeError(f"alias {alias!r}: run {run.name} logged no model")
        op = {"op": "alias", "registered_model_name": registered_model_name, "alias": alias,
              "model": model}
        if not any(all(o.get(k) == v for k, v in op.items()) for o in run.record.ops):
            self._log(run, op)

    def model_run(self, name: str) -> TrackedRun | None:
        """The last model run named ``name`` this tracker opened under the open run."""
        parent = self.active
        found = [r for r in self._opened
                 if r.name == name and r.record.kind == "model" and r.parent is parent]
        return found[-1] if found else None

    # ------------------------------------------------------------- internals
    def _current(self) -> TrackedRun:
        if not self._stack:
            raise RecvaeError("no open run: call inside Tracker.start_pipeline/start_model")
        return self._stack[-1]

    def _store(self) -> StoreWriter:
        if self._writer is None:
            self._writer = StoreWriter(open_store(self.uri), self.uri)
        return self._writer

    def _set_experiment(self, experiment: str | None) -> None:
        name = experiment or self.experiment
        if name is None and self.dataset is not None:
            name = experiment_name(self.dataset)
        self.experiment = name or "recvae"
        location = self.artifact_location or default_artifact_location(self.uri, self.experiment)
        ok, exp_id = self.guard.call(
            f"open the experiment {self.experiment!r}",
            lambda: self._store().experiment(self.experiment, location),
        )
        if ok:
            self.experiment_id = exp_id

    def _open(
        self, name: str, kind: str, parent: TrackedRun | None, tags: dict[str, str],
        display_name: str | None = None,
    ) -> TrackedRun:
        """A new run's record, or (``resume``) the last one of this name, kind and parent; a
        pipeline run that finished is never reopened (its comparison is complete)."""
        parent_uid = parent.record.uid if parent is not None else None
        previous = self._previous(name, kind, parent_uid) if self.resume else None
        if previous is not None and kind == "pipeline" and previous.status == "FINISHED":
            previous = None
        if previous is None:
            from mlflow.tracking.context.registry import resolve_tags

            record = RunRecord.create(
                self.records_dir, name=name, kind=kind, uri=self.uri, experiment=self.experiment,
                artifact_location=self.artifact_location
                or default_artifact_location(self.uri, self.experiment or "recvae"),
                parent_uid=parent_uid, tags=resolve_tags(tags), display_name=display_name,
            )
            run = TrackedRun(record, parent, reopened=False)
        else:
            record = previous
            if record.status == "RUNNING" and record.meta.get("pid") != os.getpid():
                raise RecvaeError(
                    f"{record.path}: run {name} is still running in process "
                    f"{record.meta.get('pid')} on {record.meta.get('host')}; stop it before --resume"
                )
            if record.meta.get("uri") != self.uri:  # another store now: compare everything
                record.meta["confirmed"] = 0
            record.claim()
            record.set_status("RUNNING")
            record.append({"op": "tags", "tags": {**tags, "recvae.resumes": str(record.meta["resumes"])}})
            run = TrackedRun(record, parent, reopened=True)
            print(f"[{name}] continuing MLflow run {record.run_id or '(not yet in the store)'} "
                  f"of {record.path}", flush=True)
        self._push(run)
        return run

    def _previous(self, name: str, kind: str, parent_uid: str | None) -> RunRecord | None:
        same = [
            r for r in list_records(self.output_dir)
            if r.name == name and r.kind == kind and r.parent_uid == parent_uid
        ]
        return max(same, key=lambda r: r.meta.get("start_time", 0)) if same else None

    def _sweep(self) -> None:
        """Once per tracker: close runs of this output folder whose process died."""
        if self._swept:
            return
        self._swept = True
        for record in list_records(self.output_dir):
            before = record.last_seq
            reason = close_dead(record)
            if reason is None:
                continue
            if record.kind == "trial":  # a dead process's trial is not counted as done
                then = "the trial does not count; --resume runs another in its place"
            else:
                then = "this --resume reopens it" if self.resume else "--resume would continue it"
            print(f"recvae: run {record.name} ({record.run_id or 'not in the store'}) was left "
                  f"RUNNING: {reason}; marked KILLED ({then})", flush=True)
            if record.run_id and record.meta.get("uri") == self.uri:
                for op in [op for op in record.ops if op["seq"] > before]:
                    self.guard.call(f"close the run {record.name}",
                                    lambda r=record, op=op: self._store().apply(r, op))
                if self.guard.online and record.confirmed == before:
                    record.confirm(record.last_seq)

    def _mark_incomplete(self) -> None:
        """Once, when the outermost run ends offline: one more try at the store, to tag the runs
        it holds in part ``recvae.offline`` with a note that ``recvae sync`` completes them (see
        :meth:`StoreWriter.mark_incomplete`). The guard stays offline whatever the answer; a
        store still down is left so (the warning and the summary have said what to do)."""
        if self._marked or self._writer is None:
            return
        self._marked = True
        if is_http(self.uri) and probe(self.uri) is not None:
            return  # still down: a probe costs at most 3 s where a store call costs up to 15 s
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.guard.failed_at or time.time()))
        reason = f"MLflow tracking failed at {when} ({self.guard.failed_call}: {self.guard.error})"
        records = [r for r in self.not_logged() if r.run_id and r.meta.get("uri") == self.uri]
        writer = self._writer

        def mark() -> None:
            for record in records:
                writer.mark_incomplete(record, self.output_dir, reason)

        try:
            bounded_call(self.uri, mark)
        except outage_errors():
            return  # still down: `recvae sync` marks and completes them
        if records:
            print(f"recvae: tracking: {self.uri} answers again; {len(records)} run(s) there are "
                  f"tagged {OFFLINE_TAG}=true until `recvae sync {self.output_dir}`", file=sys.stderr,
                  flush=True)

    def _close(self, run: TrackedRun, status: str) -> None:
        run.record.set_status(status)
        self._push(run)

    def _log(self, run: TrackedRun, op: Mapping[str, Any]) -> Any:
        """Journal ``op`` in the run's record, then send what the store lacks; returns what
        the store answered for ``op`` (None when it was not sent)."""
        with self._lock:  # an epoch callback may run in a worker thread
            seq = run.record.append(op)
            return self._push(run, seq)

    def _push(self, run: TrackedRun, seq: int | None = None) -> Any:
        """Send the run's unconfirmed entries (creating the run in the store first)."""
        with self._lock:
            record = run.record
            if not self.guard.online:
                return None
            if record.run_id is None or record.meta.get("uri") != self.uri:
                parent_id = run.parent.record.run_id if run.parent is not None else None
                if run.parent is not None and parent_id is None:
                    return None  # its parent is not in the store yet: sync sends both later
                ok, opened = self.guard.call(
                    f"create the run {record.name}", lambda: self._store().open_run(record, parent_id)
                )
                if not ok:
                    return None
                _, created = opened
                run.needs_completion = run.needs_completion or not created
                record.confirm(next(op["seq"] for op in record.ops if op["op"] == "create"))
            if run.needs_completion:
                ok, _ = self.guard.call(f"complete the run {record.name}",
                                        lambda: self._store().complete(record))
                if ok:
                    run.needs_completion = False
                return None
            answer = None
            for op in record.pending_ops():
                ok, result = self.guard.call(
                    f"log {op['op']} of {record.name}", lambda op=op: self._store().apply(record, op)
                )
                if not ok:
                    return None
                record.confirm(op["seq"])
                if op["seq"] == seq:
                    answer = result
            return answer

    def _log_epoch(self, run: TrackedRun, epoch: int, metrics: dict[str, float], best: bool) -> None:
        metrics = curve_metrics(metrics)
        new = {k: v for k, v in metrics.items() if (k, epoch) not in run.points}
        if best:
            run.best_epoch = epoch
        if not new:
            return  # already recorded (a reopened run)
        run.points.update((k, epoch) for k in new)
        run.curve.setdefault(epoch, {}).update(new)
        self._write_curve(run)
        self._log(run, {"op": "epoch", "epoch": epoch, "metrics": new, "best": bool(best),
                        "time": now_ms()})

    def _write_curve(self, run: TrackedRun, name: str = "epochs.csv") -> Path:
        keys = sorted({k for m in run.curve.values() for k in m})
        path = run.record.artifacts_dir / name
        with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", *keys])
            for epoch, metrics in run.history:
                writer.writerow([epoch, *(metrics.get(k, "") for k in keys)])
        return path

    def _base_tags(self) -> dict[str, str]:
        tags = {"recvae.version": recvae.__version__}
        commit = _git_commit()
        if commit:
            tags["recvae.git_commit"] = commit
        if self.device:
            tags["recvae.device"] = self.device
        return tags

    def _finish_model(self, run: TrackedRun) -> None:
        if run.best_epoch is not None:
            self.log_metrics({"best_epoch": run.best_epoch})
            self.set_tags({"recvae.best_epoch": str(run.best_epoch)})
        self.log_metrics_json()
        if run.curve:
            self.log_artifact(self._write_curve(run))
        self.log_learning_curves()


# --------------------------------------------------------------------------- helpers
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


