"""Tune one pipeline model: trials fitted on the training part and scored on validation only.

Each trial builds the model with the block's fixed ``params`` and the sampled values, fits
it on ``dataset.train`` and scores validation NDCG@100 (the autoencoders select their epoch
on it as always, and their per-epoch values feed the pruner). The test part is never touched
here: the pipeline scores the final model on it once. What a trial leaves in the study's
user attributes (validation metrics, selected epoch, refit overrides, curve) is what the
pipeline needs to refit the best one, from any process that shares the study.

Trials run with Optuna's ask-and-tell interface, one at a time per process, until the study
holds ``trials`` finished ones in total (trials of other processes included); a trial whose
process died does not count. With ``keep_best``, the best trial's fitted model is saved under
``output_dir/search/<model>/`` as soon as a trial beats the study's best, so the final model
need not be trained again, even after a restart.

Example::

    result = search_model(mc, dataset, spec, study_name="quickstart:ml-latest-small:ease",
                          ctx=RunContext(Layout(Path("runs"))))
    result.best_values, result.val_metrics["val/ndcg_at_100"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.trial import TrialState

from recvae.config import ModelConfig, build_model
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.evaluation import evaluate
from recvae.io import atomic_file
from recvae.models.base import Recommender
from recvae.reporting import Callback, EpochReport, Tracker, print_epoch
from recvae.run.context import SELECTION_METRIC, RunContext
from recvae.search.spec import SearchSpec
from recvae.search.study import (
    ATTR_ERROR,
    ATTR_RUN_ID,
    HEARTBEAT_SECONDS,
    Counts,
    count_trials,
    decode_params,
    default_storage,
    enqueue_first,
    fail_dead_trials,
    fingerprint_of,
    grid_size,
    mark_owner,
    masked,
    open_storage,
    open_study,
    suggest,
)

log = logging.getLogger(__name__)

WAIT_SECONDS = 5.0  # polling while other processes finish the last trials
CURVE_KEYS = ("train/loss", "train/beta", SELECTION_METRIC)
ATTR_VAL, ATTR_REFIT = "recvae.val", "recvae.refit_params"
ATTR_EPOCH, ATTR_CURVE, ATTR_SECONDS = "recvae.best_epoch", "recvae.curve", "recvae.fit_seconds"
BEST_FILE = "best.json"


@dataclass
class SearchResult:
    """The outcome of a search: the best trial, what the final model needs, and the counts."""

    params: dict[str, Any]  # the block's params with the best values
    best_values: dict[str, Any]  # the searched parameters only
    best_trial: int
    val_metrics: dict[str, float]  # of the best trial's model (fitted without validation)
    refit_params: dict[str, Any]  # Recommender.refit_params() of the best trial's model
    best_epoch: int | None
    curve: list[dict[str, float]]  # the best trial's per-epoch values (CURVE_KEYS)
    model: Recommender | None  # the best trial's fitted model, where kept (keep_best)
    counts: Counts
    wall_seconds: float  # this process's search
    trials_here: int  # trials this process ran
    study: str
    storage: str  # without password
    budget: int
    timed_out: bool = False
    space: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts and the best trial, as logged and shown in the results table."""
        return {
            "study": self.study, "storage": self.storage, "trials": self.budget,
            "complete": self.counts.complete, "pruned": self.counts.pruned,
            "failed": self.counts.failed, "lost": self.counts.lost,
            "trials_here": self.trials_here, "best_trial": self.best_trial,
            "best_value": self.val_metrics.get(SELECTION_METRIC),
            "wall_seconds": self.wall_seconds, "trial_seconds": self.counts.seconds,
            "timed_out": self.timed_out,
        }


def search_model(
    mc: ModelConfig,
    dataset: Dataset,
    spec: SearchSpec,
    *,
    study_name: str,
    ctx: RunContext,
    keep_best: bool = False,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
) -> SearchResult:
    """Run trials of ``mc`` (fixed params + ``spec``) until the study holds ``spec.trials``.

    ``ctx.tracker`` (inside the model's run) gets one nested run per trial; each trial prints
    its epochs. ``ctx.resume`` continues or joins an existing study (see
    :func:`recvae.search.study.open_study`). ``keep_best`` saves the best trial's model and
    returns it (used when there is no refit).
    """
    with _optuna_quiet():
        return _search(mc, dataset, spec, study_name=study_name, ctx=ctx, keep_best=keep_best, say=say)


