"""Interactions as compact arrays: what preprocessing and the splits work on.

A log of N positive interactions is held as one int64 per row, ``user code << 32 | item code``
(8 bytes a row, the size of the CSR matrices it becomes), plus int64 timestamps only where the
source has them. The codes index ``user_ids`` and ``item_ids``, the original ids. User codes
follow the sorted original ids, so a contiguous range of codes is a range of users in the order
the paper's split visits them; item codes follow first appearance in the log. Rows stay in log
order: first appearances and the per-user draws of the splits depend on it.

Every pass over the rows goes chunk by chunk, so temporaries stay a few MB whatever N is.

:class:`SeenBuilder` maps a second read of the log (every row, whatever its value) to a built
dataset's users and items: the pairs recommendations exclude.

Example::

    builder = InteractionsBuilder(threshold=3.5)
    builder.add(pa.array([7, 7, 9]), pa.array(["a", "b", "a"]), np.array([4.0, 2.0, 5.0]))
    log = builder.finish()          # 2 rows: (7, "a") and (9, "a")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recvae.data.sources.engine import _INT_ID  # text ids that are canonical integers become int64
from recvae.errors import RecvaeError

CHUNK = 1 << 20  # rows per pass step: temporaries of a few MB
BLOCK_ROWS = 1 << 21  # rows per range of users, at least (ranges are also ≥ N/16 rows)
_LOW = np.int64((1 << 32) - 1)
_MAX_CODES = 1 << 31  # codes are stored in 32 bits


def chunks(n: int, size: int | None = None) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` bounds covering ``range(n)`` in steps of ``size`` (default :data:`CHUNK`)."""
    size = size or CHUNK
    for lo in range(0, n, size):
        yield lo, min(lo + size, n)


