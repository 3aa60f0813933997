"""Tests for recvae.data.interactions: id dictionaries, the builder, in-place row operations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recvae.data import interactions as module
from recvae.data.interactions import IdCodes, Interactions, InteractionsBuilder, _Growing, compact
from recvae.errors import RecvaeError


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


def _pairs(seen, rows: np.ndarray, cols: np.ndarray) -> set[tuple]:
    r, c = seen.nonzero()
    return {(rows[i], cols[j]) for i, j in zip(r.tolist(), c.tolist(), strict=True)}


def test_seen_builder_maps_batches_to_the_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "CHUNK", 4)
    users = np.array([30, 10, 20])  # the dataset's order, not sorted
    items = np.array(["b", "a"], dtype=object)
    log = pd.DataFrame({
        "user": [10, 99, 30, 10, 5, 10, 99, 20, 77],
        "item": ["a", "a", "b", "a", "zz", "b", "b", "zz", "zz"],  # "zz": not a dataset item
    })
    seen, others = module.SeenBuilder.from_frame(log, users, items)
    assert seen.dtype == np.bool_ and seen.shape == (6, 2)
    assert others.tolist() == [5, 77, 99]  # users outside the dataset, sorted, rows 3, 4, 5
    rows = np.concatenate([users, others])
    assert _pairs(seen, rows, items) == {(10, "a"), (99, "a"), (30, "b"), (10, "b"), (99, "b")}
    assert seen.nnz == 5 and seen[4].nnz == 0  # user 77 has a row, on no dataset item
    assert seen.has_sorted_indices


def test_seen_builder_matches_ids_as_the_dataset_types_them() -> None:
    # integers where the dataset's ids are text (a mixed column), canonical text where they
    # are integers (a text part of a column that became int64)
    builder = module.SeenBuilder(np.array(["7", "u1"], dtype=object), np.array([3, 4]))
    builder.add(pa.array([7, 8]), pa.array(["3", "4"]))
    builder.add(pa.array(["u1", "u2"]), pa.array([4, 5]))
    seen, others = builder.finish()
    assert others.tolist() == ["8", "u2"] and others.dtype == object
    assert _pairs(seen, np.array(["7", "u1", "8", "u2"]), np.array([3, 4])) == {
        ("7", 3), ("8", 4), ("u1", 4)
    }
    changed = module.SeenBuilder(np.array([1, 2]), np.array([3]))
    with pytest.raises(RecvaeError, match="source changed during ingest"):
        changed.add(pa.array(["1", "007"]), pa.array([3, 3]))


def test_a_source_that_changed_between_the_reads_is_refused(tmp_path) -> None:
    from recvae.data.tables import read_seen

    path = tmp_path / "log.csv"
    path.write_text("user,item\n1,2\n1,3\n2,3\n")
    seen, others = read_seen("table", path, np.array([1, 2]), np.array([2, 3]), rows=3)
    assert seen.nnz == 3 and len(others) == 0
    with pytest.raises(RecvaeError, match=r"log\.csv: 3 rows now, 4 when it was first read"):
        read_seen("table", path, np.array([1, 2]), np.array([2, 3]), rows=4)


def test_builder_refuses_negative_values_under_no_threshold() -> None:
    builder = InteractionsBuilder(threshold=None, source="log.csv")
    builder.add(pa.array([1, 2]), pa.array([5, 6]), np.array([1.0, 2.0]))
    builder.add(pa.array(["u3", "u4", "u5"]), pa.array([7, 8, 9]), np.array([0.0, -0.25, -3.0]))
    with pytest.raises(RecvaeError, match=r"^log\.csv: 2 interaction\(s\) with a negative value "
                       r"\(first: user u4, item 8, value -0\.25\)"):
        builder.finish()
    allowed = InteractionsBuilder(threshold=None, allow_negative=True)
    allowed.add(pa.array([1, 2]), pa.array([5, 6]), np.array([-1.0, 2.0]))
    assert len(allowed.finish()) == 2
    with_threshold = InteractionsBuilder(threshold=0.5)  # negatives are below it: dropped
    with_threshold.add(pa.array([1, 2]), pa.array([5, 6]), np.array([-1.0, 2.0]))
    log = with_threshold.finish()
    assert len(log) == 1 and log.rows_read == 2
