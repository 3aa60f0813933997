"""``recvae run``: ingest → every model (:func:`~recvae.run.model.run_model`) → the later
stages → the comparison and the results files.

One MLflow parent run per pipeline and one child run per model. A failure in one model is
reported and the others still run; the outcomes say which failed.

A pipeline run that finished is never reopened: ``--resume`` continues only a run that did not
finish (the models given now, beside those that ended before, whose outcomes are kept), and
otherwise starts a new one. A ``--models`` subset that is not the continuation of a whole run
writes its results and comparison beside the whole pipeline's (``comparison.mult-vae.md``),
never over them.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from recvae.config import ModelConfig, PipelineConfig, select_models, to_dict
from recvae.data.dataset import Dataset
from recvae.data.ingest import drop_lines, ingest
from recvae.errors import RecvaeError
from recvae.io import atomic_file, read_json
from recvae.reporting import NullTracker, Tracker
from recvae.run.comparison import Comparison, log_comparison
from recvae.run.context import SELECTION_METRIC, Layout, ModelJob, ModelOutcome, RunContext
from recvae.run.ensemble import member_recorders, run_ensemble
from recvae.run.model import run_model
from recvae.run.report import SUMMARY_METRICS, format_summary
from recvae.search.spec import model_search

log = logging.getLogger(__name__)

RESULTS_FILES = ("results.csv", "results.json")
STATE_FILE = "pipeline.json"  # the last pipeline run of this output folder: id, models, finished


def run_pipeline(
    cfg: PipelineConfig,
    *,
    only: Sequence[str] | None = None,
    track: bool = True,
    show_progress: bool = True,
    force_ingest: bool = False,
    tracker_factory: Callable[..., Tracker] | None = None,
    resume: bool = False,
) -> list[ModelOutcome]:
    """Run ``cfg`` end to end; returns one outcome per model of the comparison (those of an
    unfinished run that this ``resume`` continues included; failures too).

    ``resume``: models that train in epochs continue from their checkpoint under
    ``output_dir/checkpoints`` where one exists (after a crash or a kill); the others are refitted.
    """
    models = select_models(cfg, only)
    ensemble = cfg.ensemble is not None and (not only or cfg.ensemble.name in only)
    stages = [cfg.ensemble.name] if ensemble and cfg.ensemble is not None else []
    state = PipelineState.plan(Path(cfg.output_dir), cfg, [m.run_name for m in models] + stages, resume)
    # connect first: an unreachable server fails now, not after an hour of training
    tracker = _tracker(cfg, track, state.continued, tracker_factory)
    state.save()
    dataset = _ingest(cfg, force_ingest)
    ctx = RunContext(Layout(Path(cfg.output_dir)), tracker, cfg.device, tuple(cfg.evaluation.ks),
                     cfg.evaluation.batch_size, show_progress, resume, Path(cfg.data.out_dir))
    table_metrics = [f"test/{m}" for m in cfg.evaluation.table_metrics()]
    with tracker.start_pipeline(
        cfg.name, dataset=dataset, dataset_source=cfg.data.path, config=to_dict(cfg),
        device=cfg.device, description=f"recvae pipeline {cfg.name}",
        display_name=f"{cfg.name} {datetime.now():%Y-%m-%d %H:%M}", tags={"recvae.pipeline": cfg.name},
    ):
        outcomes = state.earlier([*(m.run_name for m in models), *stages])
        recorders = member_recorders(cfg, ctx)
        for job in jobs(cfg, models):
            outcomes.append(_run_one(job.name, job.config.model, lambda job=job: run_model(
                job, dataset, ctx, record=recorders.get(job.name))))
            write_results(outcomes, cfg.output_dir, table_metrics, state.suffix, state.uid)
        if stages:
            outcomes.append(_run_one(stages[0], "ensemble", lambda: run_ensemble(
                cfg.ensemble, outcomes, dataset, ctx, cfg.recommend)))
        outcomes = _in_file_order(cfg, outcomes)
        comparison = Comparison.of(outcomes, table_metrics, SELECTION_METRIC)
        written = comparison.write(cfg.output_dir, state.suffix)
        written += write_results(outcomes, cfg.output_dir, table_metrics, state.suffix, state.uid)
        if comparison.best is not None:
            print(f"best on validation ({SELECTION_METRIC}): {comparison.best.run_name}", flush=True)
        _log_comparison(cfg, tracker, dataset, comparison, outcomes, written)
    state.finish()
    if tracker.offline:
        print(tracker.offline_summary(), file=sys.stderr, flush=True)
    return outcomes


def jobs(cfg: PipelineConfig, models: Sequence[ModelConfig]) -> list[ModelJob]:
    """The :class:`ModelJob` of each model block: its search, study, and the pipeline's refit,
    top-k and logging settings."""
    resolved = to_dict(cfg)
    logged = {"data": resolved["data"], "evaluation": resolved["evaluation"]}
    return [
        ModelJob(mc, search=model_search(cfg, mc), study=study_name(cfg, mc), refit=cfg.refit,
                 recommend=cfg.recommend, log=cfg.tracking.log_model, register=cfg.tracking.register,
                 strict_resume=False, logged=logged)
        for mc in models
    ]


def _run_one(name: str, model: str, stage: Callable[[], ModelOutcome]) -> ModelOutcome:
    """One model's stage, its failure reported as a failed outcome: one model's failure must not
    stop the others."""
    print(f"── {name} ({model})", flush=True)
    try:
        return stage()
    except Exception as e:
        detail = str(e) if isinstance(e, RecvaeError) else f"{type(e).__name__}: {e}"
        print(f"[{name}] FAILED: {detail}", file=sys.stderr, flush=True)
        if not isinstance(e, RecvaeError):
            log.debug("".join(traceback.format_exception(e)))
        return ModelOutcome.failed(name, model, detail)


def _tracker(
    cfg: PipelineConfig, track: bool, reopen: bool, factory: Callable[..., Tracker] | None,
) -> Tracker:
    if not track:
        return NullTracker()
    from recvae.tracking import Tracker as MlflowTracker

    return (factory or MlflowTracker)(cfg.tracking.uri, cfg.tracking.experiment,
                                      output_dir=cfg.output_dir, resume=reopen)


def _ingest(cfg: PipelineConfig, force: bool) -> Dataset:
    t0 = time.perf_counter()
    dataset, reused = ingest(cfg.data, force=force)
    print(f"dataset {cfg.data.out_dir} ({'reused' if reused else 'built'} in "
          f"{time.perf_counter() - t0:.1f}s): {format_summary(dataset.summary(), one_line=True)}",
          flush=True)
    for line in drop_lines(dataset.manifest):
        print(f"  {line}", flush=True)
    return dataset


def _log_comparison(
    cfg: PipelineConfig, tracker: Tracker, dataset: Dataset, comparison: Comparison,
    outcomes: Sequence[ModelOutcome], written: Sequence[Path],
) -> None:
    """The comparison's files, table, best-model tags and alias on the open pipeline run."""
    for path in written:
        tracker.log_artifact(path)
    register = cfg.tracking.register and cfg.tracking.log_model
    if register:
        from recvae.tracking import registered_model_name  # MLflow only where a model is registered

    protocol = dataset.summary()["protocol"]
    heading = f"{cfg.name}: {len(outcomes)} models on {cfg.data.dataset_name} ({protocol} generalization)"
    log_comparison(tracker, comparison, outcomes, register=register, heading=heading,
                   registered_name=registered_model_name(dataset) if register else "")