def compact(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``a[keep]`` computed in place: kept rows move towards the front chunk by chunk, so no second
    full-size array is allocated. Returns a view of ``a``'s buffer."""
    w = 0
    for lo, hi in chunks(len(a)):
        k = keep[lo:hi]
        m = int(np.count_nonzero(k))
        a[w : w + m] = a[lo:hi][k]
        w += m
    return a[:w]


def keys_to_csr(
    keys: np.ndarray, shape: tuple[int, int], *, reuse: bool = False, dtype: type = np.float32
) -> sp.csr_matrix:
    """The binary CSR of ``row << 32 | col`` keys, as ``sp.csr_matrix((ones, (rows, cols)))`` and
    ``sum_duplicates`` build it (ones of ``dtype``, sorted indices, no duplicates, the same index
    dtypes). Sorts ``keys`` in place: sorted keys are the matrix's entries in order.

    With ``reuse`` the matrix is written over the keys' own buffer, column indices (int32) in its
    first half and the ones (float32, or a 1-byte ``dtype``) after them, so the largest matrix
    costs no memory beyond the keys it was built from. (Not when that buffer is much longer than
    the keys: the matrix would keep it all alive.)
    """
    keys.sort()
    if len(keys) > 1 and any((keys[max(lo, 1) : hi] == keys[max(lo, 1) - 1 : hi - 1]).any()
                             for lo, hi in chunks(len(keys))):
        # the same pair twice (a source's train and test parts, a repeated rating): keep one
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        keys = compact(keys, first)
    n, (n_rows, n_cols) = len(keys), shape
    index = np.int32 if max(n, n_rows, n_cols) < 2**31 else np.int64
    indptr = np.searchsorted(keys, np.arange(n_rows + 1, dtype=np.int64) << 32).astype(index)
    owner = keys
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    size = np.dtype(dtype).itemsize
    if reuse and index is np.int32 and size <= 4 and owner.nbytes <= 1.25 * keys.nbytes:
        indices = keys.view(np.int32)[:n]
        for lo, hi in chunks(n):  # chunk [lo, hi) lands on keys [lo/2, hi/2), already read
            indices[lo:hi] = keys[lo:hi] & _LOW
        start = 4 * n // size  # the bytes after the indices: keys [n/2, ...), all read by now
        values = keys.view(dtype)[start : start + n]
        values[:] = 1
    else:
        indices = np.empty(n, dtype=index)
        for lo, hi in chunks(n):
            indices[lo:hi] = keys[lo:hi] & _LOW
        values = np.ones(n, dtype=dtype)
    return sp.csr_matrix((values, indices, indptr), shape=shape)


@dataclass
class Interactions:
    """Positive interactions, one row each, in log order (see the module docstring).

    ``part`` holds, for sources with their own train/test split, each row's index into ``parts``
    (the part names); ``rows`` holds each row's index in the frame it came from, kept only for the
    DataFrame functions of ``preprocess`` and ``split``. ``rows_read`` counts the rows read from
    the source, before the threshold.
    """

    pairs: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamp: np.ndarray | None = None
    part: np.ndarray | None = None
    parts: tuple[str, ...] = ()
    rows: np.ndarray | None = None
    rows_read: int = 0

    _ROW_COLUMNS: ClassVar[tuple[str, ...]] = ("pairs", "timestamp", "part", "rows")

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def n_user_codes(self) -> int:
        return len(self.user_ids)

    @property
    def n_item_codes(self) -> int:
        return len(self.item_ids)

    def users(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """User codes of rows ``lo:hi`` (int64)."""
        return self.pairs[lo:hi] >> 32

    def items(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Item codes of rows ``lo:hi`` (int64)."""
        return self.pairs[lo:hi] & _LOW

    def user_counts(self) -> np.ndarray:
        """Rows per user code."""
        return self._count(self.users, self.n_user_codes)

    def item_counts(self) -> np.ndarray:
        """Rows per item code."""
        return self._count(self.items, self.n_item_codes)

    def is_test(self, lo: int = 0, hi: int | None = None) -> np.ndarray | None:
        """Whether rows ``lo:hi`` are in the source's own test part (None without parts)."""
        if self.part is None:
            return None
        test = self.parts.index("test") if "test" in self.parts else -1
        return self.part[lo:hi] == test

    def _count(self, codes_of: Callable[[int, int], np.ndarray], n: int) -> np.ndarray:
        counts = np.zeros(n, dtype=np.int64)
        for lo, hi in chunks(len(self)):
            counts += np.bincount(codes_of(lo, hi), minlength=n)
        return counts

    def rows_of_users(self, wanted: np.ndarray) -> np.ndarray:
        """Indices (ascending, so in log order) of the rows whose user code is in the boolean
        mask ``wanted``."""
        found = [np.flatnonzero(wanted[self.users(lo, hi)]) + lo for lo, hi in chunks(len(self))]
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def user_ranges(self, max_rows: int | None = None) -> Iterator[tuple[int, int]]:
        """Consecutive ranges ``[lo, hi)`` of user codes holding about ``max_rows`` rows each
        (default: N/16, at least :data:`BLOCK_ROWS`; a range holds at least one user).

        Per-user work (duplicates, per-user draws) runs a range at a time, in the order of the
        sorted user ids, touching a sixteenth of the rows at a time instead of building an N-row
        permutation.
        """
        max_rows = max_rows or max(len(self) // 16, BLOCK_ROWS)
        ends = np.cumsum(self.user_counts())
        lo = 0
        while lo < self.n_user_codes:
            before = ends[lo - 1] if lo else 0
            hi = max(int(np.searchsorted(ends, before + max_rows, side="right")), lo + 1)
            if ends[hi - 1] > before:
                yield lo, hi
            lo = hi

    def rows_in(self, lo: int, hi: int) -> np.ndarray:
        """Indices (ascending, so in log order) of the rows of user codes ``lo ≤ code < hi``."""
        return np.concatenate([np.flatnonzero(m) + a for a, m in self._in_range(lo, hi)])

    def _in_range(self, lo: int, hi: int) -> Iterator[tuple[int, np.ndarray]]:
        # The user code is the high half of the pair: a range of codes is a range of pairs.
        first, stop = np.int64(lo) << 32, np.int64(hi) << 32
        for a, b in chunks(len(self)):
            p = self.pairs[a:b]
            yield a, (p >= first) & (p < stop)

    def pairs_in(self, lo: int, hi: int, tag: np.ndarray | None = None) -> np.ndarray:
        """Pairs of the rows of user codes ``lo ≤ code < hi``, in log order; where ``tag`` (a
        per-row boolean) is true the sign bit is set (pairs are < 2^63, so it is free)."""
        out = []
        for a, m in self._in_range(lo, hi):
            p = self.pairs[a : a + len(m)][m]
            if tag is not None:
                p |= tag[a : a + len(m)][m].astype(np.int64) << 63
            out.append(p)
        return np.concatenate(out)

    def user_blocks(self) -> Iterator[np.ndarray]:
        """Row indices (log order) of each of :meth:`user_ranges`."""
        for lo, hi in self.user_ranges():
            yield self.rows_in(lo, hi)

    def compress(self, keep: np.ndarray) -> None:
        """Keep the rows where ``keep`` is true, in place and in order."""
        for name in self._ROW_COLUMNS:
            a = getattr(self, name)
            if a is not None:
                setattr(self, name, compact(a, keep))

    def take_pairs(self) -> np.ndarray:
        """Hand over the row buffer (e.g. to become a CSR matrix in place); the log is spent."""
        pairs, self.pairs = self.pairs, None
        return pairs

    def drop_timestamps(self) -> None:
        """Forget the timestamps (8 bytes a row) once nothing downstream needs them."""
        self.timestamp = None

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        *,
        threshold: float | None = None,
        allow_negative: bool = False,
        source: str = "the input",
        keep_rows: bool = False,
    ) -> Interactions:
        """From a tidy frame (``user``, ``item``[, ``value``][, ``timestamp``][, ``part``]), keeping
        rows with ``value > threshold`` (all rows when ``threshold`` is None; negative values are
        then an error naming ``source`` unless ``allow_negative``). Id types are kept as the frame
        has them."""
        builder = InteractionsBuilder(
            threshold=threshold,
            allow_negative=allow_negative,
            source=source,
            canonical_ints=False,
            with_timestamp="timestamp" in df.columns,
            keep_rows=keep_rows,
        )
        part = None
        if "part" in df.columns:
            codes, names = pd.factorize(df["part"])
            builder.parts = tuple(str(p) for p in names)
            part = codes.astype(np.int32)
        value = df["value"].to_numpy(dtype=np.float64) if "value" in df.columns else None
        timestamp = df["timestamp"].to_numpy(dtype=np.int64) if "timestamp" in df.columns else None
        for lo, hi in chunks(len(df)):  # slices keep the codes' temporaries small
            builder.add(
                _arrow(df["user"].iloc[lo:hi]),
                _arrow(df["item"].iloc[lo:hi]),
                None if value is None else value[lo:hi],
                timestamp=None if timestamp is None else timestamp[lo:hi],
                part=None if part is None else part[lo:hi],
            )
        return builder.finish()


def _arrow(col: pd.Series) -> pa.Array:
    arr = pa.array(col)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


class IdCodes:
    """A growing dictionary of original ids → codes in order of first appearance.

    Batches are encoded one after another (``encode``); a later batch finds the codes of ids seen
    before. The known ids sit in a few pandas indexes of geometrically decreasing size (merged like
    a binary counter), each hashed once per merge, so encoding all batches costs O(K log K) for K
    distinct ids instead of re-hashing every known id for every batch.

    Integer and text ids are both accepted. Text ids that are all canonical integers become int64
    at the end when ``canonical_ints`` (the generic table reader's rule); a text batch after
    integer batches turns the known integers into their (canonical) text, so a column read in
    parts gets the same ids as read whole.
    """

    def __init__(self, *, canonical_ints: bool = True) -> None:
        self._levels: list[pd.Index] = []
        self._text: bool | None = None
        self.canonical_ints = canonical_ints
        self.n = 0

    def encode(self, ids: pa.Array) -> np.ndarray:
        """Codes (int64) of ``ids`` (an integer or string array without nulls)."""
        if pa.types.is_dictionary(ids.type):
            ids = ids.dictionary_decode()
        text = pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)
        if not text and not pa.types.is_integer(ids.type):
            raise TypeError(f"ids must be integers or text, got {ids.type}")
        encoded = ids.dictionary_encode()
        uniques = encoded.dictionary
        if self._text is None:
            self._text = text
        elif text and not self._text:
            self._levels = [pd.Index(level.astype(str), dtype=object) for level in self._levels]
            self._text = True
        if self._text:
            values = uniques.cast(pa.string()).to_numpy(zero_copy_only=False).astype(object)
        else:
            values = uniques.cast(pa.int64()).to_numpy()
        return self._codes(values)[encoded.indices.to_numpy(zero_copy_only=False)]

    def _codes(self, uniques: np.ndarray) -> np.ndarray:
        out = np.empty(len(uniques), dtype=np.int64)
        todo = np.arange(len(uniques))
        offset = 0
        for level in self._levels:
            if not len(todo):
                break
            pos = level.get_indexer(uniques[todo])
            hit = pos >= 0
            out[todo[hit]] = offset + pos[hit]
            todo = todo[~hit]
            offset += len(level)
        if len(todo):
            out[todo] = self.n + np.arange(len(todo))
            self.n += len(todo)
            if self.n > _MAX_CODES:
                raise RecvaeError(f"more than {_MAX_CODES:,} distinct ids in one column")
            self._levels.append(pd.Index(uniques[todo], dtype=object if self._text else np.int64))
            while len(self._levels) > 1 and len(self._levels[-2]) <= 2 * len(self._levels[-1]):
                last = self._levels.pop()
                self._levels[-1] = self._levels[-1].append(last)
        return out

    def ids(self) -> np.ndarray:
        """The original ids in code order: int64, or an object array of str."""
        if not self._levels:
            return np.zeros(0, dtype=np.int64)
        values = np.concatenate([level.to_numpy() for level in self._levels])
        if self._text and self.canonical_ints:
            if pc.all(pc.match_substring_regex(pa.array(values, pa.string()), _INT_ID)).as_py():
                return values.astype(np.int64)
        return values


def negative_values_error(source: str, n: int, user: Any, item: Any, value: float) -> RecvaeError:
    """The error for ``n`` negative values under ``threshold: null``, the first at (user, item)."""
    return RecvaeError(
        f"{source}: {n:,} interaction(s) with a negative value (first: user {user}, item {item}, "
        f"value {value:g}); with preprocess.threshold null every interaction is a positive: set a "
        "threshold, or preprocess.allow_negative: true (--allow-negative) to keep them"
    )


def _take(a: pa.Array, keep: np.ndarray | slice) -> pa.Array:
    return a[keep] if isinstance(keep, slice) else a.filter(pa.array(keep))


class _Growing:
    """An array appended to batch by batch, held in blocks until it is complete.

    The final array is allocated empty (pages not yet written take no memory) and filled a block
    at a time, each block freed once copied: building an N-row array costs N rows plus one block,
    where doubling a buffer (``ndarray.resize`` zero-fills the new half) or concatenating a list
    of batches would cost up to 2N.
    """

    BLOCK = 1 << 22  # elements: 32 MB of int64, glibc's largest mmap threshold, so freed at once

    def __init__(self, dtype: type) -> None:
        self.dtype = dtype
        self._blocks: list[np.ndarray] = []
        self._fill = 0  # elements written in the last block
        self.n = 0

    def append(self, values: np.ndarray) -> None:
        done = 0
        while done < len(values):
            if not self._blocks or self._fill == self.BLOCK:
                self._blocks.append(np.empty(self.BLOCK, dtype=self.dtype))
                self._fill = 0
            take = min(len(values) - done, self.BLOCK - self._fill)
            self._blocks[-1][self._fill : self._fill + take] = values[done : done + take]
            self._fill += take
            done += take
        self.n += len(values)

    def array(self) -> np.ndarray:
        out = np.empty(self.n, dtype=self.dtype)
        for k in range(len(self._blocks)):
            block = self._blocks[k]
            self._blocks[k] = None  # type: ignore[call-overload]
            lo = k * self.BLOCK
            out[lo : min(lo + self.BLOCK, self.n)] = block[: min(self.BLOCK, self.n - lo)]
            del block
        self._blocks = []
        return out


class InteractionsBuilder:
    """Collects batches of (user, item, value[, timestamp]) into :class:`Interactions`.

    Rows with ``value > threshold`` are kept (every row when ``threshold`` is None; a batch
    without values counts as values 1.0, as an implicit log does). With ``threshold`` None a
    negative value would count as a like: :meth:`finish` refuses the log, naming ``source``, the
    number of such rows and the first, unless ``allow_negative``. With ``canonical_ints``, ids of
    every row, kept or not, enter the dictionaries, so the choice between integer and text ids is
    the whole column's.
    """

    def __init__(
        self,
        *,
        threshold: float | None = None,
        allow_negative: bool = False,
        source: str = "the input",
        canonical_ints: bool = True,
        with_timestamp: bool = False,
        keep_rows: bool = False,
    ) -> None:
        self.threshold = threshold
        self.allow_negative = allow_negative
        self.source = source
        self._negative = 0
        self._first_negative: tuple[Any, Any, float] | None = None
        self.users = IdCodes(canonical_ints=canonical_ints)
        self.items = IdCodes(canonical_ints=canonical_ints)
        self._pairs = _Growing(np.int64)
        self._timestamp = _Growing(np.int64) if with_timestamp else None
        self._part: _Growing | None = None
        self._rows = _Growing(np.int64) if keep_rows else None
        self.parts: tuple[str, ...] = ()
        self.rows_read = 0
        self._pending: list[tuple] = []
        self._pending_rows = 0

    def add(
        self,
        user: pa.Array,
        item: pa.Array,
        value: np.ndarray | None = None,
        *,
        timestamp: np.ndarray | None = None,
        part: np.ndarray | None = None,
    ) -> None:
        """Append one batch; ``timestamp`` must be given when the builder keeps timestamps.

        Small batches are pooled up to :data:`CHUNK` rows before their ids are encoded: a
        dictionary lookup costs about a millisecond of fixed overhead, which thousands of tiny
        part files would otherwise multiply.
        """
        types = (user.type, item.type)
        if self._pending and types != self._pending[0][0]:
            self._flush()
        self._pending.append((types, user, item, value, timestamp, part))
        self._pending_rows += len(user)
        if self._pending_rows >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        batches, self._pending, self._pending_rows = self._pending, [], 0

        def joined(k: int) -> Any:
            if batches[0][k] is None:
                return None
            if len(batches) == 1:
                return batches[0][k]
            if isinstance(batches[0][k], pa.Array):
                return pa.concat_arrays([b[k] for b in batches])
            return np.concatenate([b[k] for b in batches])

        user, item, value, timestamp, part = (joined(k) for k in range(1, 6))
        n = len(user)
        keep: np.ndarray | slice = slice(None)
        if self.threshold is None and value is not None and not self.allow_negative:
            self._count_negative(user, item, value)
        if self.threshold is not None:
            if value is None:
                keep = slice(None) if 1.0 > self.threshold else slice(0)
            else:
                keep = value > self.threshold
        if self.users.canonical_ints:  # integer or text is the whole column's choice: all rows count
            users, items = self.users.encode(user)[keep], self.items.encode(item)[keep]
        else:
            users, items = self.users.encode(_take(user, keep)), self.items.encode(_take(item, keep))
        self._pairs.append((users << 32) | items)
        if self._timestamp is not None:
            self._timestamp.append(timestamp[keep])
        if part is not None:
            if self._part is None:
                self._part = _Growing(np.int32)
            self._part.append(part[keep])
        if self._rows is not None:
            self._rows.append(np.arange(self.rows_read, self.rows_read + n)[keep])
        self.rows_read += n

    def _count_negative(self, user: pa.Array, item: pa.Array, value: np.ndarray) -> None:
        negative = value < 0
        n = int(np.count_nonzero(negative))
        if n and self._first_negative is None:
            i = int(np.argmax(negative))
            self._first_negative = (user[i].as_py(), item[i].as_py(), float(value[i]))
        self._negative += n

    def finish(self) -> Interactions:
        """The interactions, with user codes renumbered in the order of the sorted ids."""
        self._flush()
        if self._first_negative is not None:
            raise negative_values_error(self.source, self._negative, *self._first_negative)
        pairs = self._pairs.array()
        user_ids = self.users.ids()
        if user_ids.dtype == object:  # pyarrow's byte-wise UTF-8 order is code-point order
            order = pc.sort_indices(pa.array(user_ids, pa.string())).to_numpy()
        else:
            order = np.argsort(user_ids, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        for lo, hi in chunks(len(pairs)):
            pairs[lo:hi] = (rank[pairs[lo:hi] >> 32] << 32) | (pairs[lo:hi] & _LOW)
        return Interactions(
            pairs=pairs,
            user_ids=user_ids[order],
            item_ids=self.items.ids(),
            timestamp=None if self._timestamp is None else self._timestamp.array(),
            part=None if self._part is None else self._part.array(),
            parts=self.parts,
            rows=None if self._rows is None else self._rows.array(),
            rows_read=self.rows_read,
        )


class SeenBuilder:
    """Every distinct (user, item) pair of a log, whatever its value, over a dataset's users and
    items: the bool CSR that recommendations exclude (``Dataset.seen``).

    Rows are ``user_ids`` (the dataset's users, in order) followed by the other users of the log
    (those preprocessing dropped; sorted ids, as :meth:`finish` returns them); columns are
    ``item_ids``, and pairs on other items are left out (no model can recommend them). Batches of
    ids are matched to the dataset's ids as the dataset types them (int64 or text), so a second
    read of the source the dataset was built from finds the same users and items.

    Memory: 8 bytes a pair on the dataset's items until :meth:`finish`, whose CSR (int32 indices,
    bool values) is written over those bytes.

    Example::

        builder = SeenBuilder(ds.user_ids, ds.item_ids)
        builder.add(pa.array([7, 7, 9]), pa.array(["a", "b", "a"]))
        seen, dropped_user_ids = builder.finish()
    """

    def __init__(self, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
        self.user_ids, self.item_ids = np.asarray(user_ids), np.asarray(item_ids)
        self._users, self._items = pd.Index(self.user_ids), pd.Index(self.item_ids)
        self._others = IdCodes(canonical_ints=False)
        self._keys = _Growing(np.int64)
        self.rows_read = 0

    def add(self, user: pa.Array, item: pa.Array) -> None:
        """Append one batch of (user, item) ids (integer or text arrays without nulls)."""
        users, user_at = _distinct(user, self.user_ids.dtype == object)
        rows = self._users.get_indexer(users)
        other = rows < 0
        if other.any():  # codes past the dataset's users, renumbered by sorted id in finish()
            rows[other] = len(self.user_ids) + self._others.encode(pa.array(users[other]))
        items, item_at = _distinct(item, self.item_ids.dtype == object)
        cols = self._items.get_indexer(items)[item_at]
        known = cols >= 0
        self._keys.append((rows[user_at][known] << 32) | cols[known])
        self.rows_read += len(user)

    def finish(self) -> tuple[sp.csr_matrix, np.ndarray]:
        """(bool CSR of shape (users + other users, items), the other users' ids, sorted)."""
        others = self._others.ids()
        if others.dtype == object:  # pyarrow's byte-wise UTF-8 order is code-point order
            order = pc.sort_indices(pa.array(others, pa.string())).to_numpy()
        else:
            order = np.argsort(others, kind="stable")
        n_users = len(self.user_ids)
        row = np.empty(len(order), dtype=np.int64)  # other user's code -> its row
        row[order] = n_users + np.arange(len(order))
        keys = self._keys.array()
        for lo, hi in chunks(len(keys)):
            k = keys[lo:hi]
            moved = k >= np.int64(n_users) << 32
            k[moved] = (row[(k[moved] >> 32) - n_users] << 32) | (k[moved] & _LOW)
        shape = (n_users + len(order), len(self.item_ids))
        seen = keys_to_csr(keys, shape, reuse=True, dtype=np.bool_)
        if len(others) == 0:
            others = np.zeros(0, dtype=self.user_ids.dtype)
        return seen, others[order]

    @classmethod
    def from_frame(
        cls, df: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray
    ) -> tuple[sp.csr_matrix, np.ndarray]:
        """:meth:`finish` over the ``user`` and ``item`` columns of a frame."""
        builder = cls(user_ids, item_ids)
        for lo, hi in chunks(len(df)):
            builder.add(_arrow(df["user"].iloc[lo:hi]), _arrow(df["item"].iloc[lo:hi]))
        return builder.finish()


def _distinct(ids: pa.Array, text: bool) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct ids of a batch, typed as a dataset whose ids are ``text`` or int64 types
    them; each row's index among them)."""
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    encoded = ids.dictionary_encode()
    uniques = encoded.dictionary
    at = encoded.indices.to_numpy(zero_copy_only=False)
    if text:
        # integers as the text a mixed column gives them (IdCodes: str() of the int64)
        values = uniques.cast(pa.string()).to_numpy(zero_copy_only=False).astype(object)
    elif pa.types.is_integer(uniques.type):
        values = uniques.cast(pa.int64()).to_numpy()
    else:  # text ids of a column that became int64, so all canonical integers when it was read
        if not pc.all(pc.match_substring_regex(uniques, _INT_ID)).as_py():
            raise RecvaeError(
                "the log's ids were all integers when it was read, and now are not: the source "
                "changed during ingest; ingest again"
            )
        values = uniques.cast(pa.int64()).to_numpy()
    return values, at
