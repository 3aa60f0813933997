"""``softmax: sampled``: the estimator, its gradients (only the touched rows), lazy Adam, and
training, resume and exact scoring with it."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from recvae.errors import RecvaeError
from recvae.models import load_model
from recvae.models.autoencoders.checkpoint import CHECKPOINT_FILE
from recvae.models.autoencoders.models import Autoencoder, MultDAE, MultVAE, RecVAE
from recvae.models.autoencoders.nets import (
    VAE,
    MultinomialOutput,
    NegativeSampler,
    SparseRows,
    init_weights,
    row_sparse_parameters,
    set_softmax,
)
from recvae.models.autoencoders.optim import MixedAdam
from tests.helpers import rows_csr
from tests.models.autoencoders.test_vae import make_dataset

N_ITEMS = 40


def output_layer(seed: int = 0) -> MultinomialOutput:
    layer = MultinomialOutput(5, N_ITEMS)
    init_weights(layer, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        layer.weight.mul_(8.0)  # spread the logits, so that the normaliser is not trivial
    return layer


def popularity() -> np.ndarray:
    return np.arange(N_ITEMS, 0, -1) ** 2  # item 0 the most popular


# --------------------------------------------------------------------------- the estimator


def test_negatives_are_drawn_by_popularity_to_the_power_alpha() -> None:
    sampler = NegativeSampler(popularity(), 20_000, 0.5, "cpu")
    items, counts = sampler.draw(torch.Generator().manual_seed(0))
    assert counts.sum() == 20_000 and len(torch.unique(items)) == len(items)
    q = popularity() ** 0.5 / (popularity() ** 0.5).sum()
    freq = np.zeros(N_ITEMS)
    freq[items.numpy()] = counts.numpy() / 20_000
    np.testing.assert_allclose(freq, q, atol=4 * np.sqrt(q.max() / 20_000))
    # zero-popularity items can still be drawn (counted as 1)
    assert NegativeSampler(np.zeros(3), 10, 1.0).log_q.exp().tolist() == pytest.approx([1 / 3] * 3)


def test_equals_the_full_softmax_when_the_batch_holds_every_item() -> None:
    """Every draw falls among the batch's items and is dropped: nothing is estimated."""
    layer = output_layer()
    x = SparseRows.from_csr(rows_csr([list(range(0, N_ITEMS, 2)), list(range(1, N_ITEMS, 2)),
                                      [3, 7]], N_ITEMS))
    h = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    full = layer.nll(h, x)
    full.backward()
    grads = [h.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone()]
    h.grad = layer.weight.grad = layer.bias.grad = None
    set_softmax(layer, NegativeSampler(popularity(), 64, 0.75), sparse_grad=True)
    sampled = layer.nll(h, x, torch.Generator().manual_seed(2))
    sampled.backward()
    torch.testing.assert_close(sampled, full)
    torch.testing.assert_close(h.grad, grads[0])
    torch.testing.assert_close(layer.weight.grad.to_dense(), grads[1])
    torch.testing.assert_close(layer.bias.grad.to_dense(), grads[2])


