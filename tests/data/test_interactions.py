"""Tests for recvae.data.interactions: id dictionaries, the builder, in-place row operations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recvae.data import interactions as module
from recvae.data.interactions import IdCodes, Interactions, InteractionsBuilder, _Growing, compact


def test_id_codes_follow_first_appearance_across_batches() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 5_000, size=rng.integers(1, 400)) * 13 for _ in range(60)]
    codes = IdCodes()
    got = np.concatenate([codes.encode(pa.array(b)) for b in batches])
    expected_codes, expected_ids = pd.factorize(np.concatenate(batches))
    np.testing.assert_array_equal(got, expected_codes)
    np.testing.assert_array_equal(codes.ids(), expected_ids)
    assert len(codes._levels) <= np.log2(codes.n) + 1  # merged like a binary counter


def test_id_codes_text_and_canonical_integers() -> None:
    codes = IdCodes()
    assert codes.encode(pa.array([10, 7, 10])).tolist() == [0, 1, 0]
    # a text batch after integer batches: the integers become their text, so "7" is code 1
    assert codes.encode(pa.array(["7", "u1", "10"])).tolist() == [1, 2, 0]
    assert codes.ids().tolist() == ["10", "7", "u1"]
    canonical = IdCodes()
    canonical.encode(pa.array(["42", "-7", "0"]).dictionary_encode())
    assert canonical.ids().dtype == np.int64 and canonical.ids().tolist() == [42, -7, 0]
    for text in (["007", "1"], ["1.0"], ["+3"]):
        kept = IdCodes()
        kept.encode(pa.array(text))
        assert kept.ids().tolist() == text
    as_given = IdCodes(canonical_ints=False)
    as_given.encode(pa.array(["42"]))
    assert as_given.ids().tolist() == ["42"]
    with pytest.raises(TypeError, match="integers or text"):
        IdCodes().encode(pa.array([1.5]))


def test_builder_threshold_sorted_users_and_pooled_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "CHUNK", 5)
    rng = np.random.default_rng(1)
    users = rng.choice(["b", "a", "c", "d"], size=40)
    items = rng.integers(0, 9, size=40)
    values = rng.choice([1.0, 3.0, 4.0, 5.0], size=40)
    pooled = InteractionsBuilder(threshold=3.5, keep_rows=True)
    for lo in range(0, 40, 3):
        pooled.add(pa.array(users[lo:lo + 3]), pa.array(items[lo:lo + 3]), values[lo:lo + 3])
    log = pooled.finish()
    keep = values > 3.5
    assert log.rows_read == 40 and len(log) == keep.sum()
    np.testing.assert_array_equal(log.rows, np.flatnonzero(keep))
    assert log.user_ids.tolist() == ["a", "b", "c", "d"]  # codes follow the sorted ids
    np.testing.assert_array_equal(log.user_ids[log.users()], users[keep])
    np.testing.assert_array_equal(log.item_ids[log.items()], items[keep])

    implicit = InteractionsBuilder(threshold=3.5)
    implicit.add(pa.array([1, 2]), pa.array([3, 4]))  # no values: 1.0 each, not > 3.5
    assert len(implicit.finish()) == 0
    kept = InteractionsBuilder(threshold=0.5)
    kept.add(pa.array([1, 2]), pa.array([3, 4]))
    assert len(kept.finish()) == 2


def test_growing_array_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Growing, "BLOCK", 7)
    g = _Growing(np.int64)
    parts = [np.arange(n) + 100 * n for n in (3, 0, 9, 7, 1, 15)]
    for p in parts:
        g.append(p)
    np.testing.assert_array_equal(g.array(), np.concatenate(parts))
    assert _Growing(np.int32).array().dtype == np.int32


def test_compact_in_place_and_row_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "CHUNK", 4)
    a = np.arange(30)
    keep = a % 3 != 1
    out = compact(a, keep)
    np.testing.assert_array_equal(out, np.arange(30)[keep])
    assert np.shares_memory(out, a)

    df = pd.DataFrame({"user": np.repeat([5, 3, 9, 1], [4, 9, 2, 6]), "item": np.arange(21) % 7})
    df = df.sample(frac=1.0, random_state=0).reset_index(drop=True)
    log = Interactions.from_frame(df)
    ranges = list(log.user_ranges(max_rows=8))
    assert ranges[0][0] == 0 and ranges[-1][1] == 4
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    seen = np.concatenate([log.rows_in(lo, hi) for lo, hi in ranges])
    np.testing.assert_array_equal(np.sort(seen), np.arange(21))
    for lo, hi in ranges:
        rows = log.rows_in(lo, hi)
        assert (np.diff(rows) > 0).all()  # log order
        codes = log.users()[rows]
        assert ((codes >= lo) & (codes < hi)).all()
        np.testing.assert_array_equal(log.pairs_in(lo, hi), log.pairs[rows])
    log.compress(np.asarray(df["user"] != 3))
    assert len(log) == 12 and 3 not in log.user_ids[log.users()]
