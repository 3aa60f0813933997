"""The batch pipeline: ingest → for each model: train → evaluate → top-k file → MLflow.

One MLflow parent run per pipeline and one child run per model. A failure in one model is
reported and the others still run; the exit status says whether all succeeded.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from recvae import distributed
from recvae.config import ModelConfig, PipelineConfig, build_model, to_dict
from recvae.data.dataset import Dataset
from recvae.data.ingest import ingest
from recvae.errors import RecvaeError
from recvae.evaluation import evaluate
from recvae.models.base import Callback, EpochReport, Recommender, report_all
from recvae.recommend import write_recommendations

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("test/recall_at_20", "test/recall_at_50", "test/ndcg_at_100")


@dataclass
class ModelOutcome:
    """What happened to one model of a pipeline."""

    run_name: str
    model: str
    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    fit_seconds: float | None = None
    score_seconds: float | None = None
    model_dir: str | None = None
    topk_path: str | None = None
    run_id: str | None = None
    error: str | None = None
    refit_seconds: float | None = None
    refit_epochs: int | None = None  # epochs of the refit, for models that train in epochs


def print_epoch(run_name: str, stream: Any = None) -> Callback:
    """A callback printing one line per epoch: loss, β, validation NDCG@100, seconds."""

    def on_epoch(report: EpochReport) -> None:
        m = report.metrics
        parts = [f"[{run_name}] epoch {report.epoch:3d}"]
        for key, label in (
            ("train/loss", "loss"), ("train/beta", "β"), ("val/ndcg_at_100", "val NDCG@100"),
            ("epoch_seconds", "s"), ("fit_seconds", "fit s"),
        ):
            if key in m:
                parts.append(f"{label} {m[key]:.4f}" if label != "s" else f"{m[key]:.1f}s")
        if report.is_best and "val/ndcg_at_100" in m:  # without validation every epoch is "best"
            parts.append("*best")
        print("  ".join(parts), file=stream or sys.stdout, flush=True)

    return on_epoch


def _fit(model: Recommender, dataset: Dataset, callbacks: list[Callback], show_progress: bool,
         checkpoint_dir: Path | None, resume: bool, *, strict_resume: bool = True) -> None:
    """``model.fit`` with checkpoints; ``resume`` continues from one.

    ``strict_resume``: asking to resume a model that does not train in epochs is an error
    (``recvae train --resume``) rather than a plain fit (a resumed pipeline refits such models).
    """
    if resume and strict_resume and not model.trains_in_epochs:
        raise RecvaeError(f"{model.name}: --resume needs a model that trains in epochs")
    model.fit(dataset, callbacks=callbacks, show_progress=show_progress,
              checkpoint_dir=checkpoint_dir, resume=resume)


def _refit(
    overrides: dict[str, Any], mc: ModelConfig, dataset: Dataset, *, device: str | None,
    show_progress: bool, output_dir: Path, resume: bool, data_dir: Path | None = None,
) -> Recommender:
    """A fresh model of ``mc`` fitted on training + validation, with ``overrides``: the selected
    model's :meth:`~Recommender.refit_params` (for the autoencoders: exactly the selected number
    of epochs, without early stopping, since there is no validation left to stop on)."""
    refit_mc = replace(mc, params={**mc.params, **overrides})
    fresh = build_model(refit_mc, device=device, where=f"model {mc.run_name!r} (refit)")
    epochs = overrides.get("epochs")
    print(f"[{mc.run_name}] refit on training + validation"
          + (f" for {epochs} epochs" if epochs is not None else ""), flush=True)
    if mc.nproc > 1:
        return fit_distributed(
            refit_mc, data_dir, output_dir / "distributed" / f"{mc.run_name}.refit",
            device=device, resume=resume, refit=True, show_progress=show_progress,
        )
    _fit(fresh, dataset.for_refit(), [print_epoch(f"{mc.run_name} refit")], show_progress,
         output_dir / "checkpoints" / f"{mc.run_name}.refit", resume, strict_resume=False)
    return fresh


def fit_distributed(
    mc: ModelConfig, data_dir: Path | None, out_dir: Path, *, device: str | None, resume: bool,
    refit: bool = False, show_progress: bool = True, callbacks: Sequence[Callback] = (),
) -> Recommender:
    """Train ``mc`` data-parallel in ``mc.nproc`` processes: torchrun on ``recvae train`` (no
    tracking) writing the model to ``out_dir``, which is loaded and returned. Its epoch lines
    print as it trains; its history is then handed to ``callbacks`` (e.g. the tracker's).

    ``refit``: train on training + validation (``recvae train --refit``). ``resume`` continues
    from the checkpoint that an interrupted run with the same ``out_dir`` left.
    """
    from recvae.models import load_model

    if data_dir is None:
        raise RecvaeError(f"{mc.run_name}: nproc {mc.nproc} needs the dataset directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    params_file = out_dir.parent / f"{out_dir.name}.params.yaml"
    params_file.write_text(yaml.safe_dump(dict(mc.params)))
    cmd = [*distributed.torchrun_command(mc.nproc), "train", "--data", str(data_dir),
           "--model", mc.model, "--label", mc.run_name, "--params", str(params_file),
           "--out", str(out_dir), "--no-track"]
    cmd += (["--device", device] if device else []) + (["--resume"] if resume else [])
    cmd += (["--refit"] if refit else []) + ([] if show_progress else ["--quiet"])
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
        score = metrics.get("val/ndcg_at_100")
        is_best = score is None or score > best
        best = max(best, score) if score is not None else best
        report_all(callbacks, EpochReport(epoch=int(h["epoch"]), metrics=metrics, is_best=is_best))
    return model


def train_and_evaluate(
    mc: ModelConfig,
    dataset: Dataset,
    *,
    output_dir: Path,
    device: str | None,
    ks: Sequence[int],
    eval_batch_size: int,
    recommend: Any | None,
    tracker: Any | None,
    register: bool = False,
    log_model: bool = True,
    show_progress: bool = True,
    resume: bool = False,
    strict_resume: bool = True,
    refit: bool = False,
    config: dict[str, Any] | None = None,
    data_dir: Path | None = None,
) -> ModelOutcome:
    """Train one model, evaluate it on validation and test, write its top-k file, log it all.

    With ``refit``, the validation metrics come from the model fitted on ``dataset.train``; the
    model is then refitted on :meth:`Dataset.for_refit` (for the selected number of epochs where
    it trains in epochs) and the test metrics, top-k file, saved and logged model come from it.
    With ``mc.nproc`` > 1 the model trains data-parallel (:func:`fit_distributed`, which needs
    ``data_dir``, the saved ``dataset``); the rest happens here, in this process.
    """
    model = build_model(mc, device=device, where=f"model {mc.run_name!r}")
    params = {"model": {"name": mc.model, **model.params()}, "refit": refit, **(config or {})}
    run_ctx = (
        tracker.start_model(mc.run_name, params=params, config=params, device=device)
        if tracker is not None else contextlib.nullcontext(None)
    )

    out = ModelOutcome(run_name=mc.run_name, model=mc.model, ok=False)
    with run_ctx as run:
        out.run_id = run.info.run_id if run is not None else None
        tracking = [tracker.epoch_callback()] if tracker is not None else []
        callbacks = [print_epoch(mc.run_name), *tracking]
        t0 = time.perf_counter()
        if mc.nproc > 1:  # the processes print their epochs; the tracker gets their history
            model = fit_distributed(
                mc, data_dir, output_dir / "distributed" / mc.run_name, device=device,
                resume=resume, show_progress=show_progress, callbacks=tracking,
            )
        else:
            _fit(model, dataset, callbacks, show_progress,
                 output_dir / "checkpoints" / mc.run_name, resume, strict_resume=strict_resume)
        out.fit_seconds = time.perf_counter() - t0

        t1 = time.perf_counter()
        # a dataset for a refit (`recvae train --refit`) has no validation targets left
        val = (
            evaluate(model.score, dataset.validation, ks, batch_size=eval_batch_size, inplace=True)
            if dataset.validation.holdout.nnz else None
        )
        out.score_seconds = time.perf_counter() - t1
        if refit:
            out.refit_epochs = model.best_epoch_
            overrides = model.refit_params()
            # drop the selected model first: EASE's weights alone are n_items² floats
            del model
            model = _refit(
                overrides, mc, dataset, device=device, show_progress=show_progress,
                output_dir=output_dir, resume=resume, data_dir=data_dir,
            )
            out.refit_seconds = time.perf_counter() - t1 - out.score_seconds
        model_dir = model.save(output_dir / "models" / mc.run_name)
        out.model_dir = str(model_dir)

        t2 = time.perf_counter()
        test = evaluate(model.score, dataset.test, ks, batch_size=eval_batch_size, inplace=True)
        out.score_seconds += time.perf_counter() - t2
        out.metrics = {**(val.as_metrics("val") if val else {}), **test.as_metrics("test")}
        if tracker is not None:
            tracker.log_final(out.metrics)
            tracker.log_timings(
                fit_seconds=out.fit_seconds, score_seconds=out.score_seconds,
                refit_seconds=out.refit_seconds,
            )
            if out.refit_epochs is not None:
                tracker.log_final({"refit/epochs": float(out.refit_epochs)})

        if recommend is not None and recommend.enabled:
            suffix = "csv" if recommend.format == "csv" else "parquet"
            path = write_recommendations(
                model, dataset, output_dir / "recommendations" / f"{mc.run_name}.{suffix}",
                k=recommend.k, users=recommend.users, format=recommend.format,
                batch_size=recommend.batch_size, show_progress=show_progress,
            )
            out.topk_path = str(path)
            if tracker is not None:
                tracker.log_topk(path)
        if tracker is not None and log_model:
            from recvae.tracking import registered_model_name  # MLflow only when tracking

            tracker.log_model(
                model, dataset,
                registered_model_name=registered_model_name(dataset, mc.run_name) if register else None,
            )
    out.ok = True
    return out


def run_pipeline(
    cfg: PipelineConfig,
    *,
    only: Sequence[str] | None = None,
    track: bool = True,
    show_progress: bool = True,
    force_ingest: bool = False,
    tracker_factory: Callable[..., Any] | None = None,
    resume: bool = False,
) -> list[ModelOutcome]:
    """Run ``cfg`` end to end; returns one outcome per model (failures included).

    ``resume``: models that train in epochs continue from their checkpoint under
    ``output_dir/checkpoints`` where one exists (after a crash or a kill); the others are refitted.
    """
    models = list(cfg.models)
    if only:
        known = {m.run_name for m in models}
        missing = [name for name in only if name not in known]
        if missing:
            raise RecvaeError(
                f"--models: {missing[0]!r} is not in {cfg.source_file}; expected one of {', '.join(known)}"
            )
        models = [m for m in models if m.run_name in only]

    tracker = None
    if track:  # connect first: an unreachable server fails now, not after an hour of training
        from recvae.tracking import Tracker

        tracker = (tracker_factory or Tracker)(cfg.tracking.uri, cfg.tracking.experiment)

    t0 = time.perf_counter()
    dataset, reused = ingest(cfg.data, force=force_ingest)
    print(
        f"dataset {cfg.data.out_dir} ({'reused' if reused else 'built'} in "
        f"{time.perf_counter() - t0:.1f}s): {format_summary(dataset.summary(), one_line=True)}",
        flush=True,
    )
    output_dir = Path(cfg.output_dir)
    resolved = to_dict(cfg)
    common = {"data": resolved["data"], "evaluation": resolved["evaluation"]}
    outcomes: list[ModelOutcome] = []
    parent = (
        tracker.start_pipeline(
            cfg.name, dataset=dataset, dataset_source=cfg.data.path, config=resolved,
            device=cfg.device, description=f"recvae pipeline {cfg.name}",
        )
        if tracker is not None else contextlib.nullcontext()
    )
    with parent:
        for mc in models:
            print(f"── {mc.run_name} ({mc.model})", flush=True)
            try:
                outcome = train_and_evaluate(
                    mc, dataset, output_dir=output_dir, device=cfg.device,
                    ks=cfg.evaluation.ks, eval_batch_size=cfg.evaluation.batch_size,
                    recommend=cfg.recommend, tracker=tracker, register=cfg.tracking.register,
                    log_model=cfg.tracking.log_model, show_progress=show_progress, config=common,
                    refit=cfg.refit, resume=resume, strict_resume=False,
                    data_dir=Path(cfg.data.out_dir),
                )
            except Exception as e:  # one model's failure must not stop the others
                detail = str(e) if isinstance(e, RecvaeError) else f"{type(e).__name__}: {e}"
                print(f"[{mc.run_name}] FAILED: {detail}", file=sys.stderr, flush=True)
                if not isinstance(e, RecvaeError):
                    log.debug("".join(traceback.format_exception(e)))
                outcome = ModelOutcome(run_name=mc.run_name, model=mc.model, ok=False, error=detail)
            outcomes.append(outcome)
    return outcomes


def format_summary(summary: dict[str, Any], *, one_line: bool = False) -> str:
    """Dataset counts, one per line (like Table 1 of Liang et al.) or on one line."""
    if one_line:
        return (
            f"{summary['users']} users, {summary['items']} items, {summary['interactions']} "
            f"interactions, {summary['protocol']} generalization"
        )
    width = max(len(k) for k in summary)
    lines = []
    for k, v in summary.items():
        text = f"{v:.6f}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))
        lines.append(f"{k:<{width}}  {text}")
    return "\n".join(lines)


def results_table(outcomes: Sequence[ModelOutcome], metrics: Sequence[str] = SUMMARY_METRICS) -> str:
    """model × metrics (+ fit seconds) as a fixed-width table; failed models say so."""
    names = [m.split("/", 1)[1] for m in metrics]
    header = ["model", *names, "fit_s", "status"]
    rows = []
    for o in outcomes:
        vals = [f"{o.metrics[m]:.4f}" if m in o.metrics else "-" for m in metrics]
        fit = f"{o.fit_seconds:.1f}" if o.fit_seconds is not None else "-"
        rows.append([o.run_name, *vals, fit, "ok" if o.ok else "FAILED"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [header, *rows])


__all__ = [
    "ModelOutcome", "fit_distributed", "format_summary", "print_epoch", "results_table",
    "run_pipeline", "train_and_evaluate",
]
