"""Optuna studies in a database: storage, samplers and pruners by name, dead trials, counts.

A study lives in an RDB storage (SQLite under the pipeline's ``output_dir`` by default,
PostgreSQL or MySQL to share it between machines), so a killed search continues and several
processes add trials to one study. Trials carry a heartbeat: a trial whose process died is
marked FAIL by the next process that looks (at once when the process ran on this host and is
gone; after the grace period otherwise) and does not count towards the trial budget.

Example::

    storage = open_storage("sqlite:///runs/optuna.db")
    study = open_study(storage, "quickstart:ml-latest-small:mult-vae", spec, fingerprint,
                       resume=True)
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from filelock import FileLock
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import ArgumentError

from recvae.errors import RecvaeError
from recvae.search.spec import Choice, FloatRange, IntRange, Named, SearchSpec

HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 120  # a trial without a heartbeat for this long belongs to a dead process
ORPHAN_SECONDS = 60  # a RUNNING trial with no owner this long after it started (clock skew included)
ATTR_PID, ATTR_HOST = "recvae.pid", "recvae.host"
ATTR_ERROR = "recvae.error"  # a trial that failed by its own fault (counts towards the budget)
ATTR_FINGERPRINT = "recvae.fingerprint"
ATTR_RUN_ID = "recvae.mlflow_run_id"


def default_storage(output_dir: str | os.PathLike) -> str:
    """``sqlite:///<output_dir>/optuna.db`` (absolute)."""
    return f"sqlite:///{(Path(output_dir) / 'optuna.db').resolve()}"


def masked(url: str) -> str:
    """The storage URL without its password (for logs, params and errors)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by open_storage
        return url.split("@", 1)[-1] if "@" in url else url


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :]
    return None if path in ("", ":memory:") else Path(path)


def _lock(url: str) -> Any:
    """A file lock beside a SQLite database (creating its tables, or a study, is not safe to
    race in two processes); a no-op context for server databases, which lock themselves."""
    import contextlib

    path = _sqlite_path(url)
    if path is None:
        return contextlib.nullcontext()
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=300)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url`` with heartbeats, its tables created if new."""
    engine_kwargs: dict[str, Any] = {}
    if _sqlite_path(url) is not None:
        # several processes write one SQLite file: wait for its lock instead of failing
        engine_kwargs = {"connect_args": {"timeout": 60}}
    last: Exception | None = None
    for attempt in range(5):
        try:
            with _lock(url), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                )
        except ImportError as e:
            hint = {"postgresql": "pip install 'psycopg[binary]' (SQLAlchemy 2.1's driver for postgresql://; "
                              "postgresql+psycopg2:// takes psycopg2-binary)",
                    "mysql": "pip install PyMySQL and use mysql+pymysql://"}.get(
                url.split(":", 1)[0].split("+", 1)[0], "install its SQLAlchemy driver")
            raise RecvaeError(
                f"Optuna storage {masked(url)}: its database driver is not installed; {hint} "
                f"({str(e).strip().splitlines()[0]})"
            ) from None
        except ArgumentError as e:
            raise RecvaeError(f"Optuna storage {masked(url)}: not a database URL ({e})") from None
        except Exception as e:  # noqa: BLE001 - SQLAlchemy's errors: connection or schema race
            last = e
            if _sqlite_path(url) is not None and attempt >= 1:
                break
            time.sleep(1.0 + attempt)  # another worker may be creating the same tables
    detail = str(last).strip().splitlines()[0] if last is not None else "unknown error"
    raise RecvaeError(f"Optuna storage {masked(url)}: cannot open it ({detail})")


def check_search(spec: SearchSpec, where: Callable[[str], str]) -> None:
    """What only Optuna and SQLAlchemy can check, before any trial: the sampler's and pruner's
    options (each built once) and the storage's database driver. ``where(name)`` is the key
    of the setting ``name`` (``sampler``, ``pruner``, ``storage``) for the error."""
    make_sampler(spec, where("sampler"))
    make_pruner(spec.pruner, where("pruner"))
    if spec.storage is not None:
        check_driver(spec.storage, where("storage"))


def check_driver(url: str, key: str) -> None:
    """The storage URL's database driver can be imported (``postgresql://`` needs psycopg,
    SQLAlchemy 2.1's default)."""
    from sqlalchemy.engine import make_url

    try:
        make_url(url).get_dialect().import_dbapi()
    except ImportError as e:
        scheme = url.split(":", 1)[0].split("+", 1)[0]
        hint = {"postgresql": "pip install 'psycopg[binary]' (SQLAlchemy 2.1's driver for postgresql://; "
                              "postgresql+psycopg2:// takes psycopg2-binary)",
                "mysql": "pip install PyMySQL and use mysql+pymysql://"}.get(
            scheme, "install its SQLAlchemy driver")
        raise RecvaeError(
            f"{key}: {masked(url)}: its database driver is not installed; {hint} "
            f"({str(e).strip().splitlines()[0]})"
        ) from None
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's ArgumentError, NoSuchModuleError...
        raise RecvaeError(f"{key}: {masked(url)}: not a database URL SQLAlchemy knows ({e})") from None


