"""What a fit reports and where it goes: the per-epoch report, the callbacks that print it, and the
tracker protocol that the application layer logs through.

Nothing here imports MLflow. :class:`Tracker` is the protocol that ``recvae.tracking.Tracker``
implements; :class:`NullTracker` is the same protocol doing nothing, so the application layer
never asks whether it is tracked (``--no-track``, tests, the processes of a torchrun job).

Example::

    report = EpochReport(epoch=3, metrics={"train/loss": 512.3, "val/ndcg_at_100": 0.41}, is_best=True)
    print(report)           # epoch 3  loss 512.3000  val NDCG@100 0.4100  *best
    tracker = NullTracker()
    with tracker.start_model("ease", params={}) as run:
        run.run_id          # None: nothing is logged
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

#: (metric key, label) of the printed epoch line, in order; a key a report lacks is left out
EPOCH_LINE = (
    ("train/loss", "loss"), ("train/beta", "β"), ("val/ndcg_at_100", "val NDCG@100"),
)


@dataclass
class EpochReport:
    """What a model reports after each training epoch (or once, for closed-form models).

    ``metrics`` uses stable names: ``train/loss``, ``train/kl``, ``train/beta``,
    ``val/ndcg_at_100``, ``epoch_seconds`` ...
    """

    epoch: int
    metrics: dict[str, float]
    is_best: bool = False

    def __str__(self) -> str:
        """One readable line: ``epoch 3  loss 512.3000  β 0.2000  val NDCG@100 0.4100  1.2s  *best``."""
        m = self.metrics
        parts = [f"epoch {self.epoch:3d}"]
        parts += [f"{label} {m[key]:.4f}" for key, label in EPOCH_LINE if key in m]
        if "epoch_seconds" in m:
            parts.append(f"{m['epoch_seconds']:.1f}s")
        if "fit_seconds" in m:
            parts.append(f"fit {m['fit_seconds']:.1f}s")
        if self.is_best and "val/ndcg_at_100" in m:  # without validation every epoch is "best"
            parts.append("*best")
        return "  ".join(parts)


Callback = Callable[[EpochReport], None]


def report_all(callbacks: Sequence[Callback], report: EpochReport) -> None:
    """Hand ``report`` to every callback."""
    for callback in callbacks:
        callback(report)


def report_fit_seconds(callbacks: Sequence[Callback], start: float) -> None:
    """For models fitted in one go: a single epoch-0 report of the seconds since ``start``
    (a ``time.perf_counter()`` value)."""
    report_all(callbacks, EpochReport(epoch=0, metrics={"fit_seconds": time.perf_counter() - start}))


def print_epoch(label: str, stream: TextIO | None = None) -> Callback:
    """A callback printing one line per epoch, ``[label] epoch ...`` (see :class:`EpochReport`)."""

    def on_epoch(report: EpochReport) -> None:
        print(f"[{label}] {report}", file=stream or sys.stdout, flush=True)

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


# --------------------------------------------------------------------------- tracking
class TrackedRun(Protocol):
    """An open run: its id (None while the store is away or when nothing is tracked)."""

    @property
    def run_id(self) -> str | None: ...

    @property
    def experiment_id(self) -> str | None: ...

    @property
    def parent_run_id(self) -> str | None: ...


class TrialRun(Protocol):
    """The run of one search trial; ``state`` (Optuna's COMPLETE, PRUNED or FAIL) is set by the
    caller before the run ends."""

    run_id: str | None
    state: str


class Tracker(Protocol):
    """Where a pipeline, its models and their trials are logged (``recvae.tracking.Tracker``:
    MLflow, local first) — or nowhere (:class:`NullTracker`). Models and datasets are typed
    ``Any`` here: this module sits below both (they import its ``EpochReport``)."""

    uri: str | None

    @property
    def offline(self) -> bool: ...

    def offline_summary(self) -> str: ...

    def not_logged(self) -> list[Any]: ...

    def start_pipeline(
        self, run_name: str | None = None, **kwargs: Any
    ) -> contextlib.AbstractContextManager[Any]: ...

    def start_model(self, name: str, **kwargs: Any) -> contextlib.AbstractContextManager[Any]: ...

    def start_trial(self, number: int, **kwargs: Any) -> contextlib.AbstractContextManager[Any]: ...

    def close_stale_run(self, run_id: str, reason: str) -> None: ...

    def use_dataset(self, dataset: Any, source: str | None) -> None: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None: ...

    def log_final(self, metrics: Mapping[str, float]) -> None: ...

    def log_trial_result(self, metrics: Mapping[str, float]) -> None: ...

    def log_timings(self, **seconds: float | None) -> None: ...

    def epoch_callback(self) -> Callback: ...

    def complete_curve(self, history: Sequence[Mapping[str, float]], best_epoch: int | None) -> None: ...

    def log_model(self, model: Any, dataset: Any, **kwargs: Any) -> Any: ...

    def log_topk(self, path: str | Path) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_table(self, data: Mapping[str, Sequence[Any]], artifact_file: str) -> Any: ...

    def set_tags(self, tags: Mapping[str, Any], *, run: Any = None) -> None: ...

    def model_run(self, name: str) -> Any: ...

    def set_model_alias(self, registered_model_name: str, alias: str, *, run: Any) -> None: ...


@dataclass
class NullRun:
    """The run a :class:`NullTracker` opens: no ids (a trial's ``state`` is set and ignored)."""

    run_id: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    state: str = "FAIL"


class NullTracker:
    """A :class:`Tracker` that logs nothing: runs have no ids, logged models none either."""

    uri: str | None = None
    offline = False

    def offline_summary(self) -> str:
        return ""

    def not_logged(self) -> list[Any]:
        return []

    @contextlib.contextmanager
    def _run(self) -> Iterator[NullRun]:
        yield NullRun()

    def start_pipeline(
        self, run_name: str | None = None, **kwargs: Any
    ) -> contextlib.AbstractContextManager[Any]:
        return self._run()

    def start_model(self, name: str, **kwargs: Any) -> contextlib.AbstractContextManager[Any]:
        return self._run()

    def start_trial(self, number: int, **kwargs: Any) -> contextlib.AbstractContextManager[Any]:
        return self._run()

    def close_stale_run(self, run_id: str, reason: str) -> None:
        return None

    def use_dataset(self, dataset: Any, source: str | None) -> None:
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        return None

    def log_final(self, metrics: Mapping[str, float]) -> None:
        return None

    def log_trial_result(self, metrics: Mapping[str, float]) -> None:
        return None

    def log_timings(self, **seconds: float | None) -> None:
        return None

    def epoch_callback(self) -> Callback:
        return lambda report: None

    def complete_curve(self, history: Sequence[Mapping[str, float]], best_epoch: int | None) -> None:
        return None

    def log_model(self, model: Any, dataset: Any, **kwargs: Any) -> Any:
        return None

    def log_topk(self, path: str | Path) -> None:
        return None

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        return None

    def log_table(self, data: Mapping[str, Sequence[Any]], artifact_file: str) -> Any:
        return None

    def set_tags(self, tags: Mapping[str, Any], *, run: Any = None) -> None:
        return None

    def model_run(self, name: str) -> Any:
        return None

    def set_model_alias(self, registered_model_name: str, alias: str, *, run: Any) -> None:
        return None
