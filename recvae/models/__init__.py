"""Models behind one interface (``recvae.models.base.Recommender``), looked up by name."""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any

from recvae.errors import RecvaeError
from recvae.models.base import EpochReport, NotFittedError, Recommender

# The one registry: name → (module, class). Imported lazily so that `recvae ingest` does not
# pay for torch/implicit.
_REGISTRY: dict[str, tuple[str, str]] = {
    "mult-vae": ("recvae.models.autoencoders.models", "MultVAE"),
    "mult-dae": ("recvae.models.autoencoders.models", "MultDAE"),
    "recvae": ("recvae.models.autoencoders.models", "RecVAE"),
    "ease": ("recvae.models.ease", "EASE"),
    "edlae": ("recvae.models.ease", "EDLAE"),
    "als": ("recvae.models.implicit_models", "ALS"),
    "bpr": ("recvae.models.implicit_models", "BPR"),
    "item-knn": ("recvae.models.implicit_models", "ItemKNN"),
    "popularity": ("recvae.models.popularity", "Popularity"),
    "gf-cf": ("recvae.models.filters.models", "GFCF"),
    "bspm": ("recvae.models.filters.models", "BSPM"),
    "chebycf": ("recvae.models.filters.models", "ChebyCF"),
    "ensemble": ("recvae.models.ensemble", "Ensemble"),
}

MODEL_NAMES = tuple(_REGISTRY)


def model_class(name: str) -> type[Recommender]:
    """The model class registered under ``name`` (e.g. ``mult-vae``)."""
    if name not in _REGISTRY:
        raise RecvaeError(f"unknown model {name!r}: expected one of {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def create_model(name: str, params: dict[str, Any], *, where: str = "model") -> Recommender:
    """A model of the registered ``name`` built from ``params`` (not fitted).

    Unknown parameters, wrong types and bad values are RecvaeErrors starting with ``where``
    (a config key path, a saved model's JSON file).
    """
    try:
        cls = model_class(name)
    except RecvaeError as e:
        raise RecvaeError(f"{where}: {e}") from None
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in params if k not in fields]
    if unknown:
        raise RecvaeError(
            f"{where}: unknown parameter {unknown[0]!r} for {name}; "
            f"expected one of {', '.join(sorted(fields))}"
        )
    try:
        return cls(**params)
    except (RecvaeError, TypeError) as e:  # TypeError: a value of a type the checks did not expect
        raise RecvaeError(f"{where}: {e}") from None


def load_model(path: str | os.PathLike) -> Recommender:
    """Load any saved recvae model directory."""
    return Recommender.load(path)


__all__ = [
    "MODEL_NAMES", "EpochReport", "NotFittedError", "Recommender", "create_model", "load_model",
    "model_class",
]
