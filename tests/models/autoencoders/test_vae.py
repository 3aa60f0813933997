"""Mult-VAE / Mult-DAE: architecture, loss, sparse paths, save/load and input validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.models import load_model, model_class
from recvae.models.autoencoders.models import MultDAE, MultVAE, resolve_anneal_steps
from recvae.models.autoencoders.nets import DAE, VAE, SparseLinear, SparseRows, init_weights
from recvae.models.autoencoders.training import kl_weight
from tests.helpers import random_csr, random_dataset

N_ITEMS = 60


def make_dataset(n_train: int = 120, n_items: int = N_ITEMS, seed: int = 0) -> Dataset:
    return random_dataset(n_train, 30, n_items, seed=seed)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return make_dataset()


def small_vae(**kw) -> MultVAE:
    args = dict(hidden_dims=(16,), latent_dim=4, epochs=2, batch_size=32, device="cpu", threads=1)
    return MultVAE(**{**args, **kw})


def small_dae(**kw) -> MultDAE:
    args = dict(hidden_dims=(8,), epochs=2, batch_size=32, device="cpu", threads=1)
    return MultDAE(**{**args, **kw})


def batch(n_rows: int = 7, seed: int = 5) -> tuple[sp.csr_matrix, SparseRows]:
    m = random_csr(n_rows, N_ITEMS, 0.2, seed).tolil()
    m[3, :] = 0  # empty users must not break normalisation or the loss
    m[n_rows - 1, :] = 0
    m[0, 1] = 2.0  # counts, not only clicks
    m = m.tocsr()
    m.eliminate_zeros()
    return m, SparseRows.from_csr(m)


def seeded_net(kind: str, dropout: float) -> torch.nn.Module:
    net = (
        VAE(N_ITEMS, (10,), 3, "tanh", dropout)
        if kind == "vae"
        else DAE(N_ITEMS, (6,), "tanh", dropout)
    )
    init_weights(net, torch.Generator().manual_seed(0))
    return net


# --------------------------------------------------------------------------- architecture


def test_registry_names_the_classes() -> None:
    assert model_class("mult-vae") is MultVAE
    assert model_class("mult-dae") is MultDAE


def test_paper_defaults() -> None:
    vae, dae = MultVAE(), MultDAE()
    assert (vae.hidden_dims, vae.latent_dim, vae.dropout, vae.lr, vae.batch_size, vae.epochs) == (
        (600,),
        200,
        0.5,
        1e-3,
        500,
        200,
    )
    assert (vae.anneal_cap, vae.total_anneal_steps, vae.weight_decay, vae.seed) == (
        0.2,
        "auto",  # 200,000 on ML-20M: see the next test
        0.0,
        98765,
    )
    assert (dae.hidden_dims, dae.weight_decay, dae.dropout) == ((200,), 0.01, 0.5)


def test_auto_anneal_steps_give_the_papers_schedule_on_ml20m_and_scale_with_the_run() -> None:
    # ML-20M: 116,677 training users / 500 = 234 batches × 200 epochs; the paper's 200,000 steps
    assert resolve_anneal_steps("auto", 0.2, 200, 234) == 200_000
    assert resolve_anneal_steps(1234, 0.2, 200, 234) == 1234
    # a small log: β reaches the cap at 85 % of the run's steps, whatever the cap
    for cap in (0.2, 0.5, 1.0):
        total = resolve_anneal_steps("auto", cap, 60, 5)
        reached = next(s for s in range(10_000) if kl_weight(s, cap, total) >= cap)
        assert 0.84 * 300 <= reached <= 0.86 * 300
    assert resolve_anneal_steps("auto", 0.0, 60, 5) == 0


def test_vae_layer_shapes_follow_the_paper() -> None:
    net = VAE(1000, (600,), 200, "tanh", 0.5)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["encoder.input.weight"] == (1000, 600)
    assert shapes["encoder.layers.0.weight"] == (400, 600)  # μ and log σ² side by side
    assert shapes["decoder.layers.0.weight"] == (600, 200)
    assert shapes["decoder.output.weight"] == (1000, 600)
    shallow = VAE(1000, (), 200, "tanh", 0.5)  # hidden_dims=[]: I-200-I with a latent z
    assert {k: tuple(v.shape) for k, v in shallow.state_dict().items()} == {
        "encoder.input.weight": (1000, 400),
        "encoder.input.bias": (400,),
        "decoder.output.weight": (1000, 200),
        "decoder.output.bias": (1000,),
    }
    dae = DAE(1000, (200,), "tanh", 0.5)
    assert {k: tuple(v.shape) for k, v in dae.state_dict().items()} == {
        "encoder.input.weight": (1000, 200),
        "encoder.input.bias": (200,),
        "decoder.output.weight": (1000, 200),
        "decoder.output.bias": (1000,),
    }


def test_init_is_glorot_weights_and_tiny_biases() -> None:
    net = seeded_net("vae", 0.5)
    w = net.encoder.input.weight
    bound = (6 / (w.shape[0] + w.shape[1])) ** 0.5
    assert w.abs().max() <= bound and w.std() > bound / 3
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            assert p.abs().max() <= 0.002 and p.abs().max() > 0


@pytest.mark.parametrize("kind", ["vae", "dae"])
def test_shapes_and_every_parameter_gets_a_gradient(kind: str) -> None:
    net = seeded_net(kind, 0.5)
    m, x = batch()
    net.train()
    nll, kl = net.loss(x, torch.Generator().manual_seed(1))
    assert nll.shape == () and kl.shape == ()
    (nll + 0.3 * kl).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert p.grad.abs().sum() > 0, name
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (m.shape[0], N_ITEMS)


def test_sparse_encoder_layer_equals_dense_product() -> None:
    m, x = batch()
    layer = SparseLinear(N_ITEMS, 5)
    init_weights(layer, torch.Generator().manual_seed(3))
    values = torch.rand(len(x.values), generator=torch.Generator().manual_seed(4))
    dense = torch.zeros(m.shape)
    dense[x.rows, x.cols] = values
    torch.testing.assert_close(layer(x, values), dense @ layer.weight + layer.bias)


def dense_reference(
    net: torch.nn.Module, m: sp.csr_matrix, dropout: float, beta: float, seed: int
) -> torch.Tensor:
    """nll + β·KL of Liang et al.'s model written with dense ops, drawing the same noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(m.toarray())
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)
    # One uniform draw per nonzero, in CSR order (none without dropout), then ε.
    keep = (
        torch.rand(m.nnz, generator=g) >= dropout
        if dropout
        else torch.ones(m.nnz, dtype=torch.bool)
    )
    mask = torch.zeros_like(x)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    mask[torch.from_numpy(rows), torch.from_numpy(m.indices.astype(np.int64))] = keep.float()
    xd = xn * mask / (1 - dropout)
    enc = net.encoder
    h = xd @ enc.input.weight + enc.input.bias
    for layer in enc.layers:
        h = F.linear(torch.tanh(h), layer.weight, layer.bias)
    if isinstance(net, VAE):
        mu, logvar = h[:, : net.latent_dim], h[:, net.latent_dim :]
        eps = torch.randn(mu.shape, generator=g)
        z = mu + eps * torch.exp(0.5 * logvar)
        kl = torch.mean(torch.sum(0.5 * (-logvar + torch.exp(logvar) + mu**2 - 1), dim=1))
    else:
        z, kl = torch.tanh(h), torch.zeros(())
    dec = net.decoder
    for layer in dec.layers:
        z = torch.tanh(F.linear(z, layer.weight, layer.bias))
    log_softmax = F.log_softmax(F.linear(z, dec.output.weight, dec.output.bias), dim=1)
    neg_ll = -torch.mean(torch.sum(log_softmax * x, dim=1))
    return neg_ll + beta * kl


