"""The batch pipeline: ingest → for each model: train → evaluate → top-k file → MLflow.

One MLflow parent run per pipeline and one child run per model. A failure in one model is
reported and the others still run; the exit status says whether all succeeded.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from recvae import distributed
from recvae.comparison import Comparison, log_comparison
from recvae.config import ModelConfig, PipelineConfig, build_model, select_models, to_dict
from recvae.data.dataset import Dataset
from recvae.data.ingest import drop_lines, ingest
from recvae.errors import RecvaeError
from recvae.evaluation import evaluate
from recvae.io import atomic_file
from recvae.models.base import Callback, EpochReport, Recommender, report_all
from recvae.recommend import write_recommendations
from recvae.search.spec import SearchSpec, model_search

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("test/recall_at_20", "test/recall_at_50", "test/ndcg_at_100")
SELECTION_METRIC = "val/ndcg_at_100"  # what picks epochs (and hyper-parameters): never the test


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
    search: dict[str, Any] | None = None  # a tuned model's search: counts, best trial, seconds
    refit_seconds: float | None = None
    refit_epochs: int | None = None  # epochs of the refit, for models that train in epochs
    experiment_id: str | None = None  # MLflow's, when tracked
    parent_run_id: str | None = None  # the pipeline's MLflow run
    selected_epoch: int | None = None  # the epoch selected on validation (models that train in epochs)
    model_id: str | None = None  # the MLflow LoggedModel, when logged


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


class FitSummary:
    """A callback that keeps count of a fit's reports, for one line at the end of the fit.

    Models that do not select an epoch (ALS's 15 iterations, BPR's 100, EASE's one solve) get
    one line per fit instead of one per epoch.
    """

    def __init__(self) -> None:
        self.epochs = 0
        self.last: dict[str, float] = {}

    def __call__(self, report: EpochReport) -> None:
        self.epochs += 1
        self.last = report.metrics

    def line(self, label: str, seconds: float) -> str:
        """``[bpr] fit: 100 epochs in 3.1s, train/auc 0.9132``."""
        epochs = f"{self.epochs} epochs in " if self.epochs > 1 else ""
        last = [f"{k} {v:.4f}" for k, v in self.last.items() if k.startswith("train/")]
        return f"[{label}] fit: {epochs}{seconds:.1f}s" + (", " + ", ".join(last) if last else "")


def _fit(model: Recommender, dataset: Dataset, label: str, callbacks: list[Callback],
         show_progress: bool, checkpoint_dir: Path | None, resume: bool, *,
         strict_resume: bool = True) -> float:
    """``model.fit`` with checkpoints, printing one line per epoch (models that train in epochs)
    or per fit; ``resume`` continues from a checkpoint. Returns the fit's seconds: a resumed
    fit's include those its checkpoint carried (the killed processes' share).

    ``strict_resume``: asking to resume a model that does not train in epochs is an error
    (``recvae train --resume``) rather than a plain fit (a resumed pipeline refits such models).
    """
    if resume and strict_resume and not model.trains_in_epochs:
        raise RecvaeError(f"{model.name}: --resume needs a model that trains in epochs")
    summary = None if model.trains_in_epochs else FitSummary()
    printer = print_epoch(label) if summary is None else summary
    t0 = time.perf_counter()
    model.fit(dataset, callbacks=[printer, *callbacks], show_progress=show_progress,
              checkpoint_dir=checkpoint_dir, resume=resume)
    seconds = time.perf_counter() - t0
    if summary is not None:
        print(summary.line(label, seconds), flush=True)
    return seconds + model.resumed_seconds_


def _refit(
    overrides: dict[str, Any], mc: ModelConfig, dataset: Dataset, *, device: str | None,
    show_progress: bool, output_dir: Path, resume: bool, data_dir: Path | None = None,
    best_trial: int | None = None,
) -> tuple[Recommender, float]:
    """A fresh model of ``mc`` fitted on training + validation, with ``overrides``: the selected
    model's :meth:`~Recommender.refit_params` (for the autoencoders: exactly the selected number
    of epochs, without early stopping, since there is no validation left to stop on), and the
    refit's seconds (as :func:`_fit` counts them).

    ``best_trial``: the search trial whose params ``mc`` holds. Its refit checkpoints are its
    own, so a resumed search whose best trial changed refits afresh instead of meeting the old
    best's checkpoint.
    """
    refit_mc = replace(mc, params={**mc.params, **overrides})
    fresh = build_model(refit_mc, device=device, where=f"model {mc.run_name!r} (refit)")
    epochs = overrides.get("epochs")
    print(f"[{mc.run_name}] refit on training + validation"
          + (f" for {epochs} epochs" if epochs is not None else ""), flush=True)
    if mc.nproc > 1:
        t0 = time.perf_counter()
        model = fit_distributed(
            refit_mc, data_dir, output_dir / "distributed" / f"{mc.run_name}.refit",
            device=device, resume=resume, refit=True, show_progress=show_progress,
        )
        return model, time.perf_counter() - t0
    name = f"{mc.run_name}.refit" + (f".trial{best_trial}" if best_trial is not None else "")
    seconds = _fit(fresh, dataset.for_refit(), f"{mc.run_name} refit", [], show_progress,
                   output_dir / "checkpoints" / name, resume, strict_resume=False)
    return fresh, seconds


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
    search: SearchSpec | None = None,
    study_name: str | None = None,
    data_dir: Path | None = None,
) -> ModelOutcome:
    """Train one model, evaluate it on validation and test, write its top-k file, log it all.

    With ``refit``, the validation metrics come from the model fitted on ``dataset.train``; the
    model is then refitted on :meth:`Dataset.for_refit` (for the selected number of epochs where
    it trains in epochs) and the test metrics, top-k file, saved and logged model come from it.
    With ``search``, the model's parameters are first tuned on validation in the Optuna study
    ``study_name`` (:func:`recvae.search.runner.search_model`), and the final model is the
    best trial's: refitted with ``refit``, else the best trial's fitted model itself. Trials
    train in this process: a searched model with ``mc.nproc`` > 1 is refused.
    With ``mc.nproc`` > 1 the model trains data-parallel (:func:`fit_distributed`, which needs
    ``data_dir``, the saved ``dataset``); the rest happens here, in this process.
    """
    if search is not None and mc.nproc > 1:
        raise RecvaeError(
            f"model {mc.run_name!r}: search trials train in one process; remove nproc or search"
        )
    model = build_model(mc, device=device, where=f"model {mc.run_name!r}")
    searched = set(search.space) if search is not None else set()
    fixed = {k: v for k, v in model.params().items() if k not in searched}
    params = {"model": {"name": mc.model, **fixed}, "refit": refit, **(config or {})}
    if search is not None:
        params["search"] = _search_params(search, study_name)
    run_ctx = (
        tracker.start_model(mc.run_name, params=params, config=params, device=device)
        if tracker is not None else contextlib.nullcontext(None)
    )

    out = ModelOutcome(run_name=mc.run_name, model=mc.model, ok=False)
    with run_ctx as run:
        if run is not None:
            out.run_id, out.experiment_id = run.info.run_id, run.info.experiment_id
            out.parent_run_id = run.parent.run_id if run.parent is not None else None
        out.score_seconds = 0.0
        if search is not None:
            del model  # the search builds one per trial
            model, mc, val_metrics, overrides = _search(
                mc, dataset, search, study_name or mc.run_name, out, output_dir=output_dir,
                device=device, ks=ks, eval_batch_size=eval_batch_size, tracker=tracker,
                show_progress=show_progress, resume=resume, refit=refit,
            )
        else:
            callbacks = [tracker.epoch_callback()] if tracker is not None else []
            if mc.nproc > 1:  # the processes print their epochs; the tracker gets their history
                t0 = time.perf_counter()
                model = fit_distributed(
                    mc, data_dir, output_dir / "distributed" / mc.run_name, device=device,
                    resume=resume, show_progress=show_progress, callbacks=callbacks,
                )
                out.fit_seconds = time.perf_counter() - t0
            else:
                out.fit_seconds = _fit(
                    model, dataset, mc.run_name, callbacks, show_progress,
                    output_dir / "checkpoints" / mc.run_name, resume, strict_resume=strict_resume,
                )
            if tracker is not None:  # epochs restored from a checkpoint that no report carried
                tracker.complete_curve(model.history_, model.best_epoch_)
            t1 = time.perf_counter()
            # a dataset for a refit (`recvae train --refit`) has no validation targets left
            val_metrics = (
                evaluate(model.score, dataset.validation, ks, batch_size=eval_batch_size,
                         inplace=True).as_metrics("val")
                if dataset.validation.holdout.nnz else {}
            )
            out.score_seconds = time.perf_counter() - t1
            out.refit_epochs, overrides = model.best_epoch_, model.refit_params()
        out.selected_epoch = out.refit_epochs
        if refit:
            # drop the selected model first: EASE's weights alone are n_items² floats
            del model
            model, out.refit_seconds = _refit(
                overrides, mc, dataset, device=device, show_progress=show_progress,
                output_dir=output_dir, resume=resume, data_dir=data_dir,
                best_trial=out.search["best_trial"] if out.search is not None else None,
            )
        else:
            out.refit_epochs = None
        assert model is not None
        model_dir = model.save(output_dir / "models" / mc.run_name)
        out.model_dir = str(model_dir)

        t2 = time.perf_counter()
        test = evaluate(model.score, dataset.test, ks, batch_size=eval_batch_size, inplace=True)
        out.score_seconds += time.perf_counter() - t2
        test_metrics = test.as_metrics("test")
        out.metrics = {**val_metrics, **test_metrics}
        if tracker is not None:
            tracker.log_final(val_metrics)
            tracker.log_timings(
                fit_seconds=out.fit_seconds, score_seconds=out.score_seconds,
                refit_seconds=out.refit_seconds,
            )
            if out.refit_epochs is not None:
                tracker.log_final({"refit/epochs": float(out.refit_epochs)})
            if log_model:  # the test metrics, linked to the logged model and the test part
                from recvae.tracking import registered_model_name  # MLflow only when tracking

                info = tracker.log_model(
                    model, dataset, model_dir=model_dir, metrics=test_metrics,
                    registered_model_name=registered_model_name(dataset) if register else None,
                )
                out.model_id = info.model_id if info is not None else None
            else:
                tracker.log_final(test_metrics)

        if recommend is not None and recommend.enabled:
            suffix = "csv" if recommend.format == "csv" else "parquet"
            topk = write_recommendations(
                model, dataset, output_dir / "recommendations" / f"{mc.run_name}.{suffix}",
                k=recommend.k, users=recommend.users, exclude=recommend.exclude,
                fallback=recommend.fallback, format=recommend.format,
                batch_size=recommend.batch_size, show_progress=show_progress,
            )
            out.topk_path = str(topk.path)
            print(f"[{mc.run_name}] top-{recommend.k}: {topk.describe()} → {topk.path}", flush=True)
            if tracker is not None:
                tracker.log_topk(topk.path)
    # known only now: a run created while the store was away gets its id at the first push
    out.run_id = run.run_id if run is not None else None
    out.ok = True
    return out


def _search(
    mc: ModelConfig, dataset: Dataset, spec: SearchSpec, study_name: str, out: ModelOutcome, *,
    output_dir: Path, device: str | None, ks: Sequence[int], eval_batch_size: int,
    tracker: Any | None, show_progress: bool, resume: bool, refit: bool,
) -> tuple[Recommender | None, ModelConfig, dict[str, float], dict[str, Any]]:
    """Tune ``mc``; returns the final model unless a refit follows (None then), the block with
    the best params, the best trial's validation metrics and its refit overrides."""
    from recvae.search.runner import search_model

    found = search_model(
        mc, dataset, spec, study_name=study_name, output_dir=output_dir, ks=ks,
        eval_batch_size=eval_batch_size, device=device, tracker=tracker, progress=print_epoch,
        show_progress=show_progress, resume=resume, keep_best=not refit,
    )
    # the study's trial time, not this process's: a resumed search would otherwise show seconds
    out.search, out.fit_seconds = found.summary(), found.counts.seconds
    out.refit_epochs = out.selected_epoch = found.best_epoch
    best_mc = replace(mc, params=found.params)
    if tracker is not None:
        tracker.log_params({"model": found.best_values, "search": {"best_trial": found.best_trial}})
        on_epoch = tracker.epoch_callback()  # the best trial's curve, for the model run's plot
        for point in found.curve:
            values = {k: v for k, v in point.items() if k != "epoch"}
            if values:
                epoch = int(point["epoch"])
                on_epoch(EpochReport(epoch=epoch, metrics=values, is_best=epoch == found.best_epoch))
        s = found.summary()
        tracker.log_final({f"search/{k}": float(s[k]) for k in (
            "complete", "pruned", "failed", "lost", "trials_here", "best_trial", "wall_seconds",
            "trial_seconds")})
    model = found.model
    if model is None and not refit:
        # the best trial ran in another process (a shared study): train it again here, with the
        # same params and seed, selected on validation as the trial was
        print(f"[{mc.run_name}] best trial {found.best_trial} ran elsewhere: training it here",
              flush=True)
        model = build_model(best_mc, device=device, where=f"model {mc.run_name!r}")
        _fit(model, dataset, mc.run_name, [], show_progress,
             output_dir / "checkpoints" / mc.run_name, resume, strict_resume=False)
    return model, best_mc, found.val_metrics, found.refit_params


