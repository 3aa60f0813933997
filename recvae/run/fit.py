"""Fitting stages: a model block searched or fitted on the training part and scored on
validation (:func:`fit`), refitted on training + validation (:func:`refit`), or trained
data-parallel by torchrun (:func:`fit_distributed`).

Each returns what the next stage needs, as one value; none writes into an object it was given.

Example::

    fitted = fit(job, dataset, ctx)            # Fitted(model, config, seconds, val_metrics, ...)
    model, seconds = refit(fitted, job, dataset, ctx)
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import yaml

from recvae import distributed
from recvae.config import ModelConfig, build_model
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.evaluation import evaluate
from recvae.models.base import Recommender
from recvae.reporting import Callback, EpochReport, FitSummary, print_epoch, report_all
from recvae.run.context import SELECTION_METRIC, ModelJob, RunContext

ScoreFn = Callable[[sp.csr_matrix], np.ndarray]


class ScoreRecorder(Protocol):
    """Sees a model's validation scores as they are computed (``wrap``), then keeps them (``save``)."""

    def wrap(self, score: ScoreFn) -> ScoreFn: ...

    def save(self) -> None: ...


FitStage = Callable[[ModelJob, Dataset, RunContext, "ScoreRecorder | None"], "Fitted"]


@dataclass
class Fitted:
    """A model block fitted on the training part and scored on validation.

    ``model`` is None where a refit follows a search whose best trial was not kept (its params
    are in ``config``); ``seconds`` is the fit's (a search's: its trials'); ``refit_overrides``
    what a refit on training + validation changes (the selected epoch count)."""

    model: Recommender | None
    config: ModelConfig
    seconds: float
    val_metrics: dict[str, float]
    score_seconds: float = 0.0
    selected_epoch: int | None = None
    refit_overrides: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] | None = None
    best_trial: int | None = None


def train(
    model: Recommender, dataset: Dataset, ctx: RunContext, label: str, checkpoint_dir: Path, *,
    callbacks: Sequence[Callback] = (), strict_resume: bool = True,
) -> float:
    """``model.fit`` with checkpoints, printing one line per epoch (models that train in epochs)
    or per fit; ``ctx.resume`` continues from a checkpoint. Returns the fit's seconds: a resumed
    fit's include those its checkpoint carried (the killed processes' share).

    ``strict_resume``: asking to resume a model that does not train in epochs is an error
    (``recvae train --resume``) rather than a plain fit (a resumed pipeline refits such models).
    """
    if ctx.resume and strict_resume and not model.trains_in_epochs:
        raise RecvaeError(f"{model.name}: --resume needs a model that trains in epochs")
    summary = None if model.trains_in_epochs else FitSummary()
    printer = print_epoch(label) if summary is None else summary
    t0 = time.perf_counter()
    model.fit(dataset, callbacks=[printer, *callbacks], show_progress=ctx.show_progress,
              checkpoint_dir=checkpoint_dir, resume=ctx.resume)
    seconds = time.perf_counter() - t0
    if summary is not None:
        print(summary.line(label, seconds), flush=True)
    return seconds + model.resumed_seconds_


def validate(
    model: Recommender, dataset: Dataset, ctx: RunContext, record: ScoreRecorder | None = None,
) -> tuple[dict[str, float], float]:
    """``model``'s ``val/*`` metrics and their scoring seconds; none where the dataset has no
    validation targets left (a dataset for a refit, ``recvae train --refit``). ``record`` keeps
    the scores of this one pass."""
    if not dataset.validation.holdout.nnz:
        return {}, 0.0
    score = record.wrap(model.score) if record is not None else model.score
    t0 = time.perf_counter()
    result = evaluate(score, dataset.validation, ctx.ks, batch_size=ctx.eval_batch_size, inplace=True)
    if record is not None:
        record.save()
    return result.as_metrics("val"), time.perf_counter() - t0


def fit(job: ModelJob, dataset: Dataset, ctx: RunContext, record: ScoreRecorder | None = None) -> Fitted:
    """Search or fit ``job``'s block on the training part and score it on validation.

    ``record`` sees the validation scores (the ensemble keeps its members' from this one pass)."""
    if job.search is not None:
        return _searched(job, dataset, ctx, record)
    mc = job.config
    on_epoch = [ctx.tracker.epoch_callback()]
    if mc.nproc > 1:  # the processes print their epochs; the tracker gets their history
        t0 = time.perf_counter()
        model = fit_distributed(mc, ctx, ctx.out.distributed(mc.run_name), callbacks=on_epoch)
        seconds = time.perf_counter() - t0
    else:
        model = build_model(mc, device=ctx.device, where=f"model {mc.run_name!r}")
        seconds = train(model, dataset, ctx, mc.run_name, ctx.out.checkpoints(mc.run_name),
                        callbacks=on_epoch, strict_resume=job.strict_resume)
    ctx.tracker.complete_curve(model.history_, model.best_epoch_)  # epochs a checkpoint restored
    val, score_seconds = validate(model, dataset, ctx, record)
    return Fitted(model, mc, seconds, val, score_seconds, model.best_epoch_, model.refit_params())


