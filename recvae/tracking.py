"""MLflow tracking around the models: the models know nothing of MLflow, this module wraps them.

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
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

import recvae
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.models.base import Callback, EpochReport, Recommender

DEFAULT_TRACKING_DB = "mlflow.db"
MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_PARAM_KEY = 250
MAX_BATCH = 100  # params / metrics per log_batch call
MAX_DIGEST = 36  # MLflow's dataset digest column
TOPK_ARTIFACT_MAX_BYTES = 50 * 2**20
TOPK_SAMPLE_ROWS = 100_000


# --------------------------------------------------------------------------- where to track
def resolve_tracking_uri(config_uri: str | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the config's ``tracking.uri``, else
    ``sqlite:///<cwd>/mlflow.db`` (MLflow's own default, made absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    if config_uri:
        return str(config_uri)
    return f"sqlite:///{Path.cwd() / DEFAULT_TRACKING_DB}"


def check_tracking_server(uri: str, *, timeout: float = 3.0) -> None:
    """Fail fast, before any training, when the tracking store cannot be used.

    http(s): GET ``<uri>/health`` with a short timeout; any HTTP answer below 500 counts as up
    (a 401/404 comes from a live server, and MLflow itself will report auth problems).
    ``sqlite:///path``: the database's directory must exist.
    """
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        hint = "start it with `mlflow server` or unset MLFLOW_TRACKING_URI"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                resp.read(64)
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                raise RecvaeError(
                    f"MLflow tracking server at {uri} is unhealthy: HTTP {e.code} from /health; "
                    f"{hint}"
                ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RecvaeError(
                f"MLflow tracking server at {uri} is unreachable: {reason}; {hint}"
            ) from None
    elif scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            parent = Path(path).expanduser().resolve().parent
            if not parent.is_dir():
                raise RecvaeError(
                    f"MLflow tracking database {uri}: directory {parent} does not exist"
                )


def default_artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: for ``sqlite:///dir/mlflow.db``,
    ``dir/mlruns/<experiment>`` beside the database (MLflow's own default, ``./mlruns``, depends on
    the directory the process happens to run in); None (the store's default) otherwise."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///") :]
    if db in ("", ":memory:"):
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return str(Path(db).expanduser().resolve().parent / "mlruns" / safe)


def experiment_name(dataset: Dataset) -> str:
    """One experiment per dataset and protocol, e.g. ``ml-latest-small (strong)``.

    No ``/``: the MLflow UI's breadcrumb shows only the part after a slash."""
    m = dataset.manifest
    name = m.get("name") or m.get("dataset") or "dataset"
    split = m.get("split")
    if isinstance(split, Mapping):
        split = next(
            (split[k] for k in ("method", "kind", "name", "strategy", "protocol") if split.get(k)),
            None,
        )
    protocol = split if isinstance(split, str) and split else dataset.protocol
    return f"{name} ({protocol})"


def registered_model_name(dataset: Dataset, model: str) -> str:
    """Model registry name for ``model`` trained on ``dataset``: ``ml-latest-small-strong-ease``."""
    m = dataset.manifest
    return f"{m.get('name') or 'dataset'}-{experiment_name(dataset).split('(')[-1].rstrip(')')}-{model}"


def dataset_digest(dataset: Dataset) -> str:
    """A short stable id of the dataset's content: the manifest's cache key or source checksum,
    else a hash of the manifest (at most 36 characters, MLflow's limit for a dataset digest)."""
    m = dataset.manifest
    for key in ("key", "cache_key", "digest"):
        if isinstance(m.get(key), str) and m[key]:
            return _short(m[key])
    for key in ("sha256", "source_sha256"):
        if isinstance(m.get(key), str) and m[key]:
            return m[key][:16]
    src = m.get("source")
    if isinstance(src, Mapping) and isinstance(src.get("sha256"), str):
        return src["sha256"][:16]
    canon = json.dumps(m or dataset.summary(), sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def flatten_params(config: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts (or dataclasses) → ``{"a.b.c": "value"}``; lists as JSON; values cut to
    MLflow's 6000 characters."""
    out: dict[str, str] = {}
    for key, value in _plain(config).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=f"{name}."))
            continue
        if isinstance(value, Mapping | list | tuple) or value is None:
            text = json.dumps(_plain(value), default=str)
        else:
            text = str(_plain(value))
        out[name[:MAX_PARAM_KEY]] = text[:MAX_PARAM_VALUE]
    return out


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
        _set_tracking_uri(self.uri)
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
        mlflow.log_dict(_plain(config), name)

    def epoch_callback(self) -> Callback:
        """A model callback logging each :class:`EpochReport`'s metrics with ``step=epoch``.

        Bound to the run active when it is created (so it also works from worker threads).
        """
        run_id = _active_run_id()
        client = self.client

        def on_epoch(report: EpochReport) -> None:
            values = _finite(report.metrics)
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
        values = _finite(metrics)
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
            ds = mlflow.data.from_pandas(summary, source=src, name=name, digest=_short(digest))
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
            sample = Path(tmp) / _sample_name(path)
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

        example = _input_example(model, dataset or self.dataset)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's integer-column schema hint
            saved = model.save(Path(tmp) / "recvae_model")
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=RecvaeTopK(),
                artifacts={MODEL_DIR_ARTIFACT: str(saved)},
                signature=_signature(k),
                input_example=example,
                pip_requirements=_pip_requirements(),
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
        ("validation", [k for k in keys if k.startswith("val/")]),
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


