"""How well a validation carve ranks models and settings as the test does (Gowalla's crux).

A research measurement, not a pipeline: it reads the test part, which no pipeline selection does.
For each carve protocol, every model is fitted on the training rows less the carve and scored on
the carve (a fixed sample of users); the families' order and, within ChebyCF, a grid of its
settings are then compared with the test (the same settings fitted on every training row,
scored on the same users' test items) by Spearman's ρ.

Protocols (``--protocols``), each a carve of every user's training items (at least one held
out, at least one kept; users with one item keep it):

- ``random:P``  a share P drawn at random (the pipelines' default is random:0.1);
- ``last:P``    the share P of highest item ids: the LightGCN files list each row by item id
  and the remap ids follow first appearance, so this is the "newest items" carve.

A protocol may leave models out (``random:0.1/-ease``: EASE's fit is ~20 CPU-minutes at 41k
items; the pipeline's own run has its random:0.1 numbers).

    python benchmarks/selection.py --data runs/data/gowalla \
        --protocols random:0.1/-ease,random:0.21,last:0.1 \
        --json benchmarks/results/selection_gowalla.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.stats import spearmanr

from recvae.data.dataset import Dataset, Part
from recvae.evaluation import evaluate
from recvae.models import create_model

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json  # noqa: E402

METRIC = "ndcg_at_20"
FAMILIES = {
    "chebycf": {},
    "bspm": {},
    "gf-cf": {},
    "ease": {"l2": 80.0, "dtype": "float32"},
    "item-knn": {"similarity": "cosine", "k": 200},
    "popularity": {},
}
# ChebyCF settings around the authors' (φ = 1.5, α = 0.2): the plateau's width and the ideal
# part's weight, the two coefficients a search moves.
GRID = [{"phi": phi, "alpha": alpha} for phi in (0.75, 1.5, 4.0) for alpha in (0.0, 0.2)]


def carve(train: sp.csr_matrix, spec: str, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(training rows less the carve, the carve) as CSR pairs, per ``spec`` (``random:P``, ``last:P``)."""
    kind, share = spec.split(":")
    p = float(share)
    rng = np.random.default_rng(seed)
    keep_rows, held_rows = [], []
    for r in range(train.shape[0]):
        items = train.indices[train.indptr[r]:train.indptr[r + 1]]
        n = len(items)
        k = 0 if n < 2 else min(n - 1, max(1, round(p * n)))
        order = np.sort(items) if kind == "last" else rng.permutation(items)
        held, kept = (order[n - k:], order[:n - k]) if kind == "last" else (order[:k], order[k:])
        keep_rows.append(kept)
        held_rows.append(held)
    return _csr(keep_rows, train.shape[1]), _csr(held_rows, train.shape[1])


def _csr(rows: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    indices = np.concatenate(rows).astype(np.int32)
    m = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(rows), n_items))
    m.sort_indices()
    return m


def sample(part_users: int, n: int, seed: int) -> np.ndarray:
    """A fixed sample of row indices (sorted)."""
    return np.sort(np.random.default_rng(seed).choice(part_users, size=min(n, part_users), replace=False))


def score(model: Any, fold_in: sp.csr_matrix, holdout: sp.csr_matrix) -> float:
    part = Part(fold_in=fold_in, holdout=holdout, users=np.arange(fold_in.shape[0]))
    return evaluate(model.score, part, ks=(20,), batch_size=2000, inplace=True).means[METRIC]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="a weak-split dataset (recvae ingest)")
    p.add_argument("--protocols", default="random:0.1,random:0.21,last:0.1")
    p.add_argument("--models", default=",".join(FAMILIES))
    p.add_argument("--users", type=int, default=6000, help="users scored per protocol (a fixed sample)")
    p.add_argument("--seed", type=int, default=98765)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    full = Dataset.load(args.data).for_refit()  # every training row; test unchanged
    models = [m for m in args.models.split(",") if m]
    rows: list[dict[str, Any]] = []
    test_rows = sample(full.test.n_users, args.users, args.seed)
    test_in, test_out = full.test.fold_in[test_rows], full.test.holdout[test_rows]

    def run(protocol: str, train: sp.csr_matrix, fold_in: sp.csr_matrix, holdout: sp.csr_matrix,
            skip: tuple[str, ...] = ()) -> None:
        ds = Dataset(train=train, train_users=full.train_users, validation=full.test, test=full.test,
                     user_ids=full.user_ids, item_ids=full.item_ids, manifest={"protocol": "weak"})
        for name in [m for m in models if m not in skip]:
            settings = GRID if name == "chebycf" else [{}]
            for setting in settings:
                t = time.perf_counter()
                model = create_model(name, {**FAMILIES[name], **setting}).fit(ds)
                value = score(model, fold_in, holdout)
                knobs = {k: setting.get(k, "") for k in ("phi", "alpha")}
                rows.append({"protocol": protocol, "model": name, **knobs, METRIC: value,
                             "seconds": time.perf_counter() - t})
                print(rows[-1], flush=True)

    run("test", full.train, test_in, test_out)
    for entry in [s for s in args.protocols.split(",") if s]:
        spec, _, leave_out = entry.partition("/")
        kept, held = carve(full.train, spec, args.seed)
        has = np.flatnonzero(np.diff(held.indptr) > 0)
        pick = has[sample(len(has), args.users, args.seed)]
        run(spec, kept, kept[pick], held[pick], tuple(m.lstrip("-") for m in leave_out.split("+") if m))

    summary = summarize(rows)
    print_table(rows)
    print_table(summary)
    write_json(args.json, {"data": str(args.data), "users": args.users, "metric": METRIC,
                           "rows": rows, "summary": summary})


def rho(val: dict[str, float], test: dict[str, float], keys: list[str]) -> float:
    """Spearman's ρ of validation against test over ``keys`` (NaN for fewer than 3)."""
    if len(keys) < 3:
        return float("nan")
    return float(spearmanr([val[k] for k in keys], [test[k] for k in keys]).statistic)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per protocol: Spearman's ρ with test over the families (authors' settings) and over the
    ChebyCF grid, and the family that protocol selects."""
    def key(r: dict[str, Any]) -> str:
        return r["model"] if r["model"] != "chebycf" else f"chebycf φ={r['phi']} α={r['alpha']}"

    test = {key(r): r[METRIC] for r in rows if r["protocol"] == "test"}
    out = []
    for protocol in dict.fromkeys(r["protocol"] for r in rows if r["protocol"] != "test"):
        val = {key(r): r[METRIC] for r in rows if r["protocol"] == protocol}
        fam = [k for k in val if not k.startswith("chebycf") or k == "chebycf φ=1.5 α=0.2"]
        fam = [k for k in fam if k in test]
        grid = [k for k in val if k.startswith("chebycf")]
        rho_f, rho_g = rho(val, test, fam), rho(val, test, grid)
        best = max(val, key=val.__getitem__)
        out.append({"protocol": protocol, "rho_families": rho_f, "rho_chebycf_grid": rho_g,
                    "selected": best, "selected_test": test[best], "best_test": max(test.values())})
    return out


if __name__ == "__main__":
    main()