def fingerprint_of(model: str, fixed: dict[str, Any], spec: SearchSpec, data_key: str) -> dict[str, Any]:
    """What must not change between the processes and restarts that add trials to one study."""
    free = {"device", "threads", "num_threads", "eval_batch_size", "use_gpu"}
    params = {k: v for k, v in fixed.items() if k not in free and k not in spec.space}
    return json.loads(json.dumps({
        "model": model, "params": params, "space": spec.describe(), "data": data_key,
    }, sort_keys=True, default=str))


def open_study(
    storage: optuna.storages.RDBStorage,
    name: str,
    spec: SearchSpec,
    fingerprint: dict[str, Any],
    *,
    resume: bool,
    explicit_storage: bool,
    on_fresh: Callable[[], None] | None = None,
    say: Callable[[str], None] = print,
) -> optuna.Study:
    """Create the study ``name``, or join it when it exists.

    Joining needs ``resume`` (``--resume``) and the same ``fingerprint``. Without ``resume``, a
    study in the default storage (``output_dir``'s own, like the checkpoints) starts afresh
    (``on_fresh`` clears what belonged to the old one); one in an explicit (shared) storage is
    never deleted: that is an error saying how to continue or delete it.
    """
    url = storage.url
    kwargs = {"study_name": name, "storage": storage, "direction": "maximize",
              "sampler": make_sampler(spec), "pruner": make_pruner(spec.pruner)}
    with _lock(url):
        study = optuna.create_study(load_if_exists=True, **kwargs)
        trials = study.get_trials(deepcopy=False)
        if trials and not resume:
            if explicit_storage:
                raise RecvaeError(
                    f"study {name!r} in {masked(url)} already has {len(trials)} trials; run with "
                    f"--resume to continue or join it, or delete it first (optuna delete-study "
                    f"--storage URL --study-name {name!r})"
                )
            optuna.delete_study(study_name=name, storage=storage)
            if on_fresh is not None:
                on_fresh()
            say(f"study {name!r}: starting afresh ({len(trials)} earlier trials deleted; "
                f"--resume continues a study)")
            study = optuna.create_study(**kwargs)
        saved = study.user_attrs.get(ATTR_FINGERPRINT)
        if saved is None:
            study.set_user_attr(ATTR_FINGERPRINT, fingerprint)
        elif saved != fingerprint:
            diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            raise RecvaeError(
                f"study {name!r} in {masked(url)} was made for another search (it differs in "
                f"{', '.join(diff)}); delete it (optuna delete-study --storage URL --study-name "
                f"{name!r}) or change the pipeline's name"
            )
    return study


