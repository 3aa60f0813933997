"""Where runs are tracked: the tracking URI, the reachability check, experiment and registry
names, and the dataset digest.

Example::

    uri = resolve_tracking_uri(config_uri)   # MLFLOW_TRACKING_URI, else the config, else ./mlflow.db
    check_tracking_server(uri)               # fails fast, before any training
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import mlflow

from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError

DEFAULT_TRACKING_DB = "mlflow.db"
MAX_DIGEST = 36  # MLflow's dataset digest column


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
