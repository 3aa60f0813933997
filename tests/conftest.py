"""Shared fixtures: small synthetic rating logs, a MovieLens-format file, the bundled zip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).parents[1]
ML_SMALL_ZIP = REPO / "data" / "ml-latest-small.zip"


def make_ratings(
    n_users: int = 300,
    n_items: int = 400,
    *,
    seed: int = 0,
    max_items: int = 40,
    mean_items: float = 12.5,
    timestamps: bool = True,
    shuffle: bool = True,
) -> pd.DataFrame:
    """A ratings frame (``user``, ``item``, ``value``[, ``timestamp``]) with distinct pairs.

    Activity is skewed (many users with fewer than 5 ratings, a few with many) and item
    popularity is power-law, so there are rare items that only evaluation users touch. Rows are
    shuffled by default: order-dependent code (first appearance, per-user draws) must cope.
    """
    rng = np.random.default_rng(seed)
    activity = np.minimum(1 + rng.geometric(1.0 / mean_items, n_users), max_items)
    pop = 1.0 / (np.arange(1, n_items + 1) + 3.0)
    pop /= pop.sum()
    users, items = [], []
    for u, n in enumerate(activity):
        users.append(np.full(n, u))
        items.append(rng.choice(n_items, size=n, replace=False, p=pop))
    user = np.concatenate(users).astype(np.int64) * 7 + 3  # ids that are not row numbers
    item = np.concatenate(items).astype(np.int64) * 11 + 5
    df = pd.DataFrame(
        {"user": user, "item": item, "value": rng.choice(np.arange(1, 11) / 2, size=len(user))}
    )
    if timestamps:
        df["timestamp"] = rng.integers(1_000_000_000, 1_100_000_000, size=len(df))
    if shuffle:
        df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return df


@pytest.fixture
def ratings() -> pd.DataFrame:
    """A few hundred users of synthetic ratings (0.5-5 stars, with timestamps)."""
    return make_ratings()


@pytest.fixture
def positives() -> pd.DataFrame:
    """The synthetic ratings, all kept as positives, users with < 5 items removed."""
    df = make_ratings(seed=1).assign(value=1.0)
    counts = df["user"].map(df["user"].value_counts())
    return df[counts.to_numpy() >= 5].reset_index(drop=True)


@pytest.fixture
def movielens_csv(tmp_path: Path) -> Path:
    """A MovieLens ``ratings.csv`` (header userId,movieId,rating,timestamp) of 300 users."""
    df = make_ratings(seed=2, shuffle=False).sort_values(["user", "timestamp"], kind="stable")
    path = tmp_path / "ml-tiny" / "ratings.csv"
    path.parent.mkdir()
    df.rename(
        columns={"user": "userId", "item": "movieId", "value": "rating"}
    ).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def ml_small_zip() -> Path:
    """The bundled MovieLens latest-small archive (610 users, 100,836 ratings)."""
    assert ML_SMALL_ZIP.is_file(), f"missing {ML_SMALL_ZIP}"
    return ML_SMALL_ZIP


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A private PostgreSQL server (``tests.postgres.PostgresServer``) with the databases
    ``mlflow`` and ``optuna``, stopped at the end of the session; where it cannot start, the
    test fails under CI and is skipped elsewhere (``tests.postgres.start_or_give_up``)."""
    from tests.postgres import start_or_give_up

    server = start_or_give_up()
    yield server
    server.stop()
