"""One model from its block to its files: search or fit → refit → test → save → log → top-k.

Example::

    outcome = run_model(ModelJob(ModelConfig("ease", params={"l2": 200.0})), dataset, ctx)
    outcome.metrics["test/ndcg_at_100"], outcome.model_dir
"""

from __future__ import annotations

from typing import Any

from recvae.config import build_model
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.run.context import ModelJob, ModelOutcome, RunContext
from recvae.run.fit import FitStage, Fitted, ScoreRecorder, fit, refit
from recvae.run.steps import evaluate_test, export_topk, log_model, save_model


def run_model(
    job: ModelJob, dataset: Dataset, ctx: RunContext, *,
    record: ScoreRecorder | None = None, stage: FitStage = fit,
) -> ModelOutcome:
    """Fit ``job`` with ``stage`` (:func:`~recvae.run.fit.fit`: searched on validation where it
    has a search), refit it with ``job.refit``, score the test part once, save, log and export
    the final model; ``record`` keeps the validation scores (the ensemble's members). Raises on
    failure (the run is marked FAILED)."""
    if job.search is not None and job.config.nproc > 1:
        raise RecvaeError(f"model {job.name!r}: search trials train in one process; remove nproc or search")
    params = _params(job, ctx)
    with ctx.tracker.start_model(job.name, params=params, config=params, device=ctx.device) as run:
        fitted = stage(job, dataset, ctx, record)
        model, refit_seconds = _final(fitted, job, dataset, ctx)
        model_dir = save_model(model, ctx.out.model_dir(job.name))
        test, test_seconds = evaluate_test(model, dataset, ctx)
        ctx.tracker.log_final(fitted.val_metrics)
        ctx.tracker.log_timings(fit_seconds=fitted.seconds, refit_seconds=refit_seconds,
                                score_seconds=fitted.score_seconds + test_seconds)
        refit_epochs = fitted.selected_epoch if job.refit else None
        if refit_epochs is not None:
            ctx.tracker.log_final({"train/refit_epochs": float(refit_epochs)})
        model_id = log_model(ctx, model, dataset, model_dir, test, log=job.log, register=job.register)
        recommend = job.recommend if job.recommend is not None and job.recommend.enabled else None
        topk = export_topk(model, dataset, job.name, recommend, ctx) if recommend else None
    # known only now: a run created while the store was away gets its id at the first push
    return _outcome(job, fitted, run, {**fitted.val_metrics, **test}, model_dir=str(model_dir),
                    topk_path=str(topk.path) if topk else None, model_id=model_id,
                    score_seconds=fitted.score_seconds + test_seconds,
                    refit_seconds=refit_seconds, refit_epochs=refit_epochs)


def _final(fitted: Fitted, job: ModelJob, dataset: Dataset, ctx: RunContext) -> tuple[Any, float | None]:
    """The model that is tested, saved and served (the refitted one with ``job.refit``), and the
    refit's seconds."""
    model, fitted.model = fitted.model, None  # a refit must not hold two: EASE's are n_items² floats
    if not job.refit:
        assert model is not None
        return model, None
    del model
    return refit(fitted, job, dataset, ctx)


def _outcome(job: ModelJob, fitted: Fitted, run: Any, metrics: dict[str, float], **rest: Any) -> ModelOutcome:
    return ModelOutcome(
        run_name=job.name, model=job.config.model, ok=True, metrics=metrics,
        fit_seconds=fitted.seconds, search=fitted.search, selected_epoch=fitted.selected_epoch,
        run_id=run.run_id, experiment_id=run.experiment_id, parent_run_id=run.parent_run_id, **rest,
    )


def _params(job: ModelJob, ctx: RunContext) -> dict[str, Any]:
    """The model run's params: the block's model with every hyper-parameter (searched ones
    excepted: they are logged when chosen), the refit flag, the search and ``job.logged``."""
    mc = job.config
    model = build_model(mc, device=ctx.device, where=f"model {mc.run_name!r}")
    searched = set(job.search.space) if job.search is not None else set()
    fixed = {k: v for k, v in model.params().items() if k not in searched}
    params = {"model": {"name": mc.model, **fixed}, "refit": job.refit, **job.logged}
    if job.search is not None:
        from recvae.search.study import masked

        spec = job.search
        params["search"] = {
            "trials": spec.trials, "timeout_minutes": spec.timeout_minutes,
            "sampler": spec.sampler.describe(), "pruner": spec.pruner.describe(),
            "storage": masked(spec.storage) if spec.storage else "output_dir/optuna.db",
            "study": job.study, "seed": spec.seed, "space": spec.describe(),
        }
    return params