def _in_file_order(cfg: PipelineConfig, outcomes: Sequence[ModelOutcome]) -> list[ModelOutcome]:
    """``outcomes`` in the order of the file's model blocks (later stages after them)."""
    order = {m.run_name: i for i, m in enumerate(cfg.models)}
    return sorted(outcomes, key=lambda o: order.get(o.run_name, len(order)))


def study_name(cfg: PipelineConfig, mc: ModelConfig) -> str:
    """The Optuna study of a tuned model: pipeline, dataset and run name, so pipelines that
    share a storage do not mix their trials."""
    return f"{cfg.name}:{cfg.data.dataset_name}:{mc.run_name}"


# --------------------------------------------------------------------------- results files
def write_results(
    outcomes: Sequence[ModelOutcome], output_dir: str | Path, metrics: Sequence[str] = SUMMARY_METRICS,
    suffix: str = "", pipeline: str | None = None,
) -> list[Path]:
    """The pipeline's results table, rewritten as each model ends: ``results<suffix>.csv`` (one
    row per model: status, every ``test/`` and ``val/`` metric, seconds, run id, error) and
    ``results<suffix>.json`` (the outcomes in full, which metrics the printed table shows, and
    the ``pipeline`` run they belong to)."""
    out = Path(output_dir)
    keys = sorted({k for o in outcomes for k in o.metrics}, key=lambda k: (k not in metrics, k))
    columns = ["model", "type", "status", *keys, "fit_seconds", "score_seconds", "refit_seconds",
               "run_id", "error"]
    csv_path, json_path = (out / name.replace(".", f"{suffix}.", 1) for name in RESULTS_FILES)
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
        if pipeline is not None:
            doc["pipeline"] = pipeline
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return [csv_path, json_path]


