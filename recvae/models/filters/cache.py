"""A small in-process cache of arrays, bounded in bytes, for what a hyper-parameter search recomputes.

A search builds a fresh model per trial; for the graph filters most of a trial's work does not
depend on the trial's values: the truncated SVD of the training matrix at a given rank, and (for
filters whose hyper-parameters only reweight fixed bases, e.g. ChebyCF's flatness φ and ideal
weight α) the polynomial bases of each scored batch. Both are kept here, keyed by content
digests, so that trial 2..N reuse them. The cache lives in the process: nothing is written to
disk, and a new process starts empty.

Eviction is least-recently-used, with one exception that matters for searches: an entry is never
evicted to make room for an entry of its own *group* (e.g. the bases of one validation pass).
A pass over more batches than fit would otherwise evict each batch just before the next trial
asks for it again (LRU's worst case, a cyclic scan), leaving no hit at all; this way the first
batches that fitted stay, and later ones are simply not kept.

Example::

    cache = ArrayCache(max_bytes=1 << 30)
    cache.put(("svd", digest, 256), v, group="svd")
    v = cache.get(("svd", digest, 256))     # None when absent
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp


@dataclass
class ArrayCache:
    """LRU cache of numpy arrays (or tuples of them) holding at most ``max_bytes`` of array data.

    Stored arrays are made read-only: a caller that got one from :meth:`get` shares it with
    every later caller, so writing into it would corrupt their results. ``hits`` and ``misses``
    count :meth:`get` calls (for benchmarks and tests).
    """

    max_bytes: int
    hits: int = 0
    misses: int = 0
    _entries: OrderedDict[Hashable, tuple[Any, int, Hashable]] = field(
        default_factory=OrderedDict, repr=False
    )
    # scoring runs chunks in threads, which share the cache
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes of array data held now."""
        return sum(size for _, size, _ in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any:
        """The value stored under ``key`` (and mark it recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return entry[0]

    def has_room(self, nbytes: int, *, group: Hashable = None) -> bool:
        """Whether :meth:`put` would keep ``nbytes`` more of ``group`` (by evicting other groups)."""
        with self._lock:
            own = sum(size for _, size, g in self._entries.values() if g == group)
        return own + nbytes <= self.max_bytes

    def put(self, key: Hashable, value: Any, *, group: Hashable = None) -> bool:
        """Store ``value`` (an array or a tuple of arrays) unless it cannot fit; True if stored.

        Least recently used entries of other groups are evicted to make room; entries of
        ``group`` itself never are (see the module docstring).
        """
        arrays = value if isinstance(value, tuple) else (value,)
        size = sum(a.nbytes for a in arrays)
        if size > self.max_bytes:
            return False
        with self._lock:
            self._entries.pop(key, None)
            while self.nbytes + size > self.max_bytes:
                victim = next((k for k, (_, _, g) in self._entries.items() if g != group), None)
                if victim is None:
                    return False
                del self._entries[victim]
            for a in arrays:
                a.flags.writeable = False
            self._entries[key] = (value, size, group)
            return True

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


def digest_csr(x: sp.spmatrix) -> str:
    """SHA-256 of a sparse matrix's content (shape, dtype, structure and values, as CSR)."""
    x = x.tocsr()
    if not x.has_sorted_indices:  # the same matrix, whatever order its rows' entries came in
        x = x.sorted_indices()
    h = hashlib.sha256(f"{x.shape}{x.dtype.str}".encode())
    # int64 indices: a matrix hashes alike whether scipy gave it 32- or 64-bit index arrays
    for a in (x.indptr.astype(np.int64), x.indices.astype(np.int64), x.data):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
