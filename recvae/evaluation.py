"""Ranking metrics for held-out items, as in Liang et al. (2018), vectorized over user batches.

Fold-in items are masked (score -inf) before ranking; only users with at least one held-out item
count. Two recall definitions are reported and named distinctly:

- ``recall_at_k``: hits / min(k, |held-out|), the paper's definition (Liang et al., Mult-VAE);
- ``recall_full_at_k``: hits / |held-out|, the LightGCN / Gowalla / RecBole definition.

Example::

    result = evaluate(model.score, dataset.validation, ks=(20, 50, 100))
    print(result.table())
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from recvae.batching import row_batches
from recvae.data.dataset import Part
from recvae.errors import RecvaeError

# Per-user metrics, in the order they are reported; coverage is aggregated over all users.
METRICS = ("recall", "recall_full", "ndcg", "precision", "hit_rate", "mrr")


def topk_masked(
    scores: torch.Tensor, fold_in: sp.csr_matrix | None, k: int, *, inplace: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items per row after setting each row's fold-in items to -inf.

    ``scores`` is (n_rows, n_items); ``fold_in`` is CSR of the same shape (or None: no masking).
    Returns ``(indices, values)``, both (n_rows, min(k, n_items)), sorted by score descending.
    Rows with fewer than k unmasked items get -inf tail entries; callers that must not emit them
    drop entries whose value is -inf. ``scores`` is not modified unless ``inplace`` (which saves
    a copy of the whole score matrix). Works on CPU and CUDA.

    Raises RecvaeError if an unmasked score is NaN (typically a diverged model).

    Example::

        idx, val = topk_masked(model_scores, part.fold_in[:500], k=100)
    """
    if scores.ndim != 2:
        raise RecvaeError(
            f"expected a 2-D score matrix (users x items), got shape {tuple(scores.shape)}"
        )
    if not scores.is_floating_point():
        scores = scores.float()
    if fold_in is not None:
        fold_in = _as_csr(fold_in, "fold_in")
        if fold_in.shape != tuple(scores.shape):
            raise RecvaeError(
                f"fold_in shape {fold_in.shape} does not match scores shape {tuple(scores.shape)}"
            )
        rows = np.repeat(np.arange(fold_in.shape[0]), np.diff(fold_in.indptr))
        keep = fold_in.data != 0  # explicit zeros are not interactions
        if not inplace:
            scores = scores.clone()
        if keep.any():
            r = torch.as_tensor(rows[keep], device=scores.device)
            c = torch.as_tensor(fold_in.indices[keep].astype(np.int64), device=scores.device)
            scores[r, c] = -math.inf
    k = min(int(k), scores.shape[1])
    values, indices = torch.topk(scores, k, dim=1, largest=True, sorted=True)
    # torch.topk ranks NaN above everything, so any unmasked NaN shows up in the top k.
    if k > 0 and bool(torch.isnan(values[:, 0]).any()):
        raise RecvaeError("scores contain NaN (did training diverge?): cannot rank items")
    return indices, values


def metrics_batch(
    scores: torch.Tensor | np.ndarray,
    fold_in: sp.csr_matrix,
    holdout: sp.csr_matrix,
    ks: Sequence[int],
) -> dict[str, np.ndarray]:
    """Per-user metric values for the rows of this batch that have at least one held-out item.

    ``scores``, ``fold_in`` and ``holdout`` are (n_rows, n_items). Returns float64 arrays of
    length n_rows_with_targets (rows without targets are dropped, never NaN), keyed by
    ``{metric}_at_{k}`` for metric in recall (hits / min(k, |held-out|), the paper's),
    recall_full (hits / |held-out|), ndcg (binary relevance, discount 1 / log2(rank + 1), ideal
    DCG over min(k, |held-out|) hits), precision (hits / k), hit_rate (1 if any hit) and mrr
    (1 / rank of the first hit within the top k, else 0). Coverage is aggregated by ``evaluate``.

    Example::

        m = metrics_batch(scores, part.fold_in[:100], part.holdout[:100], ks=(20, 100))
        m["ndcg_at_100"].mean()
    """
    ks = _check_ks(ks)
    scores = _as_tensor(scores)
    fold_in, holdout = _check_part(fold_in, holdout)
    if tuple(scores.shape) != fold_in.shape:
        raise RecvaeError(
            f"scores shape {tuple(scores.shape)} does not match "
            f"fold_in/holdout shape {fold_in.shape}"
        )
    discount = _discount(min(max(ks), fold_in.shape[1]), scores.device)
    values, _ = _metrics(scores, fold_in, holdout, ks, discount)
    return values