def _searched(job: ModelJob, dataset: Dataset, ctx: RunContext, record: ScoreRecorder | None) -> Fitted:
    """Tune the block on validation (:func:`recvae.run.search.search_model`); the best trial's
    model is the fitted one where it was kept (no refit follows, or the ensemble needs its
    validation scores), else only its params."""
    from recvae.run.search import search_model

    mc, spec = job.config, job.search
    assert spec is not None
    keep = not job.refit or record is not None
    found = search_model(mc, dataset, spec, study_name=job.study or mc.run_name, ctx=ctx, keep_best=keep)
    best_mc = replace(mc, params=found.params)
    _log_search(ctx, found)
    model = found.model
    if model is None and keep:
        # the best trial ran in another process (a shared study): train it again here, with the
        # same params and seed, selected on validation as the trial was
        print(f"[{mc.run_name}] best trial {found.best_trial} ran elsewhere: training it here", flush=True)
        model = build_model(best_mc, device=ctx.device, where=f"model {mc.run_name!r}")
        train(model, dataset, ctx, mc.run_name, ctx.out.checkpoints(mc.run_name), strict_resume=False)
    val, score_seconds = found.val_metrics, 0.0
    if record is not None and model is not None:  # the members' validation scores, once
        val, score_seconds = validate(model, dataset, ctx, record)
    # the study's trial time, not this process's: a resumed search would otherwise show seconds
    return Fitted(model, best_mc, found.counts.seconds, val, score_seconds, found.best_epoch,
                  found.refit_params, found.summary(), found.best_trial)


def _log_search(ctx: RunContext, found: Any) -> None:
    """The best trial's values and curve, and the search's counts, on the model's run."""
    ctx.tracker.log_params({"model": found.best_values, "search": {"best_trial": found.best_trial}})
    on_epoch = ctx.tracker.epoch_callback()  # the best trial's curve, for the model run's plot
    for point in found.curve:
        values = {k: v for k, v in point.items() if k != "epoch"}
        if values:
            epoch = int(point["epoch"])
            on_epoch(EpochReport(epoch=epoch, metrics=values, is_best=epoch == found.best_epoch))
    s = found.summary()
    ctx.tracker.log_final({f"search/{k}": float(s[k]) for k in (
        "complete", "pruned", "failed", "lost", "trials_here", "best_trial", "wall_seconds",
        "trial_seconds")})


def refit(fitted: Fitted, job: ModelJob, dataset: Dataset, ctx: RunContext) -> tuple[Recommender, float]:
    """A fresh model of the fitted block trained on training + validation with its
    :meth:`~Recommender.refit_params` (for the autoencoders: exactly the selected number of
    epochs, without early stopping: there is no validation left to stop on), and its seconds.

    A searched block's refit checkpoints are its best trial's own, so a resumed search whose
    best trial changed refits afresh instead of meeting the old best's checkpoint."""
    mc = fitted.config
    refit_mc = replace(mc, params={**mc.params, **fitted.refit_overrides})
    epochs = fitted.refit_overrides.get("epochs")
    print(f"[{mc.run_name}] refit on training + validation"
          + (f" for {epochs} epochs" if epochs is not None else ""), flush=True)
    if mc.nproc > 1:
        t0 = time.perf_counter()
        model = fit_distributed(refit_mc, ctx, ctx.out.distributed(f"{mc.run_name}.refit"), refit=True)
        return model, time.perf_counter() - t0
    model = build_model(refit_mc, device=ctx.device, where=f"model {mc.run_name!r} (refit)")
    trial = f".trial{fitted.best_trial}" if fitted.best_trial is not None else ""
    seconds = train(model, dataset.for_refit(), ctx, f"{mc.run_name} refit",
                    ctx.out.checkpoints(f"{mc.run_name}.refit{trial}"), strict_resume=False)
    return model, seconds


def fit_distributed(
    mc: ModelConfig, ctx: RunContext, out_dir: Path, *, refit: bool = False,
    callbacks: Sequence[Callback] = (),
) -> Recommender:
    """Train ``mc`` data-parallel in ``mc.nproc`` processes: torchrun on ``recvae train`` (no
    tracking) writing the model to ``out_dir``, which is loaded and returned. Its epoch lines
    print as it trains; its history is then handed to ``callbacks`` (e.g. the tracker's).

    ``refit``: train on training + validation (``recvae train --refit``). ``ctx.resume``
    continues from the checkpoint that an interrupted run with the same ``out_dir`` left."""
    from recvae.models import load_model

    if ctx.data_dir is None:
        raise RecvaeError(f"{mc.run_name}: nproc {mc.nproc} needs the dataset directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    params_file = out_dir.parent / f"{out_dir.name}.params.yaml"
    params_file.write_text(yaml.safe_dump(dict(mc.params)))
    cmd = [*distributed.torchrun_command(mc.nproc), "train", "--data", str(ctx.data_dir),
           "--model", mc.model, "--label", mc.run_name, "--params", str(params_file),
           "--out", str(out_dir), "--no-track", "--overwrite"]
    cmd += (["--device", ctx.device] if ctx.device else []) + (["--resume"] if ctx.resume else [])
    cmd += (["--refit"] if refit else []) + ([] if ctx.show_progress else ["--quiet"])
    print(f"[{mc.run_name}] training in {mc.nproc} processes: {' '.join(cmd)}", flush=True)
    status = subprocess.run(cmd).returncode
    if status != 0:
        raise RecvaeError(
            f"{mc.run_name}: training in {mc.nproc} processes failed (torchrun exit status "
            f"{status}; its output is above)"
        )
    model = load_model(out_dir)
    best = -float("inf")
    for h in model.history_ if callbacks else ():
        metrics = {k: v for k, v in h.items() if k != "epoch"}
        score = metrics.get(SELECTION_METRIC)
        is_best = score is None or score > best
        best = max(best, score) if score is not None else best
        report_all(callbacks, EpochReport(epoch=int(h["epoch"]), metrics=metrics, is_best=is_best))
    return model
