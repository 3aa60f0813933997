"""The steps after a fit, each small and on its own: score the test part once, save the model,
log it to the tracker, write its top-k file.

Example::

    test, seconds = evaluate_test(model, dataset, ctx)
    model_dir = save_model(model, ctx.out.model_dir("ease"))
    model_id = log_model(ctx, model, dataset, model_dir, test, register=False)
    topk = export_topk(model, dataset, "ease", recommend, ctx)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from recvae.data.dataset import Dataset
from recvae.evaluation import evaluate
from recvae.models.base import Recommender
from recvae.recommend import TopkFile, write_recommendations
from recvae.run.context import RunContext

if TYPE_CHECKING:
    from recvae.config import RecommendConfig


def evaluate_test(model: Recommender, dataset: Dataset, ctx: RunContext) -> tuple[dict[str, float], float]:
    """``model``'s ``test/*`` metrics, scored once, and the scoring seconds."""
    t0 = time.perf_counter()
    result = evaluate(model.score, dataset.test, ctx.ks, batch_size=ctx.eval_batch_size, inplace=True)
    return result.as_metrics("test"), time.perf_counter() - t0


def save_model(model: Recommender, path: Path) -> Path:
    """The model written to ``path``, replacing the folder a previous run of this output left."""
    return model.save(path, overwrite=True)


def log_model(
    ctx: RunContext, model: Recommender, dataset: Dataset, model_dir: Path,
    test: dict[str, float], *, log: bool, register: bool,
) -> str | None:
    """The test metrics on the open model run, linked to a LoggedModel of ``model`` when ``log``
    (registered as a version of the dataset's model with ``register``); the LoggedModel's id."""
    if not log:
        ctx.tracker.log_final(test)
        return None
    from recvae.tracking import registered_model_name  # MLflow only when a model is logged

    info = ctx.tracker.log_model(
        model, dataset, model_dir=model_dir, metrics=test,
        registered_model_name=registered_model_name(dataset) if register else None,
    )
    return getattr(info, "model_id", None)


def export_topk(
    model: Recommender, dataset: Dataset, name: str, recommend: RecommendConfig, ctx: RunContext,
) -> TopkFile:
    """The model's top-k file (original ids, the raw log's items excluded), logged to the run."""
    topk = write_recommendations(
        model, dataset, ctx.out.recommendations(name, recommend.format), k=recommend.k,
        users=recommend.users, exclude=recommend.exclude, fallback=recommend.fallback,
        format=recommend.format, batch_size=recommend.batch_size, show_progress=ctx.show_progress,
    )
    print(f"[{name}] top-{recommend.k}: {topk.describe()} → {topk.path}", flush=True)
    ctx.tracker.log_topk(topk.path)
    return topk