@dataclass
class EvaluationResult:
    """Metric means and standard errors over the users of a part that have held-out items.

    ``means`` also holds ``coverage_at_{k}``: distinct items in the top-k lists of those users,
    divided by n_items (no standard error). ``stderr`` is std(ddof=1) / sqrt(n_users), NaN when
    n_users is 1.
    """

    means: dict[str, float]
    stderr: dict[str, float]
    n_users: int

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """Logging dict: ``{prefix}/{name}``, ``{prefix}/{name}_stderr`` and ``{prefix}/n_users``.

        Example: ``result.as_metrics("test")["test/ndcg_at_100"]``.
        """
        out = {f"{prefix}/{name}": value for name, value in self.means.items()}
        out.update({f"{prefix}/{name}_stderr": value for name, value in self.stderr.items()})
        out[f"{prefix}/n_users"] = float(self.n_users)
        return out

    def table(self) -> str:
        """A readable multi-line table: one metric per line, mean ± standard error."""
        width = max(len(name) for name in self.means)
        lines = [
            f"{self.n_users} users with held-out items; recall = hits/min(k,|held-out|) (Liang et "
            "al.), recall_full = hits/|held-out|",
            f"{'metric':<{width}}  {'mean':>8}   {'stderr':>8}",
        ]
        for name, mean in self.means.items():
            err = f" ± {self.stderr[name]:.6f}" if name in self.stderr else ""
            lines.append(f"{name:<{width}}  {mean:8.6f}{err}")
        return "\n".join(lines)