def _search_params(spec: SearchSpec, study_name: str | None) -> dict[str, Any]:
    """How a model is tuned, as the model run's ``search.*`` params."""
    from recvae.search.study import masked

    return {
        "trials": spec.trials, "timeout_minutes": spec.timeout_minutes,
        "sampler": spec.sampler.describe(), "pruner": spec.pruner.describe(),
        "storage": masked(spec.storage) if spec.storage else "output_dir/optuna.db",
        "study": study_name, "seed": spec.seed, "space": spec.describe(),
    }


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
    models = select_models(cfg, only)

    tracker = None
    if track:  # connect first: an unreachable server fails now, not after an hour of training
        from recvae.tracking import Tracker

        tracker = (tracker_factory or Tracker)(
            cfg.tracking.uri, cfg.tracking.experiment, output_dir=cfg.output_dir, resume=resume
        )

    t0 = time.perf_counter()
    dataset, reused = ingest(cfg.data, force=force_ingest)
    print(
        f"dataset {cfg.data.out_dir} ({'reused' if reused else 'built'} in "
        f"{time.perf_counter() - t0:.1f}s): {format_summary(dataset.summary(), one_line=True)}",
        flush=True,
    )
    for line in drop_lines(dataset.manifest):
        print(f"  {line}", flush=True)
    output_dir = Path(cfg.output_dir)
    resolved = to_dict(cfg)
    common = {"data": resolved["data"], "evaluation": resolved["evaluation"]}
    outcomes: list[ModelOutcome] = []
    parent = (
        tracker.start_pipeline(
            cfg.name, dataset=dataset, dataset_source=cfg.data.path, config=resolved,
            device=cfg.device, description=f"recvae pipeline {cfg.name}",
            display_name=f"{cfg.name} {datetime.now():%Y-%m-%d %H:%M}",
            tags={"recvae.pipeline": cfg.name},
        )
        if tracker is not None else contextlib.nullcontext()
    )
    table_metrics = [f"test/{m}" for m in cfg.evaluation.table_metrics()]
    written: list[Path] = []
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
                    search=model_search(cfg, mc), study_name=study_name(cfg, mc),
                    data_dir=Path(cfg.data.out_dir),
                )
            except Exception as e:  # one model's failure must not stop the others
                detail = str(e) if isinstance(e, RecvaeError) else f"{type(e).__name__}: {e}"
                print(f"[{mc.run_name}] FAILED: {detail}", file=sys.stderr, flush=True)
                if not isinstance(e, RecvaeError):
                    log.debug("".join(traceback.format_exception(e)))
                outcome = ModelOutcome(run_name=mc.run_name, model=mc.model, ok=False, error=detail)
            outcomes.append(outcome)
            written = write_results(outcomes, output_dir, table_metrics)  # as each model ends
        comparison = Comparison.of(outcomes, table_metrics, SELECTION_METRIC)
        written += comparison.write(output_dir)
        if comparison.best is not None:
            print(f"best on validation ({SELECTION_METRIC}): {comparison.best.run_name}", flush=True)
        if tracker is not None:
            from recvae.tracking import registered_model_name

            for path in written:
                tracker.log_artifact(path)
            log_comparison(tracker, comparison, outcomes, register=cfg.tracking.register and
                           cfg.tracking.log_model, registered_name=registered_model_name(dataset))
    if tracker is not None and tracker.offline:
        print(tracker.offline_summary(), file=sys.stderr, flush=True)
    return outcomes


