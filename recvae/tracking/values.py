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