@pytest.mark.parametrize("kind", ["vae", "dae"])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_loss_and_gradients_equal_dense_multinomial_elbo(kind: str, dropout: float) -> None:
    m, x = batch()
    beta = 0.15
    net = seeded_net(kind, dropout)
    nll, kl = net.loss(x, torch.Generator().manual_seed(11))
    loss = nll + beta * kl
    loss.backward()
    fused = {k: p.grad.clone() for k, p in net.named_parameters()}
    net.zero_grad()
    expected = dense_reference(net, m, dropout, beta, seed=11)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for k, p in net.named_parameters():
        torch.testing.assert_close(fused[k], p.grad, rtol=1e-4, atol=1e-6, msg=k)


def test_evaluation_uses_the_mean_and_no_dropout() -> None:
    net = seeded_net("vae", 0.5).eval()
    m, x = batch()
    with torch.no_grad():
        a, b = net(x), net(x)
        mu, _ = net.encode(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, net.decoder(mu))


# --------------------------------------------------------------------------- fit / score / save


def shallow_vae(**kw) -> MultVAE:
    """Mult-VAE with no hidden layer: I-[μ, log σ²]-I, the shape used on Gowalla."""
    return small_vae(hidden_dims=(), **kw)


@pytest.mark.parametrize("factory", [small_vae, small_dae, shallow_vae])
def test_fit_score_save_load_gives_identical_scores(factory, dataset: Dataset, tmp_path) -> None:
    model = factory().fit(dataset)
    assert len(model.history_) == 2 and model.best_epoch_ in (1, 2)
    new_users = random_csr(9, N_ITEMS, 0.2, 42)  # never seen in training
    scores = model.score(new_users)
    assert scores.shape == (9, N_ITEMS) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.params() == model.params()
    np.testing.assert_array_equal(loaded.score(new_users), scores)
    assert loaded.best_epoch_ == model.best_epoch_


