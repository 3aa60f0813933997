"""Small sparse matrices shared by the tests."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

TINY_ITEMS = 10
TINY_ITEM_IDS = np.arange(500, 500 + TINY_ITEMS)


def random_csr(n_rows: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    """Binary float32 CSR with about ``density`` of its entries set, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    m = sp.random(n_rows, n_items, density=density, format="csr", random_state=rng, dtype=np.float32)
    m.data[:] = 1.0
    return m


def rows_csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """Binary float32 CSR whose row r holds the items ``rows[r]``."""
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), n_items))


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it (Linux ``/proc``); [] when ``pid`` is gone."""
    from pathlib import Path

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the command name (field 2) may hold spaces: the parent pid follows its ')'
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if fields[0] != "Z":  # zombies have exited, they only wait for their parent
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    if not Path(f"/proc/{pid}").exists():
        return []
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def session_processes(sid: int) -> list[int]:
    """Live processes of the session ``sid`` (a process started with ``start_new_session=True``
    leads the session numbered by its pid): its descendants, even once orphaned."""
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(int(stat.parent.name))
    return out


def tiny_dataset():  # noqa: ANN201 - recvae.data.dataset.Dataset (imported lazily)
    """8 users × 10 items with string user ids and integer item ids (500..509); 5 training, 1
    validation, 2 test users."""
    from recvae.data.dataset import Dataset, Part

    def csr(rows: list[list[int]]) -> sp.csr_matrix:
        return rows_csr(rows, TINY_ITEMS)

    return Dataset(
        train=csr([[0, 1, 2], [1, 2, 3, 4], [0, 1, 5, 6], [5, 6, 7], [2, 3, 8, 9]]),
        train_users=np.array([0, 1, 2, 3, 4]),
        validation=Part(fold_in=csr([[0, 1, 7]]), holdout=csr([[2]]), users=np.array([5])),
        test=Part(fold_in=csr([[1, 2, 3], [5, 6]]), holdout=csr([[4], [7]]), users=np.array([6, 7])),
        user_ids=np.array([f"user-{i}" for i in range(8)], dtype=object),
        item_ids=TINY_ITEM_IDS,
        manifest={"name": "tiny", "protocol": "strong", "key": "tiny-strong-0123abcd"},
    )


def random_dataset(  # noqa: ANN201 - recvae.data.dataset.Dataset (imported lazily)
    n_train: int, n_heldout: int, n_items: int, *, density: float = 0.15,
    holdout_density: float = 0.08, seed: int = 0, string_ids: bool = True,
):
    """A strong-generalization Dataset of random binary rows: ``n_train`` training users, then
    ``n_heldout`` validation and ``n_heldout`` test users (fold-in at ``density``, held-out
    targets at ``holdout_density``), reproducible from ``seed``; item ids ``i0, i1, …`` or
    ``0, 1, …``."""
    from recvae.data.dataset import Dataset, Part

    parts = [
        Part(
            fold_in=random_csr(n_heldout, n_items, density, seed + 1 + k),
            holdout=random_csr(n_heldout, n_items, holdout_density, seed + 3 + k),
            users=np.arange(n_train + n_heldout * k, n_train + n_heldout * (k + 1)),
        )
        for k in range(2)
    ]
    return Dataset(
        train=random_csr(n_train, n_items, density, seed),
        train_users=np.arange(n_train),
        validation=parts[0],
        test=parts[1],
        user_ids=np.arange(n_train + 2 * n_heldout),
        item_ids=np.array([f"i{j}" for j in range(n_items)]) if string_ids else np.arange(n_items),
    )
