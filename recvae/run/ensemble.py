"""The ensemble stage: a weighted blend of the pipeline's models, its weights chosen on
validation only, then scored on test once with the final (refitted) members.

While a member scores validation (once, in its own stage), a :class:`Recorder` keeps each
validation user's top ``candidates`` items and raw scores, and the per-user statistics the
normalization needs, in ``output_dir/ensemble/<member>.validation.npz``. The weight search
reads only those files: no member is refitted or scored again for it, and the test part is not
read. A blend is scored on the union of its members' candidates; a member's score for a
candidate outside its own list is taken at its list's last value (the truth is at most that).
So a one-member corner of the simplex ranks exactly as that member did, and the search, which
visits every corner, cannot end below the best member on validation.

Example (what ``run_pipeline`` does with an ``ensemble:`` block)::

    recorders = {name: Recorder(ctx.out.ensemble(), name, 200) for name in members}
    ...  # run_model(job, dataset, ctx, record=recorders[job.name]) for each member
    outcome = run_ensemble(cfg.ensemble, outcomes, dataset, ctx)
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from recvae.config import ModelConfig, ensemble_members
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.evaluation import topk_masked
from recvae.io import atomic_file, load_arrays, save_arrays
from recvae.models import load_model
from recvae.models.ensemble import Ensemble, normalize_values, row_stats
from recvae.run.context import SELECTION_METRIC, ModelJob, ModelOutcome, RunContext
from recvae.run.fit import Fitted, ScoreFn
from recvae.run.model import run_model

if TYPE_CHECKING:
    from recvae.config import EnsembleConfig, PipelineConfig, RecommendConfig

STEPS = (0.1, 0.125, 1 / 6, 0.2, 0.25, 1 / 3, 0.5)  # the finest simplex grid within MAX_POINTS
MAX_POINTS = 300


class Recorder:
    """Keeps a member's validation candidates while its validation is scored (``wrap``), and
    writes them (``save``) to ``<folder>/<member>.validation.npz``."""

    def __init__(self, folder: Path, member: str, candidates: int) -> None:
        self.path = folder / f"{member}.validation.npz"
        self.m = candidates
        self.parts: list[tuple[np.ndarray, ...]] = []

    def wrap(self, score: ScoreFn) -> ScoreFn:
        self.parts = []

        def recording(fold_in: sp.csr_matrix) -> np.ndarray:
            scores = np.asarray(score(fold_in))
            idx, val = topk_masked(torch.from_numpy(scores), fold_in, self.m)
            stats = np.stack(row_stats(scores, fold_in), axis=1)
            self.parts.append((idx.numpy().astype(np.int32), val.numpy(), stats))
            return scores

        return recording

    def save(self) -> None:
        ids, values, stats = (np.concatenate(p) for p in zip(*self.parts, strict=True))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path) as tmp:
            save_arrays(tmp, {"ids": ids, "values": values, "stats": stats})
        self.parts = []


@dataclass
class Blend:
    """The validation users' candidates of several members, aligned: ``items`` (users, c) the
    union of the members' lists, ``values`` (members, users, c) each member's normalized score
    for them, ``excluded`` a candidate listed twice or a fold-in item (masked by a member),
    ``hits`` whether each is a held-out item, and the number of held-out items per user."""

    items: np.ndarray
    values: np.ndarray
    excluded: np.ndarray
    hits: np.ndarray
    n_pos: np.ndarray

    @classmethod
    def of(cls, files: Sequence[Path], holdout: sp.csr_matrix, normalize: str) -> Blend:
        loaded = [load_arrays(f, "an ensemble member's candidates (ids, values, stats)") for f in files]
        rows = np.flatnonzero(np.diff(holdout.indptr) > 0)
        for f, c in zip(files, loaded, strict=True):
            if len(c["ids"]) != len(rows):
                raise RecvaeError(f"{f}: candidates for {len(c['ids'])} users; validation has {len(rows)} "
                                  "with targets: the member was scored on another split; run it again")
        n_items = holdout.shape[1]
        items = np.sort(np.concatenate([c["ids"] for c in loaded], axis=1), axis=1).astype(np.int64)
        excluded = np.zeros(items.shape, dtype=bool)
        excluded[:, 1:] = items[:, 1:] == items[:, :-1]
        user = np.arange(len(rows), dtype=np.int64)[:, None]
        query = (user * n_items + items).ravel()
        values = []
        for c in loaded:
            norm = normalize_values(c["values"], c["stats"], normalize)
            # a list shorter than the user's unseen items ends in masked (-inf) fold-in items:
            # everything off the list is one of those too
            floor = np.where(np.isfinite(norm[:, -1]), norm[:, -1], -np.inf).astype(np.float32)
            value = _lookup(user * n_items + c["ids"], norm, query, floor, items.shape)
            excluded |= ~np.isfinite(value)
            values.append(np.where(np.isfinite(value), value, 0.0).astype(np.float32))
        held = holdout[rows]
        held_keys = np.repeat(np.arange(len(rows)), np.diff(held.indptr)) * n_items + held.indices
        hit = _lookup(held_keys, np.ones(held.nnz, np.float32), query, np.zeros(len(rows), np.float32),
                      items.shape)
        return cls(items, np.stack(values), excluded, hit > 0, np.diff(held.indptr))

    def metrics(self, weights: Sequence[float], ks: Sequence[int]) -> dict[str, float]:
        """``val/`` NDCG, recall and recall_full at each k (means and standard errors) of the
        blend with ``weights``, over the candidates."""
        score = np.tensordot(np.asarray(weights, np.float32), self.values, axes=1)
        score[self.excluded] = -np.inf
        k_max = min(max(ks), score.shape[1])
        top = np.argpartition(-score, k_max - 1, axis=1)[:, :k_max]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(score, top, 1), axis=1), 1)
        hits = np.take_along_axis(self.hits, order, 1) & np.isfinite(np.take_along_axis(score, order, 1))
        discount = 1.0 / np.log2(np.arange(2, k_max + 2))
        ideal = np.concatenate([[0.0], np.cumsum(discount)])
        out: dict[str, float] = {"val/n_users": float(len(self.n_pos))}
        for k in ks:
            kk = min(k, k_max)
            h = hits[:, :kk].sum(1)
            per_user = {"ndcg": (hits[:, :kk] * discount[:kk]).sum(1) / ideal[np.minimum(self.n_pos, k)],
                        "recall": h / np.minimum(self.n_pos, k), "recall_full": h / self.n_pos}
            for name, v in per_user.items():
                out[f"val/{name}_at_{k}"] = float(v.mean())
                se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else math.nan
                out[f"val/{name}_at_{k}_stderr"] = float(se)
        return out


def _lookup(
    keys: np.ndarray, values: np.ndarray, query: np.ndarray, floor: np.ndarray, shape: tuple[int, int],
) -> np.ndarray:
    """For each ``query`` key (user·n_items + item), the value stored under it in ``keys`` /
    ``values`` (same shapes), else the user's ``floor``; shaped ``shape``."""
    k, v = keys.ravel(), values.ravel()
    order = np.argsort(k, kind="stable")
    k, v = k[order], v[order]
    pos = np.minimum(np.searchsorted(k, query), len(k) - 1) if len(k) else np.zeros(len(query), int)
    found = (k[pos] == query) if len(k) else np.zeros(len(query), bool)
    fallback = np.repeat(floor, shape[1])
    return np.where(found, v[pos] if len(k) else 0, fallback).reshape(shape).astype(np.float32)