# --------------------------------------------------------------------------- samplers, pruners
def make_pruner(named: Named, key: str = "pruner") -> optuna.pruners.BasePruner:
    """The Optuna pruner of ``named`` (median by default: no pruning in the first 5 trials,
    nor before epoch 5)."""
    defaults: dict[str, dict[str, Any]] = {
        "median": {"n_startup_trials": 5, "n_warmup_steps": 5},
        "percentile": {"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 5},
        "hyperband": {"min_resource": 5},
        "threshold": {},
    }
    classes = {
        "median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner, "threshold": optuna.pruners.ThresholdPruner,
        "none": optuna.pruners.NopPruner,
    }
    try:
        return classes[named.name](**{**defaults.get(named.name, {}), **named.options})
    except (TypeError, ValueError) as e:
        raise RecvaeError(f"{key}: {named.describe()}: {e}") from None


def _inner_sampler(spec: SearchSpec, seed: int) -> optuna.samplers.BaseSampler:
    named = spec.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if named.name == "tpe":
            # multivariate TPE models the parameters jointly (lr and dropout interact);
            # constant_liar keeps workers sharing a study from sampling the same point
            options = {"multivariate": True, "constant_liar": True, **named.options}
            return optuna.samplers.TPESampler(seed=seed, **options)
        if named.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if named.name == "grid":
            return _Grid(grid_space(spec), seed=seed)
    raise RecvaeError(f"unknown sampler {named.name!r}")


class _Grid(optuna.samplers.GridSampler):
    """Optuna's grid, without stopping the study from ``after_trial``: the search asks and tells
    outside ``study.optimize``, where ``study.stop`` raises, and it runs no more trials than the
    grid has points anyway."""

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


def make_sampler(spec: SearchSpec, key: str = "sampler") -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded per trial (see :class:`PerTrialSeed`); the grid is not: every
    process must shuffle it alike (its first points go to trials by number)."""
    try:
        sampler = _inner_sampler(spec, spec.seed)  # fail now on bad options, not in a trial
    except (TypeError, ValueError) as e:
        raise RecvaeError(f"{key}: {spec.sampler.describe()}: {e}") from None
    if spec.sampler.name == "grid":
        return sampler
    return PerTrialSeed(lambda seed: _inner_sampler(spec, seed), spec.seed)


def grid_space(spec: SearchSpec) -> dict[str, list[Any]]:
    """Every point of a finite space, as Optuna's GridSampler takes it."""
    out: dict[str, list[Any]] = {}
    for name, p in spec.space.items():
        points = p.grid()
        if points is None:
            raise RecvaeError(f"grid sampler: {name} is a continuous range; give it a step")
        out[name] = points
    return out


def grid_size(spec: SearchSpec) -> int | None:
    """The number of grid points, for the grid sampler; None otherwise."""
    if spec.sampler.name != "grid":
        return None
    return int(np.prod([len(v) for v in grid_space(spec).values()]))


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler whose randomness for trial n comes from ``(seed, n)`` only.

    One seeded sampler per process would make every process that joins a study (and every
    resumed run) draw the same random start-up trials again; trial numbers are unique in a
    study, so seeding per trial keeps a single-process search reproducible and gives each
    worker its own draws. The inner sampler is rebuilt before each trial (cheap: its state is
    the study's trials, read from the storage).
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._inner = make(seed)

    def _for(self, trial: FrozenTrial) -> None:
        state = np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0]
        self._inner = self._make(int(state))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def enqueue_first(
    study: optuna.Study, spec: SearchSpec, points: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Queue ``points`` (model values of the searched parameters) as the study's first trials,
    before any sampled one; returns what was queued. A value outside its range is moved to the
    nearest bound (e.g. no weight decay → the range's smallest), a choice the space does not
    hold is left to the sampler; a point already queued or tried is not queued again."""
    queued = []
    for point in points:
        params: dict[str, Any] = {}
        for name, value in point.items():
            p = spec.space[name]
            if isinstance(p, Choice):
                if value in p.values:
                    params[name] = p.categories()[p.values.index(value)]
            elif isinstance(value, int | float) and not isinstance(value, bool):
                params[name] = type(p.low)(min(max(value, p.low), p.high))
        if params and params not in queued:
            study.enqueue_trial(params, skip_if_exists=True)
            queued.append(params)
    return [decode_params(spec, q) for q in queued]


def suggest(trial: optuna.Trial, name: str, param: FloatRange | IntRange | Choice) -> Any:
    """Draw ``name`` from ``param`` for ``trial``; the value as the model takes it."""
    if isinstance(param, Choice):
        return param.decode(trial.suggest_categorical(name, param.categories()))
    if isinstance(param, IntRange):
        return trial.suggest_int(name, param.low, param.high, step=param.step, log=param.log)
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)


def decode_params(spec: SearchSpec, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's stored params as the model takes them (JSON-encoded choices decoded)."""
    out = {}
    for name, value in params.items():
        p = spec.space.get(name)
        out[name] = p.decode(value) if isinstance(p, Choice) else value
    return out


# --------------------------------------------------------------------------- trial bookkeeping
def mark_owner(trial: optuna.Trial) -> None:
    """Record which process runs ``trial`` (so a later run on this host can tell it died)."""
    trial.set_user_attr(ATTR_PID, os.getpid())
    trial.set_user_attr(ATTR_HOST, socket.gethostname())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[FrozenTrial]:
    """Mark FAIL the RUNNING trials whose process is gone: at once for processes of this host,
    after the heartbeat's grace period for the others. Returns the trials failed here."""
    host = socket.gethostname()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in running:
        pid = t.user_attrs.get(ATTR_PID)
        mine_and_dead = (t.user_attrs.get(ATTR_HOST) == host and isinstance(pid, int)
                         and pid != os.getpid() and not _alive(pid))
        # a process killed between ask() and its first beat left neither an owner nor a
        # heartbeat, so fail_stale_trials never sees it; a live process marks its owner within
        # milliseconds of ask(), so a trial still without one after ORPHAN_SECONDS is dead
        orphan = pid is None and t.datetime_start is not None and (
            datetime.now() - t.datetime_start).total_seconds() > ORPHAN_SECONDS
        if mine_and_dead or orphan:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            # the storage, not study.tell: telling runs the sampler's after_trial hook, which
            # for a finished grid would stop a study that is not being optimized
            try:
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it finished meanwhile: it was not dead after all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    now = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    return [t for t in running if now.get(t.number) == TrialState.FAIL]


@dataclass
class Counts:
    """Trials of a study by outcome. ``done`` counts towards the budget: completed, pruned, and
    failed by their own fault (a diverged lr); not those whose process died."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0  # by their own fault
    lost: int = 0  # their process died
    running: int = 0
    #: the finished trials' durations summed: the search's compute time over every process and
    #: every resume (a resumed search's own wall time leaves out the trials run before)
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed


def count_trials(study: optuna.Study) -> Counts:
    c = Counts()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            c.complete += 1
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.FAIL:
            if ATTR_ERROR in t.user_attrs:
                c.failed += 1
            else:
                c.lost += 1
        elif t.state == TrialState.RUNNING:
            c.running += 1
        if t.duration is not None and t.state != TrialState.RUNNING:
            c.seconds += t.duration.total_seconds()
    return c
