"""What every stage of a run shares: where its outputs go, how it is watched, and what it
reports per model.

A :class:`RunContext` is built once, at the edge (``recvae run``, ``recvae train``), and passed
to each stage instead of the same seven values one by one. :class:`ModelOutcome` is what a stage
run leaves for the comparison, the results files and the final table.

Example::

    ctx = RunContext(Layout(Path("runs/quickstart")), ks=(20, 50, 100))
    ctx.out.model_dir("ease")          # runs/quickstart/models/ease
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recvae.config import ModelConfig, RecommendConfig
from recvae.reporting import NullTracker, Tracker

if TYPE_CHECKING:
    from recvae.search.spec import SearchSpec

#: What picks epochs, hyper-parameters, the best model and the ensemble's weights: a validation
#: metric, never a test one. Defined here once.
SELECTION_METRIC = "val/ndcg_at_100"


@dataclass(frozen=True)
class Layout:
    """Where one run writes: ``root`` holds checkpoints, models, top-k files, searches and
    results; ``model_out`` (``recvae train --out``) is the one model folder of a single fit."""

    root: Path
    model_out: Path | None = None

    def model_dir(self, name: str) -> Path:
        return self.model_out if self.model_out is not None else self.root / "models" / name

    def checkpoints(self, name: str) -> Path:
        return self.root / "checkpoints" / name

    def recommendations(self, name: str, fmt: str) -> Path:
        return self.root / "recommendations" / f"{name}.{'csv' if fmt == 'csv' else 'parquet'}"

    def distributed(self, name: str) -> Path:
        """The model folder a torchrun job writes for the pipeline to load."""
        return self.root / "distributed" / name

    def search(self, name: str) -> Path:
        """A search's kept best-trial model."""
        return self.root / "search" / "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

    def ensemble(self) -> Path:
        """The members' validation candidates that the ensemble's weight search reads."""
        return self.root / "ensemble"


@dataclass(frozen=True)
class RunContext:
    """How a run's stages run: outputs, tracking, device, metric cut-offs, scoring batch size,
    progress bars, ``--resume``, and the saved dataset (for torchrun processes to load)."""

    out: Layout
    tracker: Tracker = field(default_factory=NullTracker)
    device: str | None = None
    ks: tuple[int, ...] = (20, 50, 100)
    eval_batch_size: int = 1000
    show_progress: bool = True
    resume: bool = False
    data_dir: Path | None = None


@dataclass(frozen=True)
class ModelJob:
    """One model block of a run and what follows its fit: a ``search`` in the Optuna ``study``,
    a ``refit`` on training + validation, a top-k file (``recommend``), a LoggedModel
    (``log``, ``register``). ``logged`` is logged beside the model's params (data, evaluation).
    ``strict_resume``: ``--resume`` of a model that does not train in epochs is an error."""

    config: ModelConfig
    search: SearchSpec | None = None
    study: str | None = None
    refit: bool = False
    recommend: RecommendConfig | None = None
    log: bool = True
    register: bool = False
    strict_resume: bool = True
    logged: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.run_name


@dataclass
class ModelOutcome:
    """What happened to one model of a run (failures included)."""

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
    weights: dict[str, float] | None = None  # an ensemble's weight per member

    @classmethod
    def failed(cls, run_name: str, model: str, error: str) -> ModelOutcome:
        return cls(run_name=run_name, model=model, ok=False, error=error)
