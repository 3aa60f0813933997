"""Where runs are tracked: the tracking URI, the reachability check, experiment and registry
names, and the dataset digest.

Example::

    uri = resolve_tracking_uri(config_uri)   # MLFLOW_TRACKING_URI, else the config, else ./mlflow.db
    check_tracking_server(uri)               # fails fast, before any training
    client = open_store(uri)                 # a new SQLite store is created under a file lock
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

# Before MLflow is imported: it starts its usage-telemetry client on import.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError

DEFAULT_TRACKING_DB = "mlflow.db"
MAX_DIGEST = 36  # MLflow's dataset digest column
PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search?max_results=1"


def quiet_telemetry() -> None:
    """MLflow's usage telemetry off in this process, by its documented opt-out
    ``MLFLOW_DISABLE_TELEMETRY`` (set when this module is imported, before MLflow is; a value the
    user exported wins), and its client dropped if MLflow was imported before recvae.

    Why: where its config fetch fails (any machine without internet access), the telemetry
    thread deletes ``_MLFLOW_TELEMETRY_SESSION_ID`` from ``os.environ`` while our thread may be
    iterating the environment (``requests`` reads the proxy variables on every call), which
    fails that store call with ``KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'``: the first
    ``recvae sync`` after a server restart failed that way and synced nothing.
    """
    from mlflow.telemetry import get_telemetry_client, set_telemetry_client
    from mlflow.telemetry.utils import is_telemetry_disabled

    if get_telemetry_client() is not None and is_telemetry_disabled():
        set_telemetry_client()  # finds telemetry disabled: drops the client


quiet_telemetry()


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

    http(s): ``GET <uri>/api/2.0/mlflow/experiments/search`` with a short timeout must answer
    as MLflow does: JSON, or 401/403 from a server that wants credentials (MLflow itself reports
    those later). A web server that is not MLflow (an HTML page, a 404) is refused in one line.
    ``sqlite:///path``: the database's directory must exist.
    """
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + PROBE_ENDPOINT
        hint = "start it with `mlflow server` or unset MLFLOW_TRACKING_URI"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                status, ctype, body = resp.status, resp.headers.get("Content-Type", ""), resp.read(4096)
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                return
            if e.code >= 500:
                raise RecvaeError(
                    f"MLflow tracking server at {uri} is unhealthy: HTTP {e.code} from "
                    f"{PROBE_ENDPOINT}; {hint}"
                ) from None
            status, ctype, body = e.code, e.headers.get("Content-Type", ""), e.read(4096)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RecvaeError(
                f"MLflow tracking server at {uri} is unreachable: {reason}; {hint}"
            ) from None
        if not _mlflow_answer(body):
            kind = ctype.split(";")[0].strip() or "no content type"
            raise RecvaeError(
                f"{uri} is not an MLflow tracking server: GET {PROBE_ENDPOINT} answered HTTP "
                f"{status} ({kind}) instead of MLflow's JSON; check MLFLOW_TRACKING_URI or "
                "tracking.uri"
            )
    elif scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None:
            parent = path.parent
            if not parent.is_dir():
                raise RecvaeError(
                    f"MLflow tracking database {uri}: directory {parent} does not exist"
                )


def _mlflow_answer(body: bytes) -> bool:
    """MLflow's REST API answers a JSON object: the result, or an ``error_code``."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and ("experiments" in doc or "error_code" in doc or not doc)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs and in-memory ones)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///") :]
    if db in ("", ":memory:"):
        return None
    return Path(db).expanduser().resolve()


@contextlib.contextmanager
def store_lock(uri: str, timeout: float = 600.0) -> Iterator[None]:
    """Serialise the creation of a SQLite store (MLflow's schema migrations) and of experiments
    in it across processes: two pipelines started together on a fresh folder otherwise race
    (``table experiments already exists``, ``duplicate column name: step``). A no-op for other
    stores, whose server serialises. The lock file sits beside the database."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    import filelock

    lock = filelock.FileLock(str(db.parent / f".{db.name}.lock"))
    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout:
        raise RecvaeError(
            f"{lock.lock_file}: another process has been setting up the MLflow store {uri} for "
            f"{timeout:.0f} s; is it stuck?"
        ) from None
    try:
        yield
    finally:
        lock.release()


def open_store(uri: str) -> MlflowClient:
    """A client of ``uri`` whose store exists: a new SQLite database is created (and an old
    one upgraded) under :func:`store_lock`. MLflow caches the store per URI, so only the first
    call in a process pays."""
    with store_lock(uri):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # builds the store (tables, migrations) now
    return client


#: MLflow 3's experiment kind: the UI opens a ``custom_model_development`` experiment in its
#: model-training view (runs, charts, models) instead of the GenAI one (traces, judges, prompts)
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(
    client: MlflowClient, uri: str, name: str, artifact_location: str | None = None
) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``, default
    :func:`default_artifact_location`) when missing, under :func:`store_lock`."""
    from mlflow.exceptions import MlflowException

    with store_lock(uri):
        found = client.get_experiment_by_name(name)
        if found is None:
            try:
                return client.create_experiment(
                    name, artifact_location=artifact_location or default_artifact_location(uri, name),
                    tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING},
                )
            except MlflowException as e:  # created meanwhile by a pipeline on another host
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
    if found.lifecycle_stage == "deleted":
        raise RecvaeError(
            f"MLflow experiment {name!r} in {uri} is deleted; restore it with `mlflow experiments "
            "restore` or choose another with tracking.experiment"
        )
    if EXPERIMENT_KIND_TAG not in found.tags:  # made before recvae set it: a kind chosen in the UI stays
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return found.experiment_id


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

def registered_model_name(dataset: Dataset) -> str:
    """Model registry name for the models of ``dataset``'s experiment, ``ml-latest-small-strong``:
    each registered model is a version of it, so that an alias (``champion``) picks among them."""
    m = dataset.manifest
    return f"{m.get('name') or 'dataset'}-{experiment_name(dataset).split('(')[-1].rstrip(')')}"

def dataset_digest(dataset: Dataset) -> str:
    """A short stable id of the dataset's content: the manifest's cache key or source checksum,
    else a hash of the manifest (at most 36 characters, MLflow's limit for a dataset digest)."""
    m = dataset.manifest
    for key in ("key", "cache_key", "digest"):
        if isinstance(m.get(key), str) and m[key]:
            return short_digest(m[key])
    for key in ("sha256", "source_sha256"):
        if isinstance(m.get(key), str) and m[key]:
            return m[key][:16]
    src = m.get("source")
    if isinstance(src, Mapping) and isinstance(src.get("sha256"), str):
        return src["sha256"][:16]
    canon = json.dumps(m or dataset.summary(), sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]

def set_tracking_uri(uri: str) -> None:
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

def short_digest(text: str) -> str:
    return text if len(text) <= MAX_DIGEST else hashlib.sha256(text.encode()).hexdigest()[:16]
