"""Models behind one interface (``recvae.models.base.Recommender``), looked up by name."""

from __future__ import annotations

import importlib
import os

from recvae.errors import RecvaeError
from recvae.models.base import EpochReport, NotFittedError, Recommender

# The one registry: name → (module, class). Imported lazily so that `recvae ingest` does not
# pay for torch/implicit.
_REGISTRY: dict[str, tuple[str, str]] = {
    "mult-vae": ("recvae.models.autoencoders.models", "MultVAE"),
    "mult-dae": ("recvae.models.autoencoders.models", "MultDAE"),
    "ease": ("recvae.models.ease", "EASE"),
    "edlae": ("recvae.models.ease", "EDLAE"),
    "als": ("recvae.models.implicit_models", "ALS"),
    "bpr": ("recvae.models.implicit_models", "BPR"),
    "item-knn": ("recvae.models.implicit_models", "ItemKNN"),
    "popularity": ("recvae.models.popularity", "Popularity"),
}

MODEL_NAMES = tuple(_REGISTRY)


def model_class(name: str) -> type[Recommender]:
    """The model class registered under ``name`` (e.g. ``mult-vae``)."""
    if name not in _REGISTRY:
        raise RecvaeError(f"unknown model {name!r}: expected one of {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def load_model(path: str | os.PathLike) -> Recommender:
    """Load any saved recvae model directory."""
    return Recommender.load(path)


__all__ = ["MODEL_NAMES", "EpochReport", "NotFittedError", "Recommender", "load_model", "model_class"]