def write_head_sample(src: Path, dst: Path, n_rows: int) -> Path:
    """The first ``n_rows`` rows of a Parquet or CSV (optionally .gz) top-k file, same format."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    batches, got = [], 0
    if src.name.lower().endswith((".parquet", ".pq")):
        reader = pq.ParquetFile(src).iter_batches(batch_size=min(n_rows, 65536))
    else:
        reader = pacsv.open_csv(pa.input_stream(str(src), compression="detect"))
    for batch in reader:
        batches.append(batch.slice(0, n_rows - got))
        got += batches[-1].num_rows
        if got >= n_rows:
            break
    table = pa.Table.from_batches(batches)
    if dst.name.lower().endswith((".parquet", ".pq")):
        pq.write_table(table, dst)
    elif dst.name.lower().endswith(".gz"):
        with pa.CompressedOutputStream(str(dst), "gzip") as out:
            pacsv.write_csv(table, out)
    else:
        pacsv.write_csv(table, dst)
    return dst


def _sample_name(path: Path) -> str:
    name = path.name
    for suffix in (".csv.gz", ".parquet", ".pq", ".csv"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] + ".sample" + name[-len(suffix) :]
    return name + ".sample"


def _input_example(model: Recommender, dataset: Dataset | None) -> pd.DataFrame:
    """Two users' (truncated) histories with original ids, for the logged model's example."""
    items = np.asarray(model.item_ids_)
    if dataset is not None and dataset.n_users:
        users, full = dataset.full_history()
        rows = []
        for r in range(min(2, len(users))):
            cols = full.indices[full.indptr[r] : full.indptr[r + 1]][:5]
            rows += [(dataset.user_ids[users[r]], items[c]) for c in cols]
        if rows:
            u, i = zip(*rows, strict=True)
            return pd.DataFrame({"user_id": list(u), "item_id": list(i)})
    return pd.DataFrame({"user_id": ["user-1"] * 3, "item_id": list(items[:3])})


def _signature(k: int) -> mlflow.models.ModelSignature:
    """Ids may be integers or strings (whatever the dataset used), so they are typed ``Any``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), "user_id"), ColSpec(AnyType(), "item_id")]),
        outputs=Schema(
            [ColSpec(AnyType(), "user_id"), ColSpec("integer", "rank"),
             ColSpec(AnyType(), "item_id"), ColSpec("float", "score")]
        ),
        params=ParamSchema([ParamSpec("k", "long", int(k))]),
    )


def _pip_requirements() -> list[str]:
    """Pinned runtime requirements (given explicitly: MLflow's inference would re-load the
    model in a subprocess). ``recvae`` is not on PyPI: serve with ``--env-manager local``."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = [f"recvae=={recvae.__version__}"]
    for pkg in ("mlflow", "torch", "numpy", "scipy", "pandas", "pyarrow"):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def _set_tracking_uri(uri: str) -> None:
    """``mlflow.set_tracking_uri`` without its side effect of exporting MLFLOW_TRACKING_URI.

    MLflow writes the URI into the environment (for subprocesses); left there, it would beat
    the config's ``tracking.uri`` of every later Tracker in this process, although the user
    never set it. The environment is put back as the user left it.
    """
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RecvaeError("no active MLflow run: call inside Tracker.start_pipeline/start_model")
    return run.info.run_id


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numeric, finite values as floats (MLflow rejects None and strings; NaN is noise)."""
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[str(k)] = f
    return out


def _plain(value: Any) -> Any:
    """JSON/YAML-friendly copy: dataclasses to dicts, paths and numpy scalars to plain values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _short(text: str) -> str:
    return text if len(text) <= MAX_DIGEST else hashlib.sha256(text.encode()).hexdigest()[:16]


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
