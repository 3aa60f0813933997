"""Hyper-parameter search with Optuna: ``spec`` (a model block's ``search:``, checked at config
load, no Optuna import), ``spaces`` (the built-in spaces of ``search: default``), ``study``
(storage, samplers, pruners, dead trials).

The pipeline tunes a model block that has ``search:`` before its final fit: the trials run as
a stage of the application layer, :func:`recvae.run.search.search_model`.
"""

from recvae.search.spaces import DEFAULT_SPACES
from recvae.search.spec import SELECTION_METRIC, SearchConfig, SearchSpec, model_search, resolve_search

__all__ = [
    "DEFAULT_SPACES", "SELECTION_METRIC", "SearchConfig", "SearchSpec", "model_search", "resolve_search",
]