def _search(
    mc: ModelConfig, dataset: Dataset, spec: SearchSpec, *, study_name: str, ctx: RunContext,
    keep_best: bool, say: Callable[[str], None],
) -> SearchResult:
    t0 = time.perf_counter()
    url = spec.storage or default_storage(ctx.out.root)
    work = ctx.out.search(mc.run_name)
    storage = open_storage(url)
    study = _open(mc, dataset, spec, study_name, ctx, storage, say)
    budget = spec.trials
    points = grid_size(spec)
    if points is not None and points < budget:
        say(f"[{mc.run_name}] the grid has {points} points: {points} trials instead of {budget}")
        budget = points
    counts = count_trials(study)
    say(f"[{mc.run_name}] study {study_name!r} in {masked(url)}: {counts.done}/{budget} trials done"
        + (f", {counts.running} running elsewhere" if counts.running else ""))
    deadline = t0 + spec.timeout_minutes * 60 if spec.timeout_minutes else None
    run = _TrialRunner(mc, dataset, spec, storage=storage, ctx=ctx,
                       keep_dir=work if keep_best else None, say=say, deadline=deadline)
    here, timed_out = _trials(study, storage, run, budget, deadline, ctx, say)

    counts = count_trials(study)
    best = _best_trial(study, counts, mc.run_name)
    values = decode_params(spec, best.params)
    result = SearchResult(
        params={**mc.params, **values}, best_values=values, best_trial=best.number,
        val_metrics=dict(best.user_attrs.get(ATTR_VAL, {})),
        refit_params=dict(best.user_attrs.get(ATTR_REFIT, {})),
        best_epoch=best.user_attrs.get(ATTR_EPOCH), curve=list(best.user_attrs.get(ATTR_CURVE, [])),
        model=run.kept_model(best.number) if keep_best else None, counts=counts,
        wall_seconds=time.perf_counter() - t0, trials_here=here, study=study_name, storage=masked(url),
        budget=budget, timed_out=timed_out, space=spec.describe(),
    )
    say(
        f"[{mc.run_name}] search: {counts.done} trials ({counts.complete} complete, "
        f"{counts.pruned} pruned, {counts.failed} failed; {here} here) in "
        f"{result.wall_seconds:.0f}s; best trial {best.number}: val NDCG@100 "
        f"{best.value:.4f} with {_show(values)}"
    )
    return result


def _open(
    mc: ModelConfig, dataset: Dataset, spec: SearchSpec, study_name: str, ctx: RunContext,
    storage: optuna.storages.BaseStorage, say: Callable[[str], None],
) -> optuna.Study:
    """The study, created or joined; its dead trials failed; a new one's first trials queued."""
    work = ctx.out.search(mc.run_name)
    fingerprint = fingerprint_of(mc.model, mc.params, spec, _data_key(dataset))
    study = open_study(
        storage, study_name, spec, fingerprint, resume=ctx.resume,
        explicit_storage=spec.storage is not None,
        on_fresh=lambda: shutil.rmtree(work, ignore_errors=True),
        say=lambda line: say(f"[{mc.run_name}] {line}"),
    )
    _close_dead(study, storage, ctx.tracker, mc.run_name, say)
    if not study.get_trials(deepcopy=False) and spec.sampler.name != "grid":
        for values in enqueue_first(study, spec, _first_points(mc, spec)):
            say(f"[{mc.run_name}] queued first: {_show(values)}")
    return study


def _trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, run: _TrialRunner, budget: int,
    deadline: float | None, ctx: RunContext, say: Callable[[str], None],
) -> tuple[int, bool]:
    """Trials in this process until the study holds ``budget`` finished ones (trials of other
    processes included) or ``deadline``; returns how many ran here and whether time ran out."""
    name = run.mc.run_name
    waiting, here = False, 0
    while True:
        counts = count_trials(study)
        if counts.done >= budget:
            return here, False
        if deadline is not None and time.perf_counter() >= deadline:
            say(f"[{name}] timeout_minutes reached after {here} trials here "
                f"({counts.done}/{budget} in the study)")
            return here, True
        if counts.done + counts.running >= budget:
            # the last trials run in other processes: wait for them, so every process ends
            # with the same best trial (a dead process's trials fail by their heartbeat)
            if not waiting:
                say(f"[{name}] waiting for {counts.running} trial(s) running elsewhere")
                waiting = True
            time.sleep(WAIT_SECONDS)
            _close_dead(study, storage, ctx.tracker, name, say)
            continue
        waiting = False
        run(study)
        here += 1


