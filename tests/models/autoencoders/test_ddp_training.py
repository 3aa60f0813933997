"""Data-parallel training (DDP over gloo, two CPU processes) against one process.

The processes are started with ``torch.multiprocessing.spawn`` and meet through a file store, so
the tests need no free port. One spawn runs every scenario and saves what each rank saw; the
tests compare it with single-process runs computed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recvae.data.dataset import Dataset, Part
from recvae.errors import RecvaeError
from recvae.models.autoencoders.models import MultDAE, MultVAE
from recvae.models.autoencoders.nets import DAE, init_weights
from recvae.models.autoencoders.training import Epoch, Objective, epoch_seeds

N_USERS, N_ITEMS, N_HELD = 400, 80, 60
SEEDS = (98765, 1, 2, 3)  # the first is the distributed runs' seed


def clustered(n_users: int, seed: int) -> sp.csr_matrix:
    """Users in 4 taste groups, each favouring its own quarter of the items: learnable structure."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 4, n_users)
    p = np.full((4, N_ITEMS), 0.02)
    for g in range(4):
        p[g, g * N_ITEMS // 4 : (g + 1) * N_ITEMS // 4] = 0.35
    m = (rng.random((n_users, N_ITEMS)) < p[group]).astype(np.float32)
    m[np.arange(n_users), rng.integers(0, N_ITEMS, n_users)] = 1.0  # nobody empty
    return sp.csr_matrix(m)


def make_dataset() -> Dataset:
    train = clustered(N_USERS, 0)
    held = clustered(2 * N_HELD, 1).tocoo()
    target = np.random.default_rng(2).random(held.nnz) < 0.2

    def part(lo: int) -> Part:
        rows = (held.row >= lo) & (held.row < lo + N_HELD)

        def csr(mask: np.ndarray) -> sp.csr_matrix:
            return sp.csr_matrix(
                (held.data[mask], (held.row[mask] - lo, held.col[mask])), shape=(N_HELD, N_ITEMS)
            )

        return Part(csr(rows & ~target), csr(rows & target), np.arange(lo, lo + N_HELD) + N_USERS)

    return Dataset(
        train, np.arange(N_USERS), part(0), part(N_HELD), np.arange(N_USERS + 2 * N_HELD),
        np.arange(N_ITEMS),
    )


def dae(**kw) -> MultDAE:
    """No dropout: training draws no noise, so two processes must equal one exactly."""
    args = dict(hidden_dims=(16,), dropout=0.0, epochs=4, batch_size=100, lr=3e-3, device="cpu",
                threads=1)
    return MultDAE(**{**args, **kw})


def vae(**kw) -> MultVAE:
    # a fixed β schedule: `auto` would depend on `epochs`, which the resume test changes
    args = dict(hidden_dims=(24,), latent_dim=8, epochs=5, batch_size=100, lr=3e-3, device="cpu",
                threads=1, total_anneal_steps=40)
    return MultVAE(**{**args, **kw})


def one_batch_grads(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """Gradients after one uneven batch (7 users: 3 + 4) of a Mult-DAE, through DDP."""
    net = DAE(N_ITEMS, (6,), "tanh", 0.0)
    init_weights(net, torch.Generator().manual_seed(0))
    objective = Objective(net)
    if world_size > 1:
        objective = torch.nn.parallel.DistributedDataParallel(objective)
    epoch = Epoch(clustered(20, 5), 1, 7, 7, torch.device("cpu"), rank=rank,
                  world_size=world_size, objective=objective)
    x, generator = next(epoch.passes())
    nll, _ = epoch.loss(x, generator)
    nll.backward()
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    ds = make_dataset()
    res: dict = {"grads": one_batch_grads(rank, 2)}
    exact = dae().fit(ds)
    res["dae_history"], res["dae_state"] = exact.history_, exact.net_.state_dict()
    noisy = vae().fit(ds)
    res["vae_history"], res["vae_state"] = noisy.history_, noisy.net_.state_dict()
    ckpt = Path(out) / "ckpt"
    vae(epochs=2).fit(ds, checkpoint_dir=ckpt)
    resumed = vae().fit(ds, checkpoint_dir=ckpt, resume=True)
    res["resumed_history"], res["resumed_state"] = resumed.history_, resumed.net_.state_dict()
    res["resumed_best_epoch"] = resumed.best_epoch_
    torch.save(res, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of the two ranks computed (one spawn for every test of this module)."""
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]


# --------------------------------------------------------------------------- sharding (no processes)


def test_each_batch_is_split_between_the_ranks_and_the_scales_average_to_the_batch_mean() -> None:
    rows = clustered(23, 3)  # batches of 10: 10, 10, 3 users

    def shares(world: int, rank: int) -> list[tuple[list[int], float]]:
        epoch = Epoch(rows, 2, 5, 10, torch.device("cpu"), rank=rank, world_size=world)
        return [(x.cols.tolist(), epoch.grad_scale) for x, _ in epoch.passes()]

    single = [cols for cols, _ in shares(1, 0)]
    two = [shares(2, 0), shares(2, 1)]
    assert [len(two[0]), len(two[1])] == [3, 3]
    for b, cols in enumerate(single):
        assert two[0][b][0] + two[1][b][0] == cols  # rank 0's rows, then rank 1's
    # 3 users left for 2 ranks: 1 + 2, weighted so that the mean of the two is the batch mean
    assert two[0][2][1] == pytest.approx(2 / 3) and two[1][2][1] == pytest.approx(4 / 3)
    assert [two[0][b][1] for b in range(2)] == [1.0, 1.0]
    # 21 users in batches of 10 leave 1 user for 3 ranks: it joins the previous batch
    sizes = [
        [x.n_rows for x, _ in Epoch(rows[:21], 1, 5, 10, torch.device("cpu"), rank=r,
                                    world_size=3).passes()]
        for r in range(3)
    ]
    assert sizes == [[3, 3], [3, 4], [4, 4]]


def test_every_rank_shares_the_order_and_draws_its_own_noise() -> None:
    (o0, s0), (o1, s1), (o_single, s_single) = epoch_seeds(7, 3, 0, 0), epoch_seeds(7, 3, 0, 1), \
        epoch_seeds(7, 3)
    assert np.array_equal(o0.permutation(50), o1.permutation(50))
    assert s0 == s_single != s1
    assert np.array_equal(o_single.permutation(50), epoch_seeds(7, 3, 0, 0)[0].permutation(50))


def test_batch_smaller_than_the_processes_is_refused(monkeypatch) -> None:
    from recvae import distributed

    monkeypatch.setattr(distributed, "world", lambda: (0, 4))
    with pytest.raises(RecvaeError, match="batch_size 3 is the global batch"):
        dae(batch_size=3).fit(make_dataset())


# --------------------------------------------------------------------------- two processes (gloo)


@pytest.mark.slow
def test_sparse_input_layer_gradient_equals_the_single_process_one(ranks) -> None:
    """embedding_bag's gradient, all-reduced by DDP over an uneven split (3 + 4 users), equals
    the gradient of the whole batch's mean in one process, on both ranks."""
    single = one_batch_grads(0, 1)
    for res in ranks:
        for name, grad in single.items():
            torch.testing.assert_close(res["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert single["encoder.input.weight"].abs().sum() > 0


@pytest.mark.slow
def test_two_processes_equal_one_when_training_draws_no_noise(ranks) -> None:
    """2 ranks × 50 users against 1 × 100, Mult-DAE without dropout: both compute the gradient of
    the same batch mean, so they differ only by the order of floating-point sums (the all-reduce,
    and per-rank partial sums over 50 users instead of one over 100): float32 rounding, ~1e-7
    relative per step, grown by four epochs of Adam to well under 1e-4."""
    ds = make_dataset()
    single = dae().fit(ds)
    for res in ranks:
        for got, want in zip(res["dae_history"], single.history_, strict=True):
            assert got["train/loss"] == pytest.approx(want["train/loss"], rel=1e-5)
            assert got["val/ndcg_at_100"] == pytest.approx(want["val/ndcg_at_100"], abs=1e-4)
        for k, v in single.net_.state_dict().items():
            torch.testing.assert_close(res["dae_state"][k], v, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_two_processes_match_one_within_the_seed_to_seed_spread(ranks) -> None:
    """2 ranks × 50 users against 1 × 100, Mult-VAE with dropout 0.5, same seed.

    What differs: each rank draws its own dropout masks and ε (its own torch seed; rank 0's is
    the single process's, but it covers only half of each batch), and the sums run in another
    order. The gradient is the same in expectation, since each rank's loss is its share's mean
    and DDP averages equal shares: the batch mean. So the two runs differ as two single-process
    runs with different seeds do, and that is the tolerance: at every epoch the distributed
    loss, and the final validation NDCG@100, lie within twice the largest difference between
    any two of four single-process seeds (the runs are deterministic, so this cannot flake).
    """
    ds = make_dataset()
    runs = [vae(seed=s).fit(ds).history_ for s in SEEDS]
    for key in ("train/loss", "val/ndcg_at_100"):
        per_epoch = np.array([[h[key] for h in run] for run in runs])  # seeds × epochs
        spread = per_epoch.max(axis=0) - per_epoch.min(axis=0)
        assert spread[-1] > 0
        for res in ranks:
            got = np.array([h[key] for h in res["vae_history"]])
            assert np.all(np.abs(got - per_epoch[0]) <= 2 * spread + 1e-9), (key, got, per_epoch)
    assert ranks[0]["vae_history"][-1]["val/ndcg_at_100"] > ranks[0]["vae_history"][0][
        "val/ndcg_at_100"]  # it learns


@pytest.mark.slow
def test_ranks_agree_and_resume_is_exact_under_ddp(ranks) -> None:
    """Both ranks report the same metrics and hold the same weights; a run stopped after epoch 2
    (checkpoint by rank 0) and resumed by both ranks to epoch 5 equals the uninterrupted run."""
    a, b = ranks
    assert without_timing(a["vae_history"]) == without_timing(b["vae_history"])
    for res in ranks:
        assert without_timing(res["resumed_history"]) == without_timing(a["vae_history"])
        for k, v in a["vae_state"].items():
            assert torch.equal(res["resumed_state"][k], v), k
            assert torch.equal(res["vae_state"][k], v), k
    assert a["resumed_best_epoch"] == b["resumed_best_epoch"]
