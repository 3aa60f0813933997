"""What a dataset is built from: the source, the preprocessing and the split, as plain
dataclasses.

They live with the data package, so ingestion depends on nothing above it; ``recvae.config``
composes them into a pipeline and parses them from YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PreprocessConfig:
    """Binarization and min-count filters (README, "The protocol", steps 1-2)."""

    threshold: float | None = 3.5  # keep value > threshold; null keeps every interaction
    min_item_users: int = 0  # items with fewer users are dropped first
    min_user_items: int = 5  # then users with fewer items
    iterate: bool = False  # repeat both filters until stable (k-core)
    # with threshold null, negative values are an error (they would count as positives)
    # unless allowed here
    allow_negative: bool = False


@dataclass
class SplitConfig:
    """How users / interactions are split (``recvae.data.split``)."""

    method: str = "strong"  # strong | random | temporal | predefined
    n_heldout_users: int | None = None  # strong: per part; null = 10 % of users, at most 10,000
    test_prop: float = 0.2  # strong: fold-in holdout share; random: test share
    validation_prop: float = 0.1  # weak splits: validation share carved from training rows
    leave_last: int | None = None  # temporal: last k per user (default 1 when no cutoff)
    cutoff: float | None = None  # temporal: epoch seconds
    seed: int = 98765


@dataclass
class DataConfig:
    """Where the log is, how to read it, and where the dataset goes."""

    source: str
    # metadata "path": a pipeline file's relative value is resolved against the file's folder
    path: str = field(metadata={"path": "file"})
    name: str | None = None  # defaults to the file name without suffixes
    options: dict[str, Any] = field(default_factory=dict)  # reader options (e.g. column names)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    # dataset directory; defaults to runs/data/<name> (in the working directory)
    out: str | None = field(default=None, metadata={"path": "file"})

    @property
    def dataset_name(self) -> str:
        if self.name:
            return self.name
        base = Path(self.path).name
        for suffix in (".gz", ".zip", ".csv", ".tsv", ".txt", ".dat", ".parquet"):
            base = base.removesuffix(suffix)
        return base or "dataset"

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / "data" / self.dataset_name