# --------------------------------------------------------------------------- one trial
class _TrialRunner:
    """Runs one trial of a study per call (ask, fit, score on validation, tell)."""

    def __init__(
        self, mc: ModelConfig, dataset: Dataset, spec: SearchSpec, *,
        storage: optuna.storages.BaseStorage, ctx: RunContext, keep_dir: Path | None,
        say: Callable[[str], None], deadline: float | None = None,
    ) -> None:
        self.mc, self.dataset, self.spec, self.storage = mc, dataset, spec, storage
        self.deadline = deadline  # timeout_minutes, as a time.perf_counter() value
        self.ctx, self.tracker, self.keep_dir, self.say = ctx, ctx.tracker, keep_dir, say
        self.ks = tuple(sorted(set(ctx.ks) | {100}))  # the objective is NDCG@100 whatever the table shows

    def __call__(self, study: optuna.Study) -> None:
        with warnings.catch_warnings():
            # Optuna beats only inside study.optimize, and says so; _heartbeat beats here
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        label = f"{self.mc.run_name} trial {trial.number}"
        t0 = time.perf_counter()
        try:
            # beat first: a trial that never beat is never seen dead by other hosts
            with _heartbeat(self.storage, study, trial.number):
                mark_owner(trial)
                value = self._run(trial, label)
        except optuna.TrialPruned as e:
            study.tell(trial, state=TrialState.PRUNED)
            self.say(f"[{label}] PRUNED ({e}) after {time.perf_counter() - t0:.1f}s")
        except RecvaeError as e:  # the trial's own fault (a diverged lr): counts, and we go on
            trial.set_user_attr(ATTR_ERROR, str(e))
            study.tell(trial, state=TrialState.FAIL)
            self.say(f"[{label}] FAILED: {e}")
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)  # not left RUNNING; the model fails
            raise
        else:
            study.tell(trial, value)
            best = study.best_trial
            self.say(
                f"[{label}] val NDCG@100 {value:.4f} in {time.perf_counter() - t0:.1f}s "
                f"(best: trial {best.number}, {best.value:.4f})"
            )
        finally:
            gc.collect()  # an EASE trial holds n_items² floats: free them before the next

    def _run(self, trial: optuna.Trial, label: str) -> float:
        values = {name: suggest(trial, name, p) for name, p in self.spec.space.items()}
        model = build_model(replace(self.mc, params={**self.mc.params, **values}),
                            device=self.ctx.device, where=label)
        self.say(f"[{label}] {_show(values)}")
        curve: list[dict[str, float]] = []
        with self.tracker.start_trial(trial.number, params={"model": model.params()}) as trial_run:
            if trial_run.run_id is not None:
                trial.set_user_attr(ATTR_RUN_ID, trial_run.run_id)
            callbacks = [print_epoch(label), self.tracker.epoch_callback(), _record(curve), _pruning(trial),
                         _timeout(self.deadline)]
            t0 = time.perf_counter()
            try:
                model.fit(self.dataset, callbacks=callbacks, show_progress=self.ctx.show_progress)
            except optuna.TrialPruned:
                trial.set_user_attr(ATTR_CURVE, curve)
                trial_run.state = "PRUNED"
                raise
            fit_seconds = time.perf_counter() - t0
            val = evaluate(model.score, self.dataset.validation, self.ks,
                           batch_size=self.ctx.eval_batch_size, inplace=True).as_metrics("val")
            for key, attr in ((ATTR_VAL, val), (ATTR_REFIT, model.refit_params()),
                              (ATTR_EPOCH, model.best_epoch_), (ATTR_CURVE, curve),
                              (ATTR_SECONDS, fit_seconds)):
                trial.set_user_attr(key, attr)
            self.tracker.log_trial_result({**val, "time/fit_seconds": fit_seconds})
            if self.keep_dir is not None:
                self._keep_if_best(trial, model, val[SELECTION_METRIC])
            trial_run.state = "COMPLETE"
            return val[SELECTION_METRIC]

    # ------------------------------------------------------------ the best trial's model
    def _keep_if_best(self, trial: optuna.Trial, model: Recommender, value: float) -> None:
        """Save ``model`` when its trial beats every trial finished so far (in any process of
        this output_dir): the model first, then ``best.json`` naming it, both atomically."""
        assert self.keep_dir is not None
        self.keep_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.keep_dir / ".lock"), timeout=600):
            best = self._best_kept()
            if best is not None and best["value"] >= value:
                return
            path = self.keep_dir / f"trial-{trial.number}"
            model.save(path, overwrite=True)
            with atomic_file(self.keep_dir / BEST_FILE) as tmp:
                tmp.write_text(json.dumps({"trial": trial.number, "value": value}) + "\n")
            for old in self.keep_dir.glob("trial-*"):
                if old.name != path.name:
                    shutil.rmtree(old, ignore_errors=True)

    def _best_kept(self) -> dict[str, Any] | None:
        assert self.keep_dir is not None
        path = self.keep_dir / BEST_FILE
        if not path.is_file():
            return None
        try:
            best = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise RecvaeError(f"{path}: invalid JSON ({e}); remove it") from None
        return best if (self.keep_dir / f"trial-{best['trial']}").is_dir() else None

    def kept_model(self, number: int) -> Recommender | None:
        """The saved model of trial ``number``, if this output_dir holds it."""
        if self.keep_dir is None:
            return None
        best = self._best_kept()
        if best is None or best["trial"] != number:
            return None
        return Recommender.load(self.keep_dir / f"trial-{number}")