def test_scores_are_batched_identically(dataset: Dataset) -> None:
    model = small_vae(epochs=1).fit(dataset)
    whole = model.score(dataset.test.fold_in)
    model.eval_batch_size = 7
    np.testing.assert_allclose(model.score(dataset.test.fold_in), whole, rtol=1e-6, atol=1e-6)


def test_model_trained_for_cuda_loads_on_a_cpu_only_machine(
    dataset: Dataset, tmp_path, monkeypatch
) -> None:
    model = small_dae(epochs=1).fit(dataset)
    model.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "recvae_model.json"
    meta = json.loads(meta_path.read_text())
    meta["params"]["device"] = "cuda"  # as saved by a run on a GPU machine
    meta_path.write_text(json.dumps(meta))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = load_model(tmp_path / "m")
    assert loaded.device == "cuda"
    np.testing.assert_array_equal(
        loaded.score(dataset.test.fold_in), model.score(dataset.test.fold_in)
    )


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden_dims": (0,)}, "hidden_dims"),
        ({"hidden_dims": (16, -3)}, "hidden_dims"),
        ({"hidden_dims": "abc"}, "hidden_dims"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -5}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"patience": 0}, "patience"),
        ({"threads": 0}, "threads"),
        ({"total_anneal_steps": -1}, "total_anneal_steps"),
        ({"anneal_cap": -0.1}, "anneal_cap"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"activation": "gelu2"}, "activation"),
        ({"device": "tpu"}, "device"),
        ({"device": "cuda:x"}, "device"),
    ],
)
def test_invalid_hyper_parameters_raise_one_line_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(RecvaeError, match=match) as info:
        small_vae(**kwargs)
    assert "\n" not in str(info.value)


def test_dae_needs_a_hidden_layer() -> None:
    with pytest.raises(RecvaeError, match="hidden_dims"):
        MultDAE(hidden_dims=())


@pytest.mark.parametrize("shape_nnz", [(0, 0), (10, 0)])
def test_empty_training_matrix_is_refused(dataset: Dataset, shape_nnz: tuple[int, int]) -> None:
    n_rows, _ = shape_nnz
    empty = sp.csr_matrix((n_rows, N_ITEMS), dtype=np.float32)
    ds = Dataset(
        empty,
        np.arange(n_rows),
        dataset.validation,
        dataset.test,
        dataset.user_ids,
        dataset.item_ids,
    )
    with pytest.raises(RecvaeError, match="empty"):
        small_vae().fit(ds)


def test_cuda_requested_but_absent(dataset: Dataset, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(RecvaeError, match="CUDA"):
        small_vae(device="cuda").fit(dataset)


def test_item_mismatch_is_refused(dataset: Dataset, tmp_path) -> None:
    model = small_dae(epochs=1).fit(dataset)
    with pytest.raises(RecvaeError, match=f"{N_ITEMS} columns"):
        model.score(random_csr(3, N_ITEMS + 1, 0.2, 0))
    bad = Dataset(
        dataset.train,
        dataset.train_users,
        dataset.validation,
        dataset.test,
        dataset.user_ids,
        dataset.item_ids[:-1],
    )
    with pytest.raises(RecvaeError, match="item"):
        small_dae().fit(bad)
    # Weights saved for one vocabulary cannot be loaded against another.
    model.save(tmp_path / "m")
    import pandas as pd

    pd.DataFrame({"item_id": dataset.item_ids[:-2]}).to_parquet(tmp_path / "m" / "items.parquet")
    with pytest.raises(RecvaeError, match="items"):
        load_model(tmp_path / "m")


def test_unfitted_model_cannot_score() -> None:
    with pytest.raises(RecvaeError, match="not fitted"):
        small_vae().score(random_csr(2, N_ITEMS, 0.2, 0))