def test_the_estimated_normaliser_is_unbiased() -> None:
    """Z_u = Σ_j exp(logit_uj) is recovered from the sampled NLL of a user with 2 items:
    log Ẑ = (nll + Σ_j x_j·logit_j) / n. Its mean over many batches' draws is Z (importance
    sampling, given the batch's items); the log of it, the loss, is biased low (Jensen)."""
    layer = output_layer()
    x = SparseRows.from_csr(rows_csr([[0, 5]], N_ITEMS))
    h = torch.randn(1, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = layer(h)[0]
        z = logits.double().exp().sum().item()
        sampler = NegativeSampler(popularity(), 8, 0.75)
        g = torch.Generator().manual_seed(4)
        estimates = np.array([
            math.exp((layer.sampled_nll(h, x, sampler, g).item() + logits[[0, 5]].sum().item()) / 2)
            for _ in range(4000)
        ])
    assert estimates.std() > 0.01 * z  # really estimated
    assert abs(estimates.mean() - z) < 4 * estimates.std() / math.sqrt(len(estimates))


def test_only_the_touched_rows_get_a_gradient() -> None:
    net = VAE(N_ITEMS, (8,), 4, "tanh", 0.5)
    init_weights(net, torch.Generator().manual_seed(0))
    set_softmax(net, NegativeSampler(popularity(), 6, 0.75), sparse_grad=True)
    assert row_sparse_parameters(net) == [
        net.encoder.input.weight, net.decoder.output.weight, net.decoder.output.bias]
    x = SparseRows.from_csr(rows_csr([[1, 2, 30], [2, 9]], N_ITEMS))
    nll, kl = net.loss(x, torch.Generator().manual_seed(5))
    (nll + 0.2 * kl).backward()
    touched = set(net.decoder.output.weight.grad.coalesce().indices()[0].tolist())
    assert {1, 2, 9, 30} <= touched and len(touched) <= 4 + 6
    assert set(net.decoder.output.bias.grad.coalesce().indices()[0].tolist()) == touched
    assert set(net.encoder.input.weight.grad.coalesce().indices()[0].tolist()) == {1, 2, 9, 30}
    assert not net.encoder.input.bias.grad.is_sparse


def test_lazy_adam_equals_adam_on_rows_touched_and_leaves_the_others() -> None:
    """Coupled L2 and Adam's moments on the touched rows, as dense Adam with weight decay 2λ."""
    g = torch.Generator().manual_seed(0)
    start = torch.randn(6, 3, generator=g)
    grads = [torch.randn(6, 3, generator=g) for _ in range(3)]
    dense = torch.nn.Parameter(start.clone())
    lazy = torch.nn.Parameter(start.clone())
    reference = torch.optim.Adam([dense], lr=0.1, weight_decay=2 * 0.05)
    mixed = MixedAdam([lazy], lr=0.1, l2=0.05, sparse=[lazy])
    assert set(mixed.optimizers("adam")) == {"adam", "adam.sparse"}
    for grad in grads:
        dense.grad = grad.clone()
        reference.step()
        lazy.grad = grad.to_sparse(1)  # row-sparse, every row touched
        mixed.step()
    torch.testing.assert_close(lazy.data, dense.data)
    before = lazy.detach().clone()
    lazy.grad = torch.sparse_coo_tensor([[4]], grads[0][4:5], (6, 3), check_invariants=True)
    mixed.step()
    assert torch.equal(lazy.data[:4], before[:4]) and not torch.equal(lazy.data[4], before[4])


# --------------------------------------------------------------------------- training


def sampled_vae(**kw) -> MultVAE:
    args = dict(hidden_dims=(16,), latent_dim=4, epochs=4, batch_size=32, device="cpu", threads=1,
                softmax="sampled", negatives=16, total_anneal_steps=40, lr=3e-3)
    return MultVAE(**{**args, **kw})


def test_a_full_softmax_checkpoint_does_not_resume_as_sampled(tmp_path) -> None:
    ds = make_dataset()
    sampled_vae(epochs=1, softmax="full").fit(ds, checkpoint_dir=tmp_path)
    with pytest.raises(RecvaeError, match="softmax"):
        sampled_vae(epochs=2).fit(ds, checkpoint_dir=tmp_path, resume=True)


def test_mult_dae_with_weight_decay_trains_sampled() -> None:
    model = MultDAE(hidden_dims=(8,), epochs=2, batch_size=32, device="cpu", threads=1,
                    softmax="sampled", negatives=8).fit(make_dataset())
    assert math.isfinite(model.history_[-1]["train/loss"])
    assert model.history_[-1]["train/l2_penalty"] > 0


def sampled_recvae(**kw) -> RecVAE:
    args = dict(hidden_dim=16, encoder_layers=2, latent_dim=4, epochs=3, batch_size=32,
                device="cpu", threads=1, softmax="sampled", negatives=16, lr=3e-3)
    return RecVAE(**{**args, **kw})


@pytest.mark.parametrize(("make", "loss_key", "optimizers"), [
    (sampled_vae, "train/loss", {"adam", "adam.sparse"}),
    # RecVAE: each half's item matrix (the encoder's input layer, the decoder) is lazy
    (sampled_recvae, "train/decoder_loss", {"encoder", "encoder.sparse", "decoder", "decoder.sparse"}),
], ids=["mult-vae", "recvae"])
def test_trains_resumes_exactly_and_scores_every_item(
    tmp_path, make: Callable[..., Autoencoder], loss_key: str, optimizers: set[str],
) -> None:
    ds = make_dataset()
    reference = make().fit(ds)
    losses = [h[loss_key] for h in reference.history_]
    assert losses[-1] < losses[0]
    make(epochs=2).fit(ds, checkpoint_dir=tmp_path / "ckpt")
    ckpt = torch.load(tmp_path / "ckpt" / CHECKPOINT_FILE, weights_only=True)
    assert set(ckpt["optimizers"]) == optimizers  # lazy Adam's moments are saved
    resumed = make().fit(ds, checkpoint_dir=tmp_path / "ckpt", resume=True)
    for k, v in reference.net_.state_dict().items():
        assert torch.equal(resumed.net_.state_dict()[k], v), k
    scores = reference.score(ds.test.fold_in)
    with torch.no_grad():
        exact = reference.net_(SparseRows.from_csr(ds.test.fold_in)).numpy()
    assert scores.shape == (ds.test.fold_in.shape[0], ds.n_items)
    np.testing.assert_array_equal(scores, exact)  # the full softmax's logits over all items
    reference.save(tmp_path / "m")
    np.testing.assert_array_equal(load_model(tmp_path / "m").score(ds.test.fold_in), scores)


def test_recvae_sampled_equals_full_when_every_batch_holds_every_item() -> None:
    """One batch of all users, every item among their positives: every negative is dropped
    and the batch's items are every item, so the sampled likelihood is the full one, lazy Adam
    is Adam (every row touched), and the draws before the negatives (dropout, ε) are the same:
    both train to the same weights, up to float rounding."""
    ds = make_dataset()
    assert (np.asarray(ds.train.sum(axis=0)).ravel() > 0).all()
    args = dict(epochs=2, batch_size=ds.train.shape[0])
    full = sampled_recvae(softmax="full", **args).fit(ds)
    sampled = sampled_recvae(**args).fit(ds)
    a, b = full.net_.state_dict(), sampled.net_.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    assert sampled.history_[-1]["train/decoder_loss"] == pytest.approx(
        full.history_[-1]["train/decoder_loss"], rel=1e-5)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"softmax": "approx"}, "softmax"),
    ({"negatives": 0}, "negatives"),
    ({"negatives_alpha": -0.5}, "negatives_alpha"),
])
def test_invalid_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(RecvaeError, match=match):
        sampled_vae(**kwargs)