def _pruning(trial: optuna.Trial) -> Callback:
    """Reports each epoch's validation NDCG@100 to the pruner; raises TrialPruned when told to.
    The model only sees an exception leave its callback."""

    def on_epoch(report: EpochReport) -> None:
        value = report.metrics.get(SELECTION_METRIC)
        if value is None:
            return
        trial.report(float(value), report.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"val NDCG@100 {value:.4f} at epoch {report.epoch}")

    return on_epoch


def _timeout(deadline: float | None) -> Callback:
    """Prunes the trial at the first epoch that ends past ``deadline`` (``timeout_minutes``):
    a search never overruns its budget by more than one epoch. A model fitted in one go (its
    only report has no validation metric) is let finish."""

    def on_epoch(report: EpochReport) -> None:
        if deadline is not None and SELECTION_METRIC in report.metrics and time.perf_counter() >= deadline:
            raise optuna.TrialPruned(f"timeout_minutes reached at epoch {report.epoch}")

    return on_epoch


def _first_points(mc: ModelConfig, spec: SearchSpec) -> list[dict[str, Any]]:
    """The block's own values of the searched parameters (the model's defaults where the block
    gives none), then the model's defaults where they differ: the search starts from them."""
    from recvae.models import model_class

    defaults = {f.name: f.default for f in dataclasses.fields(model_class(mc.model))
                if f.init and f.default is not dataclasses.MISSING}
    own = {name: mc.params.get(name, defaults.get(name)) for name in spec.space}
    plain = {name: defaults.get(name) for name in spec.space}
    return [p for p in (own, plain) if None not in p.values()][: 1 if own == plain else 2]


def _record(curve: list[dict[str, float]]) -> Callback:
    def on_epoch(report: EpochReport) -> None:
        point = {k: float(report.metrics[k]) for k in CURVE_KEYS if k in report.metrics}
        curve.append({"epoch": float(report.epoch), **point})

    return on_epoch


@contextlib.contextmanager
def _heartbeat(storage: Any, study: optuna.Study, number: int) -> Iterator[None]:
    """Beat for the running trial, so that its death is seen by other processes (Optuna only
    beats inside ``study.optimize``; the search uses ask and tell)."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number
    )
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                storage.record_heartbeat(trial_id)
            except Exception as e:  # noqa: BLE001 - a missed beat is retried at the next
                log.debug("heartbeat of trial %s failed: %s", number, e)

    storage.record_heartbeat(trial_id)
    thread = threading.Thread(target=beat, name=f"recvae-heartbeat-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's per-trial INFO lines repeat ours: only its warnings while searching."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _close_dead(study: optuna.Study, storage: Any, tracker: Tracker, name: str,
                say: Callable[[str], None]) -> None:
    for t in fail_dead_trials(study, storage):
        say(f"[{name}] trial {t.number} was left RUNNING by a process that died: marked FAIL "
            "(it does not count)")
        run_id = t.user_attrs.get(ATTR_RUN_ID)
        if run_id:
            tracker.close_stale_run(run_id, "its process died; the trial was marked FAIL")


def _best_trial(study: optuna.Study, counts: Counts, name: str) -> optuna.trial.FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        errors = [t.user_attrs[ATTR_ERROR] for t in study.get_trials(deepcopy=False)
                  if ATTR_ERROR in t.user_attrs]
        first = f"; first error: {errors[0]}" if errors else ""
        raise RecvaeError(
            f"{name}: no trial completed ({counts.pruned} pruned, {counts.failed} failed, "
            f"{counts.lost} lost){first}"
        ) from None


def _data_key(dataset: Dataset) -> str:
    key = dataset.manifest.get("key")
    if isinstance(key, str) and key:
        return key
    import hashlib

    return hashlib.sha256(json.dumps(dataset.manifest, sort_keys=True, default=str).encode()).hexdigest()


def _show(values: dict[str, Any]) -> str:
    parts = []
    for k, v in values.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={json.dumps(v)}")
    return ", ".join(parts)