def evaluate(
    score_fn: Callable[[sp.csr_matrix], np.ndarray | torch.Tensor],
    part: Part,
    ks: Sequence[int] = (20, 50, 100),
    *,
    batch_size: int = 1000,
    show_progress: bool = False,
    inplace: bool = False,
) -> EvaluationResult:
    """Rank all items for the users of ``part`` and measure how well the held-out items are found.

    ``score_fn`` maps a CSR batch of fold-in rows (batch, n_items) to scores of the same shape
    (numpy or torch, any device); it runs under ``torch.no_grad()``. Only users with at least one
    held-out item are scored; fold-in items are masked before ranking. Raises RecvaeError if no
    user of the part has a target. ``inplace``: ``score_fn`` returns a new array on each call,
    which may be overwritten (saves copying each batch's scores; true of ``Recommender.score``).

    Example::

        result = evaluate(model.score, dataset.test, ks=(20, 50, 100), batch_size=500)
        result.means["ndcg_at_100"], result.stderr["ndcg_at_100"]
    """
    ks = _check_ks(ks)
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size <= 0
    ):
        raise RecvaeError(f"batch_size must be a positive integer, got {batch_size!r}")
    fold_in, holdout = _check_part(part.fold_in, part.holdout)
    n_items = fold_in.shape[1]

    # Users without targets contribute nothing, so they are not scored at all.
    rows = np.flatnonzero(_row_counts(holdout) > 0)
    if len(rows) == 0:
        raise RecvaeError(
            f"no user of this part has a held-out item ({fold_in.shape[0]} users): "
            "nothing to evaluate"
        )
    fold_in, holdout = fold_in[rows], holdout[rows]

    k_max = min(max(ks), n_items)
    never = max(ks) + 1  # a rank beyond every cut-off
    discount: torch.Tensor | None = None
    best_rank = torch.empty(0)  # per item: best rank it reached in any top-k list
    parts: dict[str, list[np.ndarray]] = {}
    batches = list(row_batches(len(rows), int(batch_size)))
    for sl in tqdm(batches, desc="evaluate", unit="batch", disable=not show_progress):
        batch_in = fold_in[sl]
        with torch.no_grad():  # score_fn may be a bare network forward
            scores = _as_tensor(score_fn(batch_in))
        if tuple(scores.shape) != batch_in.shape:
            raise RecvaeError(
                f"score_fn returned shape {tuple(scores.shape)} for a batch of "
                f"{batch_in.shape[0]} users, expected {batch_in.shape}"
            )
        if discount is None:  # the first batch tells the device
            discount = _discount(k_max, scores.device)
            best_rank = torch.full((n_items,), never, dtype=torch.int64, device=scores.device)
            ranks = torch.arange(1, k_max + 1, device=scores.device)
        scores = scores.to(discount.device)
        values, (idx, val) = _metrics(scores, batch_in, holdout[sl], ks, discount, inplace)
        for name, v in values.items():
            parts.setdefault(name, []).append(v)
        # -inf entries were never recommended: give them a rank beyond every k.
        r = torch.where(val != -math.inf, ranks, never)
        best_rank.scatter_reduce_(0, idx.reshape(-1), r.reshape(-1), reduce="amin")

    means: dict[str, float] = {}
    stderr: dict[str, float] = {}
    n_users = len(rows)
    for name, chunks in parts.items():
        v = np.concatenate(chunks)
        means[name] = float(v.mean())
        stderr[name] = float(v.std(ddof=1) / math.sqrt(n_users)) if n_users > 1 else math.nan
    for k in ks:
        means[f"coverage_at_{k}"] = int((best_rank <= k).sum().item()) / n_items
    return EvaluationResult(means=means, stderr=stderr, n_users=n_users)


# --------------------------------------------------------------------------- internals


def _metrics(
    scores: torch.Tensor,
    fold_in: sp.csr_matrix,
    holdout: sp.csr_matrix,
    ks: tuple[int, ...],
    discount: torch.Tensor,
    inplace: bool = False,
) -> tuple[dict[str, np.ndarray], tuple[torch.Tensor, torch.Tensor]]:
    """Per-user metrics of the rows with targets, and those rows' top-max(ks) (indices, values).

    ``inplace``: ``scores`` may be overwritten (fold-in items set to -inf).
    """
    k_max = discount.shape[0]
    n_pos_np = _row_counts(holdout)
    keep = n_pos_np > 0
    if not keep.all():  # drop rows without targets before the expensive part
        rows = np.flatnonzero(keep)
        scores = scores[torch.as_tensor(rows, device=scores.device)]  # a copy: ours to overwrite
        fold_in, holdout, n_pos_np = fold_in[rows], holdout[rows], n_pos_np[rows]
        inplace = True
    n_pos = torch.as_tensor(n_pos_np, dtype=torch.float64, device=scores.device)
    idx, val = topk_masked(scores, fold_in, k_max, inplace=inplace)
    # A -inf entry is a masked (or unrankable) item, never a recommendation.
    hits = (_in_rows(holdout, idx) & (val != -math.inf)).double()
    ranks = torch.arange(1, k_max + 1, dtype=torch.float64, device=scores.device)
    cum_hits = hits.cumsum(dim=1)
    cum_dcg = (hits * discount).cumsum(dim=1)
    # 1/rank decreases with rank, so the running max of hit/rank is 1/rank of the first hit.
    cum_rr = (hits / ranks).cummax(dim=1).values
    ideal = torch.cat([discount.new_zeros(1), discount.cumsum(0)])  # ideal[n] = DCG of n hits

    out: dict[str, torch.Tensor] = {}
    for k in ks:
        col = min(k, k_max) - 1
        h = cum_hits[:, col]
        n_ideal = torch.clamp(n_pos, max=k)
        out[f"recall_at_{k}"] = h / n_ideal
        out[f"recall_full_at_{k}"] = h / n_pos
        out[f"ndcg_at_{k}"] = cum_dcg[:, col] / ideal[n_ideal.long()]
        out[f"precision_at_{k}"] = h / k
        out[f"hit_rate_at_{k}"] = (h > 0).double()
        out[f"mrr_at_{k}"] = cum_rr[:, col]
    ordered = {f"{m}_at_{k}": out[f"{m}_at_{k}"].cpu().numpy() for m in METRICS for k in ks}
    return ordered, (idx, val)


