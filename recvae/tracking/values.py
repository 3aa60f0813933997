"""Config and metric values as MLflow takes them: flattened params, finite floats, plain data."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_PARAM_KEY = 250


def flatten_params(config: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts (or dataclasses) → ``{"a.b.c": "value"}``; lists as JSON; values cut to
    MLflow's 6000 characters."""
    out: dict[str, str] = {}
    for key, value in plain(config).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=f"{name}."))
            continue
        if isinstance(value, Mapping | list | tuple) or value is None:
            text = json.dumps(plain(value), default=str)
        else:
            text = str(plain(value))
        out[name[:MAX_PARAM_KEY]] = text[:MAX_PARAM_VALUE]
    return out

#: Prefix of the per-epoch validation curve in MLflow (``val_curve/ndcg_at_100``): ``val/`` names
#: the final metrics of the selected model, one value each, so a name is a curve or a value.
VAL_CURVE = "val_curve/"
#: Per-epoch timings as models report them → their MLflow names, the same for every model.
#: ``fit_seconds`` (one report of a model fitted in one go) is left out: the pipeline logs every
#: model's ``time/fit_seconds`` as a final value.
EPOCH_TIMINGS = {"epoch_seconds": "time/epoch_seconds", "val_seconds": "time/val_seconds",
                 "fit_seconds": None}


def curve_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A model's per-epoch metrics (``val/ndcg_at_100``, ``epoch_seconds``, ``train/loss``) under
    their MLflow curve names (``val_curve/ndcg_at_100``, ``time/epoch_seconds``, ``train/loss``)."""
    out = {}
    for key, value in metrics.items():
        name = EPOCH_TIMINGS.get(key, key)
        if name is not None:
            out[VAL_CURVE + name[4:] if name.startswith("val/") else name] = value
    return out


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
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

def plain(value: Any) -> Any:
    """JSON/YAML-friendly copy: dataclasses to dicts, paths and numpy scalars to plain values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
