"""recvae.evaluation: hand-made cases, a brute-force reference, Liang's notebook formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recvae.data.dataset import Part
from recvae.errors import RecvaeError
from recvae.evaluation import (
    METRICS,
    EvaluationResult,
    evaluate,
    metrics_batch,
    topk_masked,
)
from tests.helpers import rows_csr as csr

L2, L3, L5, L6 = math.log2(2), math.log2(3), math.log2(5), math.log2(6)


# ----------------------------------------------------------------------------- hand-made cases

# Ranking of the 5 items by score: 0, 1, 2, 3, 4.
SCORES = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])


def test_hand_made_no_fold_in():
    # held-out {1, 3, 4}: hits at ranks 2, 4, 5.
    m = metrics_batch(SCORES, csr([[]], 5), csr([[1, 3, 4]], 5), ks=(2, 5, 10))
    # k=2: top {0, 1}, 1 hit. recall = 1/min(2,3) = 1/2, recall_full = 1/3, precision = 1/2.
    assert m["recall_at_2"][0] == pytest.approx(1 / 2)
    assert m["recall_full_at_2"][0] == pytest.approx(1 / 3)
    assert m["precision_at_2"][0] == pytest.approx(1 / 2)
    assert m["hit_rate_at_2"][0] == 1.0
    assert m["mrr_at_2"][0] == pytest.approx(1 / 2)
    # DCG = 1/log2(3) (hit at rank 2); IDCG over min(2,3)=2 hits = 1/log2(2) + 1/log2(3).
    assert m["ndcg_at_2"][0] == pytest.approx((1 / L3) / (1 / L2 + 1 / L3))
    # k=5: all 3 found. recall = recall_full = 1, precision = 3/5.
    assert m["recall_at_5"][0] == pytest.approx(1.0)
    assert m["recall_full_at_5"][0] == pytest.approx(1.0)
    assert m["precision_at_5"][0] == pytest.approx(3 / 5)
    # DCG = 1/log2(3) + 1/log2(5) + 1/log2(6); IDCG = 1 + 1/log2(3) + 1/log2(4).
    assert m["ndcg_at_5"][0] == pytest.approx((1 / L3 + 1 / L5 + 1 / L6) / (1 + 1 / L3 + 1 / 2))
    # k=10 > n_items: same hits, precision divides by the requested k.
    assert m["recall_at_10"][0] == pytest.approx(1.0)
    assert m["precision_at_10"][0] == pytest.approx(3 / 10)
    assert m["ndcg_at_10"][0] == pytest.approx(m["ndcg_at_5"][0])
    for v in m.values():
        assert v.dtype == np.float64 and v.shape == (1,)


def test_fold_in_item_with_highest_score_is_masked():
    # Item 0 (best score) is in the fold-in, so the ranking is 1, 2, 3, 4.
    m = metrics_batch(SCORES, csr([[0]], 5), csr([[1, 3, 4]], 5), ks=(2,))
    # k=2: top {1, 2}: hit at rank 1. recall 1/2, mrr 1, DCG = 1, IDCG = 1 + 1/log2(3).
    assert m["recall_at_2"][0] == pytest.approx(1 / 2)
    assert m["mrr_at_2"][0] == pytest.approx(1.0)
    assert m["ndcg_at_2"][0] == pytest.approx(1 / (1 + 1 / L3))


def test_masked_item_in_holdout_never_counts():
    # Item 4 is both fold-in and held-out (an overlap): masked, so never a hit, even when the
    # top-k reaches into the -inf tail (only items 0 and 1 are unmasked).
    m = metrics_batch(SCORES, csr([[2, 3, 4]], 5), csr([[4]], 5), ks=(5,))
    assert m["hit_rate_at_5"][0] == 0.0
    assert m["ndcg_at_5"][0] == 0.0


def test_rows_without_targets_are_dropped():
    scores = np.tile(SCORES, (3, 1))
    fold_in = csr([[], [], []], 5)
    holdout = csr([[0], [], [4]], 5)  # the middle user has no target
    m = metrics_batch(scores, fold_in, holdout, ks=(1,))
    # user 0: item 0 at rank 1 -> 1; user 2: item 4 at rank 5 -> 0 at k=1.
    np.testing.assert_allclose(m["recall_at_1"], [1.0, 0.0])
    assert not any(np.isnan(v).any() for v in m.values())

    part = Part(fold_in, holdout, np.arange(3))
    result = evaluate(lambda x: np.tile(SCORES, (x.shape[0], 1)), part, ks=(1,))
    assert result.n_users == 2
    assert result.means["recall_at_1"] == pytest.approx(0.5)
    # std(ddof=1) of [1, 0] = sqrt(1/2); stderr = sqrt(1/2) / sqrt(2) = 1/2.
    assert result.stderr["recall_at_1"] == pytest.approx(0.5)


def test_no_targets_in_batch_gives_empty_arrays():
    m = metrics_batch(SCORES, csr([[]], 5), csr([[]], 5), ks=(3,))
    assert all(v.shape == (0,) for v in m.values())


def test_coverage():
    # 3 users, 5 items. Each row ranks items by its own scores.
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.2, 0.3],  # ranking 0, 1, 4, 3, 2
            [0.9, 0.1, 0.8, 0.2, 0.3],  # ranking 0, 2, 4, 3, 1; item 0 masked -> 2, 4, 3, 1
            [0.1, 0.2, 0.3, 0.4, 0.9],  # no target: ignored by coverage
        ]
    )
    fold_in = csr([[], [0], [1]], 5)
    holdout = csr([[3], [1], []], 5)
    rows = {tuple(fold_in[u].indices): scores[u] for u in range(3)}  # fold-ins are distinct

    def score_fn(x: sp.csr_matrix) -> np.ndarray:
        return np.stack([rows[tuple(x[u].indices)] for u in range(x.shape[0])])

    result = evaluate(score_fn, Part(fold_in, holdout, np.arange(3)), ks=(1, 2, 5), batch_size=1)
    # k=1: {0} ∪ {2} -> 2/5; k=2: {0,1} ∪ {2,4} -> 4/5; k=5: user 1 has 4 unmasked items, all 5.
    assert result.means["coverage_at_1"] == pytest.approx(2 / 5)
    assert result.means["coverage_at_2"] == pytest.approx(4 / 5)
    assert result.means["coverage_at_5"] == pytest.approx(1.0)
    assert "coverage_at_1" not in result.stderr


def test_coverage_ignores_masked_tail():
    # One user, 3 items, 2 masked: top-3 is [2, -inf, -inf]; coverage counts item 2 only.
    part = Part(csr([[0, 1]], 3), csr([[2]], 3), np.arange(1))
    result = evaluate(lambda x: np.array([[3.0, 2.0, 1.0]]), part, ks=(3,))
    assert result.means["coverage_at_3"] == pytest.approx(1 / 3)
    assert result.means["precision_at_3"] == pytest.approx(1 / 3)
    assert math.isnan(result.stderr["precision_at_3"])  # one user: no standard error


def test_topk_masked():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]])
    before = scores.clone()
    idx, val = topk_masked(scores, csr([[0, 2], [1, 2, 3, 4]], 5), k=3)
    assert torch.equal(scores, before)  # input untouched
    assert idx[0].tolist() == [1, 3, 4]
    assert val[0].tolist() == pytest.approx([0.8, 0.6, 0.5])
    assert idx[1, 0].item() == 0 and val[1, 0].item() == pytest.approx(0.1)
    assert val[1, 1:].tolist() == [-math.inf, -math.inf]  # fewer than k unmasked items
    idx, val = topk_masked(scores, None, k=100)  # k clipped, no mask
    assert idx.shape == (2, 5) and idx[1].tolist() == [4, 3, 2, 1, 0]


def test_nan_scores():
    with pytest.raises(RecvaeError, match="NaN"):
        metrics_batch(np.array([[0.1, np.nan, 0.3]]), csr([[]], 3), csr([[0]], 3), ks=(1,))
    # A NaN on a masked item is harmless.
    m = metrics_batch(np.array([[0.1, np.nan, 0.3]]), csr([[1]], 3), csr([[2]], 3), ks=(1,))
    assert m["recall_at_1"][0] == 1.0


def test_result_as_metrics_and_table():
    result = EvaluationResult(
        means={"recall_at_20": 0.4, "coverage_at_20": 0.5}, stderr={"recall_at_20": 0.01}, n_users=7
    )
    assert result.as_metrics("val") == {
        "val/recall_at_20": 0.4,
        "val/coverage_at_20": 0.5,
        "val/recall_at_20_stderr": 0.01,
        "val/n_users": 7.0,
    }
    table = result.table()
    assert "recall_at_20" in table and "0.400000 ± 0.010000" in table and "7 users" in table


# ----------------------------------------------------------------------------- errors


def test_shape_errors():
    with pytest.raises(RecvaeError, match=r"scores shape \(1, 4\).*\(1, 5\)"):
        metrics_batch(np.zeros((1, 4)), csr([[]], 5), csr([[1]], 5), ks=(1,))
    with pytest.raises(RecvaeError, match=r"holdout shape \(1, 6\).*fold_in shape \(1, 5\)"):
        metrics_batch(np.zeros((1, 5)), csr([[]], 5), csr([[1]], 6), ks=(1,))
    with pytest.raises(RecvaeError, match="2-D"):
        topk_masked(torch.zeros(5), None, 1)
    part = Part(csr([[0], []], 5), csr([[1], [2]], 5), np.arange(2))
    with pytest.raises(RecvaeError, match=r"score_fn returned shape \(2, 4\).*expected \(2, 5\)"):
        evaluate(lambda x: np.zeros((x.shape[0], 4)), part)
    with pytest.raises(RecvaeError, match="batch_size"):
        evaluate(lambda x: np.zeros(x.shape), part, batch_size=0)


@pytest.mark.parametrize("ks", [(), (0,), (-1, 20), (2.5,), ("20",), (True,), 20, "20"])
def test_bad_ks(ks):
    with pytest.raises(RecvaeError, match="ks"):
        metrics_batch(np.zeros((1, 5)), csr([[]], 5), csr([[1]], 5), ks=ks)


def test_no_users_with_targets():
    part = Part(csr([[0], [1]], 5), csr([[], []], 5), np.arange(2))
    with pytest.raises(RecvaeError, match="no user"):
        evaluate(lambda x: np.zeros(x.shape), part)


# ----------------------------------------------------------------------------- brute force


def brute_force(scores: np.ndarray, fold_in: sp.csr_matrix, holdout: sp.csr_matrix, ks):
    """Per-user metrics and coverage, written plainly, one user at a time."""
    n_users, n_items = scores.shape
    values: dict[str, list[float]] = {f"{m}_at_{k}": [] for m in METRICS for k in ks}
    covered: dict[int, set[int]] = {k: set() for k in ks}
    for u in range(n_users):
        truth = {i for i in range(n_items) if holdout[u, i] != 0}
        if not truth:
            continue
        masked = {i for i in range(n_items) if fold_in[u, i] != 0}
        ranking = [
            i for i in sorted(range(n_items), key=lambda i: -scores[u, i]) if i not in masked
        ]
        for k in ks:
            top = ranking[:k]
            covered[k].update(top)
            hits = [i in truth for i in top]
            n_hits = sum(hits)
            dcg = sum(1 / math.log2(rank + 1) for rank, hit in enumerate(hits, 1) if hit)
            idcg = sum(1 / math.log2(rank + 1) for rank in range(1, min(k, len(truth)) + 1))
            first = next((rank for rank, hit in enumerate(hits, 1) if hit), None)
            values[f"recall_at_{k}"].append(n_hits / min(k, len(truth)))
            values[f"recall_full_at_{k}"].append(n_hits / len(truth))
            values[f"ndcg_at_{k}"].append(dcg / idcg)
            values[f"precision_at_{k}"].append(n_hits / k)
            values[f"hit_rate_at_{k}"].append(float(n_hits > 0))
            values[f"mrr_at_{k}"].append(1 / first if first else 0.0)
    coverage = {k: len(covered[k]) / n_items for k in ks}
    return {name: np.array(v) for name, v in values.items()}, coverage


@st.composite
def problems(draw):
    n_users = draw(st.integers(1, 25))
    n_items = draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    fold_in = sp.csr_matrix(rng.random((n_users, n_items)) < draw(st.floats(0, 0.9)))
    holdout = sp.csr_matrix(rng.random((n_users, n_items)) < draw(st.floats(0, 0.5)))
    # Distinct integer scores per row: no ties, exact in float32 too.
    scores = rng.permuted(np.tile(np.arange(n_items, dtype=np.float64), (n_users, 1)), axis=1)
    ks = draw(st.lists(st.integers(1, 60), min_size=1, max_size=4, unique=True))
    return scores, fold_in.astype(np.float32), holdout.astype(np.float32), ks


def as_input(scores: np.ndarray, kind: str):
    return {
        "np64": scores,
        "np32": scores.astype(np.float32),
        "torch32": torch.from_numpy(scores).float(),
    }[kind]


@settings(max_examples=60, deadline=None)
@given(problems(), st.sampled_from(["np64", "np32", "torch32"]))
def test_metrics_batch_matches_brute_force(problem, kind):
    scores, fold_in, holdout, ks = problem
    expected, _ = brute_force(scores, fold_in, holdout, ks)
    got = metrics_batch(as_input(scores, kind), fold_in, holdout, ks)
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=0, err_msg=name)


@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(1, 7))
def test_evaluate_matches_brute_force(problem, batch_size):
    _, fold_in, holdout, ks = problem
    # Scores are a function of the fold-in row (as for a real model): continuous, no ties.
    rng = np.random.default_rng(fold_in.shape[1])
    w = rng.standard_normal((fold_in.shape[1], fold_in.shape[1]))
    b = rng.standard_normal(fold_in.shape[1])

    def score_fn(x: sp.csr_matrix) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x @ w) + b)

    scores = score_fn(fold_in).numpy()
    rows_with_targets = np.flatnonzero(holdout.getnnz(axis=1) > 0)
    part = Part(fold_in, holdout, np.arange(fold_in.shape[0]))
    if len(rows_with_targets) == 0:
        with pytest.raises(RecvaeError, match="no user"):
            evaluate(score_fn, part, ks, batch_size=batch_size)
        return
    expected, coverage = brute_force(scores, fold_in, holdout, ks)
    result = evaluate(score_fn, part, ks, batch_size=batch_size)
    assert result.n_users == len(rows_with_targets)
    for name, v in expected.items():
        np.testing.assert_allclose(result.means[name], v.mean(), rtol=1e-12, err_msg=name)
        if len(v) > 1:
            np.testing.assert_allclose(
                result.stderr[name], v.std(ddof=1) / math.sqrt(len(v)), rtol=1e-9, atol=1e-15
            )
    for k in ks:
        assert result.means[f"coverage_at_{k}"] == pytest.approx(coverage[k])


# ----------------------------------------------------------------------------- Liang's notebook


def liang_ndcg_binary_at_k_batch(X_pred, heldout_batch, k=100):
    """NDCG_binary_at_k_batch from VAE_ML20M_WWW2018.ipynb (bn.argpartition -> np.argpartition)."""
    batch_users = X_pred.shape[0]
    idx_topk_part = np.argpartition(-X_pred, k, axis=1)
    topk_part = X_pred[np.arange(batch_users)[:, np.newaxis], idx_topk_part[:, :k]]
    idx_part = np.argsort(-topk_part, axis=1)
    idx_topk = idx_topk_part[np.arange(batch_users)[:, np.newaxis], idx_part]
    tp = 1.0 / np.log2(np.arange(2, k + 2))
    DCG = (heldout_batch[np.arange(batch_users)[:, np.newaxis], idx_topk].toarray() * tp).sum(
        axis=1
    )
    IDCG = np.array([(tp[: min(n, k)]).sum() for n in heldout_batch.getnnz(axis=1)])
    return DCG / IDCG


def liang_recall_at_k_batch(X_pred, heldout_batch, k=100):
    """Recall_at_k_batch from VAE_ML20M_WWW2018.ipynb (bn.argpartition -> np.argpartition)."""
    batch_users = X_pred.shape[0]
    idx = np.argpartition(-X_pred, k, axis=1)
    X_pred_binary = np.zeros_like(X_pred, dtype=bool)
    X_pred_binary[np.arange(batch_users)[:, np.newaxis], idx[:, :k]] = True
    X_true_binary = (heldout_batch > 0).toarray()
    tmp = (np.logical_and(X_true_binary, X_pred_binary).sum(axis=1)).astype(np.float32)
    recall = tmp / np.minimum(k, X_true_binary.sum(axis=1))
    return recall


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_liang_notebook(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 200, 500
    fold_in = sp.random(n_users, n_items, density=0.1, format="csr", random_state=rng)
    fold_in.data[:] = 1
    holdout = sp.random(n_users, n_items, density=0.03, format="csr", random_state=rng)
    holdout.data[:] = 1
    holdout = sp.csr_matrix(holdout - holdout.multiply(fold_in))
    holdout.eliminate_zeros()
    holdout = holdout[holdout.getnnz(axis=1) > 0]  # the notebook's users all have targets
    fold_in = fold_in[: holdout.shape[0]]
    scores = rng.standard_normal((holdout.shape[0], n_items))

    got = metrics_batch(scores, fold_in, holdout, ks=(20, 50, 100))
    x_pred = scores.copy()
    x_pred[fold_in.nonzero()] = -np.inf  # as in the notebook's evaluation loop
    for k in (20, 50, 100):
        ndcg = liang_ndcg_binary_at_k_batch(x_pred, holdout, k)
        recall = liang_recall_at_k_batch(x_pred, holdout, k)
        np.testing.assert_allclose(got[f"ndcg_at_{k}"], ndcg, rtol=1e-12)
        np.testing.assert_allclose(got[f"recall_at_{k}"], recall, rtol=1e-6)  # float32 there


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(0)
    fold_in = sp.csr_matrix(rng.random((300, 400)) < 0.1).astype(np.float32)
    holdout = sp.csr_matrix(rng.random((300, 400)) < 0.03).astype(np.float32)
    scores = torch.from_numpy(rng.standard_normal((300, 400)))
    cpu = metrics_batch(scores, fold_in, holdout, ks=(10, 50))
    gpu = metrics_batch(scores.cuda(), fold_in, holdout, ks=(10, 50))
    for name in cpu:
        np.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-12)
    idx, _ = topk_masked(scores.cuda(), fold_in, 10)
    assert idx.device.type == "cuda"


def test_holdout_with_unsorted_indices_and_explicit_zeros():
    # Row 0 targets items 3 and 1 (stored out of order) plus an explicit zero at item 0.
    # Row 1 targets item 4.
    holdout = sp.csr_matrix(
        (np.array([1.0, 0.0, 1.0, 1.0], np.float32), np.array([3, 0, 1, 4]), np.array([0, 3, 4])),
        shape=(2, 5),
    )
    assert not holdout.has_sorted_indices
    fold_in = csr([[2], []], 5)
    scores = np.tile(SCORES, (2, 1))
    expected, _ = brute_force(scores, fold_in, holdout, [1, 2, 5])
    got = metrics_batch(scores, fold_in, holdout, [1, 2, 5])
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=0, err_msg=name)
    # item 0 ranks first for both users but is no target of user 0: precision@1 is 0 for both
    np.testing.assert_array_equal(got["precision_at_1"], [0.0, 0.0])


@pytest.mark.parametrize("inplace", [False, True])
def test_inplace_only_overwrites_scores_when_asked(inplace: bool):
    stored = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    part = Part(fold_in=csr([[0]], 5), holdout=csr([[1]], 5), users=np.array([0]))
    result = evaluate(lambda m: stored, part, ks=(1,), inplace=inplace)
    assert result.means["recall_at_1"] == 1.0
    assert (stored[0, 0].item() == -math.inf) is inplace