@dataclass
class PipelineState:
    """The last pipeline run of an output folder (``pipeline.json``): its id, the models it
    covers, and whether it finished; what ``--resume`` continues and where its files go."""

    path: Path
    uid: str
    models: list[str]
    all_models: list[str]
    continued: bool = False
    finished: bool = False
    kept: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def plan(cls, out: Path, cfg: PipelineConfig, names: list[str], resume: bool) -> PipelineState:
        """Continue the last run of ``out`` (``resume``, and it did not finish) or start one;
        :meth:`save` records it."""
        every = [m.run_name for m in cfg.models] + ([cfg.ensemble.name] if cfg.ensemble is not None else [])
        last = read_json(out / STATE_FILE, "a pipeline state") if (out / STATE_FILE).is_file() else None
        if resume and last is not None and not last.get("finished"):
            covered = [n for n in every if n in {*last["models"], *names}]
            state = cls(out / STATE_FILE, last["uid"], covered, every, continued=True)
            state.kept = _earlier_outcomes(out / ("results" + state.suffix + ".json"), last["uid"])
            if not state.kept and last["models"] != covered:  # the files moved to the wider suffix
                state.kept = _earlier_outcomes(out / ("results" + _suffix(last["models"], every) + ".json"),
                                               last["uid"])
        else:
            if resume and last is not None:
                print(f"{out}: the last pipeline run finished; starting a new one (its results "
                      "and comparison stay as they are)", flush=True)
            state = cls(out / STATE_FILE, uuid.uuid4().hex, names, every)
        return state

    @property
    def suffix(self) -> str:
        return _suffix(self.models, self.all_models)

    def earlier(self, running: Sequence[str]) -> list[ModelOutcome]:
        """Outcomes an earlier process of this run left for the models not run now."""
        now = set(running)
        return [ModelOutcome(**o) for o in self.kept if o["run_name"] not in now]

    def finish(self) -> None:
        self.finished = True
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path) as tmp:
            tmp.write_text(json.dumps({"uid": self.uid, "models": self.models,
                                       "finished": self.finished}) + "\n")


def _suffix(models: Sequence[str], every: Sequence[str]) -> str:
    """``""`` for the whole pipeline; ``.a+b`` for a subset of its models."""
    return "" if set(every) <= set(models) else "." + "+".join(m for m in every if m in models)


def _earlier_outcomes(path: Path, uid: str) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    doc = read_json(path, "a pipeline's results")
    if doc.get("pipeline") != uid:
        return []
    fields = set(ModelOutcome.__dataclass_fields__)
    return [{k: v for k, v in o.items() if k in fields} for o in doc.get("models", [])]