def simplex(m: int) -> tuple[list[tuple[float, ...]], float]:
    """Every point of the finest simplex grid over ``m`` weights with at most MAX_POINTS points
    (its corners, each one member alone, included), and the grid's step."""
    for step in STEPS:
        n = round(1 / step)
        if math.comb(n + m - 1, m - 1) <= MAX_POINTS or step == STEPS[-1]:
            points = [tuple(c / n for c in combo) for combo in _compositions(n, m)]
            return points, step
    raise AssertionError("unreachable")


def _compositions(n: int, m: int) -> list[tuple[int, ...]]:
    """Tuples of ``m`` non-negative integers summing to ``n``."""
    return [tuple(b - a - 1 for a, b in zip((-1, *bars), (*bars, n + m - 1), strict=True))
            for bars in itertools.combinations(range(n + m - 1), m - 1)]


def search_weights(blend: Blend, members: Sequence[str], ks: Sequence[int]) -> tuple[dict[str, float], int]:
    """The weights of the best blend on validation (``SELECTION_METRIC``): every point of a
    simplex grid, then pairwise transfers of half and a quarter of its step while they improve.
    Returns the weights and the number of blends scored."""
    key = SELECTION_METRIC
    k = int(key.rsplit("_", 1)[1])
    points, step = simplex(len(members))
    scored = {p: blend.metrics(p, [k])[key] for p in points}
    best = max(scored, key=lambda p: (scored[p], -points.index(p)))
    for delta in (step / 2, step / 4):
        improved = True
        while improved:
            improved = False
            for i, j in itertools.permutations(range(len(members)), 2):
                w = list(best)
                moved = min(delta, w[i])
                if moved <= 0:
                    continue
                w[i] -= moved
                w[j] += moved
                p = tuple(round(x, 6) for x in w)
                if p not in scored:
                    scored[p] = blend.metrics(p, [k])[key]
                if scored[p] > scored[best] + 1e-12:
                    best, improved = p, True
    return dict(zip(members, best, strict=True)), len(scored)