RESULTS_FILES = ("results.csv", "results.json")


def write_results(
    outcomes: Sequence[ModelOutcome], output_dir: str | Path, metrics: Sequence[str] = SUMMARY_METRICS,
) -> list[Path]:
    """The pipeline's results table, rewritten as each model ends: ``results.csv`` (one row per
    model: status, every ``test/`` and ``val/`` metric, seconds, run id, error) and
    ``results.json`` (the outcomes in full, and which metrics the printed table shows)."""
    out = Path(output_dir)
    keys = sorted({k for o in outcomes for k in o.metrics}, key=lambda k: (k not in metrics, k))
    columns = ["model", "type", "status", *keys, "fit_seconds", "score_seconds", "refit_seconds",
               "run_id", "error"]
    csv_path, json_path = (out / name for name in RESULTS_FILES)
    with atomic_file(csv_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for o in outcomes:
            w.writerow([o.run_name, o.model, "ok" if o.ok else "FAILED",
                        *(o.metrics.get(k, "") for k in keys),
                        *("" if v is None else v for v in (o.fit_seconds, o.score_seconds, o.refit_seconds)),
                        o.run_id or "", o.error or ""])
    with atomic_file(json_path) as tmp:
        doc = {"table_metrics": list(metrics), "models": [asdict(o) for o in outcomes]}
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return [csv_path, json_path]


def study_name(cfg: PipelineConfig, mc: ModelConfig) -> str:
    """The Optuna study of a tuned model: pipeline, dataset and run name, so pipelines that
    share a storage do not mix their trials."""
    return f"{cfg.name}:{cfg.data.dataset_name}:{mc.run_name}"


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


def results_table(
    outcomes: Sequence[ModelOutcome], metrics: Sequence[str] = SUMMARY_METRICS, *,
    selection: str = SELECTION_METRIC,
) -> str:
    """model × (the validation selection metric, ``metrics`` ± standard error, fit seconds) as a
    fixed-width table under a title naming the part and its number of users; failed models say
    so."""
    part = metrics[0].split("/", 1)[0] if metrics else "test"
    counts = sorted({int(o.metrics[f"{part}/n_users"]) for o in outcomes if f"{part}/n_users" in o.metrics})
    users = f"{counts[0]} users" if len(counts) == 1 else f"{'/'.join(map(str, counts)) or 'no'} users"
    title = (f"{part} metrics, {users} (mean ± standard error); {selection}: the validation metric "
             "that selected each model")

    def cell(o: ModelOutcome, name: str) -> str:
        if name not in o.metrics:
            return "-"
        se = o.metrics.get(f"{name}_stderr")
        return f"{o.metrics[name]:.4f}" + (f" ± {se:.4f}" if se is not None and se == se else "")

    header = ["model", selection, *(m.split("/", 1)[1] for m in metrics), "fit_s", "status"]
    rows = []
    for o in outcomes:
        fit = f"{o.fit_seconds:.1f}" if o.fit_seconds is not None else "-"
        sel = f"{o.metrics[selection]:.4f}" if selection in o.metrics else "-"
        rows.append([o.run_name, sel, *(cell(o, m) for m in metrics), fit, "ok" if o.ok else "FAILED"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([title, *(fmt.format(*r) for r in [header, *rows])])


__all__ = [
    "FitSummary", "ModelOutcome", "fit_distributed", "format_summary", "print_epoch",
    "results_table", "run_pipeline", "train_and_evaluate", "write_results",
]
