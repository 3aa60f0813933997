"""MLflow tracking, local first, one concern per module: ``store`` (where: URI, server check,
names, the store's creation lock), ``tracker`` (runs, params, metrics, artifacts), ``guard``
(bounded store calls, the switch to offline), ``record`` (each run's local record, the source of
truth), ``sync`` (records into the store: live and ``recvae sync``), ``logged_model``
(signature, example, requirements, the pyfunc), ``plots``, ``artifacts`` (top-k samples),
``values`` (params and metrics as MLflow takes them)."""

from recvae.tracking.store import (
    DEFAULT_TRACKING_DB,
    check_tracking_server,
    dataset_digest,
    default_artifact_location,
    experiment_name,
    registered_model_name,
    resolve_tracking_uri,
)
from recvae.tracking.sync import sync_output
from recvae.tracking.tracker import TrackedRun, Tracker
from recvae.tracking.values import MAX_PARAM_VALUE, flatten_params

__all__ = [
    "DEFAULT_TRACKING_DB",
    "MAX_PARAM_VALUE",
    "TrackedRun",
    "Tracker",
    "check_tracking_server",
    "dataset_digest",
    "default_artifact_location",
    "experiment_name",
    "flatten_params",
    "registered_model_name",
    "resolve_tracking_uri",
    "sync_output",
]