def member_recorders(cfg: PipelineConfig, ctx: RunContext) -> dict[str, Recorder]:
    """A :class:`Recorder` for each ensemble member of ``cfg`` (none without an ensemble)."""
    if cfg.ensemble is None:
        return {}
    return {m: Recorder(ctx.out.ensemble(), m, cfg.ensemble.candidates) for m in ensemble_members(cfg)}


def members_of(spec: EnsembleConfig, outcomes: Sequence[ModelOutcome]) -> list[ModelOutcome]:
    """The ensemble's members that finished; one warning line for each that did not."""
    everyone = [o.run_name for o in outcomes if o.model != "ensemble"]
    wanted = everyone if spec.members == "all" else list(spec.members)
    by_name = {o.run_name: o for o in outcomes}
    kept = []
    for name in wanted:
        o = by_name.get(name)
        if o is None or not o.ok:
            why = "it failed" if o is not None else "it did not run"
            print(f"[{spec.name}] warning: member {name} left out ({why})", file=sys.stderr, flush=True)
        else:
            kept.append(o)
    return kept


def run_ensemble(
    spec: EnsembleConfig, outcomes: Sequence[ModelOutcome], dataset: Dataset, ctx: RunContext,
    recommend: RecommendConfig | None,
) -> ModelOutcome:
    """The ensemble of ``outcomes``' members as a model of its own: weights chosen on
    validation, then saved, tested once, logged and exported like any model."""
    members = members_of(spec, outcomes)
    if len(members) < 2:
        raise RecvaeError(f"{spec.name}: {len(members)} member(s) finished; an ensemble needs two or more")
    names = [o.run_name for o in members]
    config = ModelConfig("ensemble", label=spec.name, params={"members": names, "normalize": spec.normalize})
    job = ModelJob(config, recommend=recommend, log=True)
    chosen: dict[str, float] = {}

    def choose(job: ModelJob, dataset: Dataset, ctx: RunContext, record: object = None) -> Fitted:
        t0 = time.perf_counter()
        blend = Blend.of([ctx.out.ensemble() / f"{n}.validation.npz" for n in names],
                         dataset.validation.holdout, spec.normalize)
        if isinstance(spec.weights, dict):
            weights, tried = {n: float(spec.weights.get(n, 0.0)) for n in names}, 1
        else:
            weights, tried = search_weights(blend, names, ctx.ks)
        val = blend.metrics(list(weights.values()), ctx.ks)
        print(f"[{spec.name}] weights " + ", ".join(f"{n} {w:.3f}" for n, w in weights.items())
              + f": {SELECTION_METRIC} {val[SELECTION_METRIC]:.4f} ({tried} blends scored)", flush=True)
        ctx.tracker.log_params({"weights": weights, "ensemble": {"blends_scored": tried}})
        chosen.update(weights)
        finals = {o.run_name: load_model(o.model_dir) for o in members if weights[o.run_name] > 0}
        model = Ensemble.of(finals, weights, spec.normalize)
        return Fitted(model, job.config, time.perf_counter() - t0, val)

    outcome = run_model(job, dataset, ctx, stage=choose)
    outcome.weights = chosen
    return outcome