def _in_rows(m: sp.csr_matrix, idx: torch.Tensor) -> torch.Tensor:
    """(n_rows, k) bool: whether item ``idx[r, j]`` is a non-zero of row r of ``m``.

    A binary search of the top-k entries among the sorted (row, item) keys of ``m``: costs
    O(n_rows·k·log nnz) where densifying ``m`` to gather from it would touch n_rows × n_items.
    """
    m = m if m.has_sorted_indices else m.sorted_indices()
    n_rows, n_items = m.shape
    nz = m.data != 0  # explicit zeros are not targets
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(m.indptr))
    keys = torch.as_tensor(rows[nz] * n_items + m.indices[nz].astype(np.int64), device=idx.device)
    if keys.numel() == 0:
        return torch.zeros(idx.shape, dtype=torch.bool, device=idx.device)
    query = torch.arange(n_rows, device=idx.device).unsqueeze(1) * n_items + idx
    pos = torch.searchsorted(keys, query.reshape(-1)).clamp_(max=keys.numel() - 1)
    return (keys[pos] == query.reshape(-1)).reshape(idx.shape)


def _discount(k_max: int, device: torch.device | str) -> torch.Tensor:
    """1 / log2(rank + 1) for ranks 1..k_max, float64."""
    ranks = torch.arange(1, k_max + 1, dtype=torch.float64)
    return (1.0 / torch.log2(ranks + 1.0)).to(device)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Validated cut-offs, duplicates removed, order kept."""
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence | np.ndarray):
        raise RecvaeError(f"ks must be a sequence of positive integers, got {ks!r}")
    if len(ks) == 0:
        raise RecvaeError("ks must contain at least one cut-off, got an empty sequence")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0:
            raise RecvaeError(f"ks must be positive integers, got {k!r} in {list(ks)!r}")
    return tuple(dict.fromkeys(int(k) for k in ks))


def _as_csr(m: sp.spmatrix, name: str) -> sp.csr_matrix:
    if not sp.issparse(m):
        raise RecvaeError(f"{name} must be a scipy sparse matrix, got {type(m).__name__}")
    return sp.csr_matrix(m)


def _check_part(fold_in: sp.spmatrix, holdout: sp.spmatrix) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    fold_in, holdout = _as_csr(fold_in, "fold_in"), _as_csr(holdout, "holdout")
    if fold_in.shape != holdout.shape:
        raise RecvaeError(
            f"holdout shape {holdout.shape} does not match fold_in shape {fold_in.shape}"
        )
    return fold_in, holdout


def _row_counts(m: sp.csr_matrix) -> np.ndarray:
    """Non-zero entries per row (explicit zeros are not interactions)."""
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    return np.bincount(rows[m.data != 0], minlength=m.shape[0])


def _as_tensor(scores: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(scores, torch.Tensor):
        return scores.detach()
    if isinstance(scores, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(scores))
    raise RecvaeError(f"scores must be a torch.Tensor or numpy array, got {type(scores).__name__}")
