"""MLflow tracking, one concern per module: ``store`` (where: URI, server check, names),
``tracker`` (runs, params, metrics, artifacts), ``logged_model`` (signature, example,
requirements), ``plots``, ``artifacts`` (top-k samples), ``values`` (params and metrics as MLflow
takes them)."""

from recvae.tracking.store import (
    DEFAULT_TRACKING_DB,
    check_tracking_server,
    dataset_digest,
    default_artifact_location,
    experiment_name,
    registered_model_name,
    resolve_tracking_uri,
)
from recvae.tracking.tracker import Tracker
from recvae.tracking.values import MAX_PARAM_VALUE, flatten_params

__all__ = [
    "DEFAULT_TRACKING_DB",
    "MAX_PARAM_VALUE",
    "Tracker",
    "check_tracking_server",
    "dataset_digest",
    "default_artifact_location",
    "experiment_name",
    "flatten_params",
    "registered_model_name",
    "resolve_tracking_uri",
]
