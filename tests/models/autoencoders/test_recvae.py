"""RecVAE: its loss against a hand computation, the alternating updates (frozen halves, the prior
refreshed once per epoch), exact resume, shapes, save/load, the pipeline and bad
hyper-parameters."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import distributions as D

from recvae import cli
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.io import load_arrays
from recvae.models import load_model, model_class
from recvae.models.autoencoders import RecVAE
from recvae.models.autoencoders.checkpoint import CHECKPOINT_FILE
from recvae.models.autoencoders.nets import (
    CompositePrior,
    RecVAENet,
    RecVAEWithPrior,
    SparseRows,
    init_fan_in_uniform,
)
from recvae.models.autoencoders.training import (
    Epoch,
    RecVAEStep,
    TrainConfig,
    TrainState,
    train,
)
from recvae.models.base import EpochReport
from tests.helpers import random_csr, random_dataset

N_ITEMS = 40
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return random_dataset(90, 20, N_ITEMS, density=0.2, holdout_density=0.1)


def small(**kw) -> RecVAE:
    # 90 users / 32 per batch: 3 batches per pass, 4 passes per epoch.
    args = dict(
        hidden_dim=12, latent_dim=4, epochs=3, batch_size=32, lr=3e-3, device="cpu", threads=1
    )
    return RecVAE(**{**args, **kw})


def seeded_net(n_items: int = N_ITEMS, layers: int = 3, dropout: float = 0.5) -> RecVAENet:
    net = RecVAENet(n_items, 6, layers, 3, dropout)
    init_fan_in_uniform(net, torch.Generator().manual_seed(0))
    return net


def clone(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]


# --------------------------------------------------------------------------- the loss


def hand_encoder(enc, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual encoder with dense tensors and written-out swish and LayerNorm."""

    def swish(v: torch.Tensor) -> torch.Tensor:
        return v * torch.sigmoid(v)

    def layer_norm(v: torch.Tensor, norm) -> torch.Tensor:  # noqa: ANN001
        mean = v.mean(dim=1, keepdim=True)
        var = ((v - mean) ** 2).mean(dim=1, keepdim=True)
        return (v - mean) / torch.sqrt(var + 0.1) * norm.weight + norm.bias

    hs = [layer_norm(swish(x @ enc.input.weight + enc.input.bias), enc.norms[0])]
    for layer, norm in zip(enc.layers, enc.norms[1:], strict=True):
        hs.append(layer_norm(swish(hs[-1] @ layer.weight.T + layer.bias + sum(hs)), norm))
    out = hs[-1] @ enc.head.weight.T + enc.head.bias
    return out[:, : enc.latent_dim], out[:, enc.latent_dim :]


@pytest.mark.parametrize("gamma_beta", [(0.005, None), (None, 0.2)])
def test_encoder_loss_equals_a_hand_computation(gamma_beta) -> None:
    gamma, beta = gamma_beta
    m = random_csr(6, N_ITEMS, 0.25, 7).tolil()
    m[0, 3] = 2.0  # counts, not only clicks: |x_u| = Σ_j x_uj
    m[4, :] = 0  # an empty user: no likelihood, β = 0 with gamma
    m = m.tocsr()
    m.eliminate_zeros()
    x = SparseRows.from_csr(m)
    net = seeded_net()
    trainee = RecVAEWithPrior(net)
    with torch.no_grad():  # an old posterior unlike the current one
        for p in trainee.prior.encoder.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    step = RecVAEStep(trainee, gamma=gamma, beta=beta)
    nll, kl = trainee.encoder_terms(x, torch.Generator().manual_seed(11))
    loss = nll + (step.kl_weights(x) * kl).mean()

    # By hand, drawing the same noise: one uniform per nonzero in CSR order, then ε.
    g = torch.Generator().manual_seed(11)
    dense = torch.from_numpy(m.toarray())
    normed = dense / dense.norm(dim=1, keepdim=True).clamp_min(1e-6)
    keep = torch.zeros_like(dense)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    keep[torch.from_numpy(rows), torch.from_numpy(m.indices.astype(np.int64))] = (
        torch.rand(m.nnz, generator=g) >= 0.5
    ).float()
    mu, logvar = hand_encoder(net.encoder, normed * keep / 0.5)
    z = mu + torch.randn(mu.shape, generator=g) * torch.exp(0.5 * logvar)
    log_q = D.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z)
    old_mu, old_logvar = hand_encoder(trainee.prior.encoder, normed)
    zeros = torch.zeros_like(z)
    prior = D.MixtureSameFamily(
        D.Categorical(probs=torch.tensor([3 / 20, 3 / 4, 1 / 10]).expand(*z.shape, 3)),
        D.Normal(
            torch.stack([zeros, old_mu, zeros], dim=-1),
            torch.stack([zeros + 1, torch.exp(0.5 * old_logvar), zeros + math.exp(5)], dim=-1),
        ),
    )
    kl_hand = (log_q - prior.log_prob(z)).sum(dim=1)
    betas = gamma * dense.sum(dim=1) if gamma is not None else torch.full((6,), beta)
    logits = z @ net.decoder.weight.T + net.decoder.bias
    nll_hand = -(torch.log_softmax(logits, dim=1) * dense).sum(dim=1).mean()
    torch.testing.assert_close(kl, kl_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll, nll_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, nll_hand + (betas * kl_hand).mean(), rtol=1e-5, atol=1e-5)
    assert kl[4] != 0 and step.kl_weights(x)[4] == (0.0 if gamma is not None else beta)
    # ... and so are the encoder's gradients (the prior's old encoder gets none).
    loss.backward()
    fused = {k: p.grad.clone() for k, p in net.encoder.named_parameters()}
    net.zero_grad()
    (nll_hand + (betas * kl_hand).mean()).backward()
    for k, p in net.encoder.named_parameters():
        torch.testing.assert_close(fused[k], p.grad, rtol=1e-4, atol=1e-6, msg=k)
    assert all(p.grad is None for p in trainee.prior.parameters())


def test_decoder_nll_samples_z_without_dropout_and_trains_only_the_decoder() -> None:
    m = random_csr(5, N_ITEMS, 0.3, 2)
    x = SparseRows.from_csr(m)
    net = seeded_net(dropout=0.5)
    trainee = RecVAEWithPrior(net)
    nll = trainee.decoder_nll(x, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # ε only: no dropout mask is drawn
    dense = torch.from_numpy(m.toarray())
    mu, logvar = hand_encoder(net.encoder, dense / dense.norm(dim=1, keepdim=True))
    z = mu + torch.randn(mu.shape, generator=g) * torch.exp(0.5 * logvar)
    logits = z @ net.decoder.weight.T + net.decoder.bias
    expected = -(torch.log_softmax(logits, dim=1) * dense).sum(dim=1).mean()
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)
    nll.backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.decoder.parameters())



# --------------------------------------------------------------------------- alternating updates


def test_each_phase_trains_one_half_and_the_prior_refreshes_in_between(
    dataset: Dataset, monkeypatch
) -> None:
    net = seeded_net()
    trainee = RecVAEWithPrior(net)
    step = RecVAEStep(trainee, lr=1e-2)
    start = {"encoder": clone(net.encoder), "decoder": clone(net.decoder)}
    seen: list[dict] = []
    real_refresh = CompositePrior.refresh

    def spy(self, encoder) -> None:  # noqa: ANN001
        seen.append(
            {
                "encoder": clone(net.encoder),
                "decoder": clone(net.decoder),
                "decoder_grads": [p.grad for p in net.decoder.parameters()],
                "steps": state.steps,
            }
        )
        real_refresh(self, encoder)

    monkeypatch.setattr(CompositePrior, "refresh", spy)
    state = TrainState()
    metrics = step.run(Epoch(dataset.train, 1, 5, 32, torch.device("cpu")), state)
    mid = seen[0]
    assert len(seen) == 1 and mid["steps"] == 3 * 3 and state.steps == 4 * 3
    # Encoder passes: the decoder is frozen (and not even given a gradient), the encoder moves.
    assert same(mid["decoder"], start["decoder"]) and not same(mid["encoder"], start["encoder"])
    assert mid["decoder_grads"] == [None, None]
    # Decoder pass: the encoder is frozen, the decoder moves.
    assert same(clone(net.encoder), mid["encoder"]) and not same(clone(net.decoder), mid["decoder"])
    # The old posterior is the encoder as the encoder passes left it.
    assert same(clone(trainee.prior.encoder), mid["encoder"])
    assert all(not p.requires_grad for p in trainee.prior.parameters())
    assert all(p.requires_grad for p in net.parameters())  # unfrozen after the epoch
    assert set(metrics) == {
        "train/loss", "train/nll", "train/kl", "train/beta", "train/decoder_loss"
    }
    users = dataset.train.shape[0]
    assert metrics["train/beta"] == pytest.approx(0.005 * dataset.train.sum() / users)
    assert all(math.isfinite(v) for v in metrics.values())


def test_the_old_posterior_is_refreshed_once_per_epoch(dataset: Dataset, monkeypatch) -> None:
    calls: list[tuple[dict, dict]] = []  # (old encoder before, new encoder) per refresh
    real_refresh = CompositePrior.refresh

    def spy(self, encoder) -> None:  # noqa: ANN001
        calls.append((clone(self.encoder), clone(encoder)))
        real_refresh(self, encoder)
        assert same(clone(self.encoder), clone(encoder))

    monkeypatch.setattr(CompositePrior, "refresh", spy)
    epochs: list[int] = []
    model = small(epochs=3).fit(dataset, callbacks=[lambda r: epochs.append(r.epoch)])
    assert epochs == [1, 2, 3] and len(calls) == 3
    initial = clone(small()._new_net(N_ITEMS).encoder)
    assert same(calls[0][0], initial)  # epoch 1's prior: the initial posterior
    for k in (1, 2):  # epoch k+1's prior: the encoder after epoch k's encoder passes, unchanged
        assert same(calls[k][0], calls[k - 1][1]) and not same(calls[k][1], calls[k - 1][1])
    assert model.best_epoch_ in (1, 2, 3)


class Crash(Exception):
    pass


def test_resume_after_a_crash_equals_the_uninterrupted_run(dataset: Dataset, tmp_path) -> None:
    reference = small(epochs=4, patience=3).fit(dataset)

    def crash(report: EpochReport) -> None:
        if report.epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        small(epochs=4, patience=3).fit(dataset, checkpoint_dir=tmp_path, callbacks=[crash])
    ckpt = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["state"]["epoch"] == 2 and set(ckpt["optimizers"]) == {"encoder", "decoder"}
    # The checkpoint holds the old posterior: the encoder after epoch 2.
    old = {k[len("prior.encoder.") :]: v for k, v in ckpt["net"].items() if k.startswith("prior.")}
    new = {k[len("net.encoder.") :]: v for k, v in ckpt["net"].items() if k.startswith("net.enc")}
    assert old and same(old, new)
    seen: list[int] = []
    resumed = small(epochs=4, patience=3).fit(
        dataset, checkpoint_dir=tmp_path, resume=True, callbacks=[lambda r: seen.append(r.epoch)]
    )
    assert seen == [3, 4]
    assert resumed.best_epoch_ == reference.best_epoch_
    assert without_timing(resumed.history_) == without_timing(reference.history_)
    assert same(clone(resumed.net_), clone(reference.net_))


def test_training_is_deterministic_for_a_seed(dataset: Dataset) -> None:
    a, b, c = small(epochs=1).fit(dataset), small(epochs=1).fit(dataset), small(epochs=1, seed=2)
    assert same(clone(a.net_), clone(b.net_))
    assert not same(clone(a.net_), clone(c.fit(dataset).net_))


# --------------------------------------------------------------------------- shapes, save, load


def test_registry_and_paper_defaults() -> None:
    assert model_class("recvae") is RecVAE
    m = RecVAE()
    assert (m.hidden_dim, m.encoder_layers, m.latent_dim, m.dropout) == (600, 5, 200, 0.5)
    assert (m.gamma, m.beta, m.encoder_passes, m.decoder_passes) == (0.005, None, 3, 1)
    assert (m.lr, m.batch_size, m.epochs) == (5e-4, 500, 50)
    assert m.prior_weights == pytest.approx((3 / 20, 3 / 4, 1 / 10))


def test_layer_shapes_and_init_follow_the_reference() -> None:
    net = RecVAE()._new_net(1000)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["encoder.input.weight"] == (1000, 600)
    assert [shapes[f"encoder.layers.{i}.weight"] for i in range(4)] == [(600, 600)] * 4
    assert [shapes[f"encoder.norms.{i}.weight"] for i in range(5)] == [(600,)] * 5
    assert shapes["encoder.head.weight"] == (400, 600)  # μ and log σ² side by side
    assert shapes["decoder.weight"] == (1000, 200) and shapes["decoder.bias"] == (1000,)
    assert len(shapes) == 2 + 8 + 10 + 2 + 2
    w = net.encoder.input.weight  # U(±1/√fan_in) with fan_in = the item count
    assert w.abs().max() <= 1 / math.sqrt(1000) and w.std() > 0.4 / math.sqrt(1000)
    assert net.decoder.weight.abs().max() <= 1 / math.sqrt(200)
    assert all(torch.equal(n.weight, torch.ones(600)) for n in net.encoder.norms)


def test_evaluation_uses_the_mean_and_no_dropout() -> None:
    net = seeded_net().eval()
    x = SparseRows.from_csr(random_csr(7, N_ITEMS, 0.2, 3))
    with torch.no_grad():
        a, b = net(x), net(x)
        mu, _ = net.encode(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, net.decoder(mu))


def test_fit_score_save_load(dataset: Dataset, tmp_path) -> None:
    model = small(epochs=2).fit(dataset)
    assert len(model.history_) == 2 and model.best_epoch_ in (1, 2)
    new_users = random_csr(9, N_ITEMS, 0.2, 42)
    scores = model.score(new_users)
    assert scores.shape == (9, N_ITEMS) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    model.save(tmp_path / "m")
    saved = load_arrays(tmp_path / "m" / "weights.npz")
    assert not any(k.startswith("prior") for k in saved)  # the old posterior is training state
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is RecVAE and loaded.params() == model.params()
    np.testing.assert_array_equal(loaded.score(new_users), scores)
    assert loaded.best_epoch_ == model.best_epoch_
    assert without_timing(loaded.history_) == without_timing(model.history_)  # saved without timings
    fixed = small(epochs=1, gamma=None, beta=0.2).fit(dataset)
    assert fixed.history_[0]["train/beta"] == pytest.approx(0.2)
    assert fixed.refit_params() == {"epochs": fixed.best_epoch_, "patience": None}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": -0.1}, "gamma"),
        ({"gamma": None, "beta": -1.0}, "beta"),
        ({"gamma": None}, "exactly one of gamma"),
        ({"beta": 0.2}, "exactly one of gamma"),
        ({"gamma": "abc"}, "gamma"),
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"encoder_layers": 0}, "encoder_layers"),
        ({"latent_dim": -2}, "latent_dim"),
        ({"encoder_passes": 0}, "encoder_passes"),
        ({"decoder_passes": 1.5}, "decoder_passes"),
        ({"dropout": 1.0}, "dropout"),
        ({"prior_weights": (0.5, 0.5)}, "prior_weights"),
        ({"prior_weights": (0.2, 0.2, 0.2)}, "prior_weights"),
        ({"prior_weights": (1.1, 0.0, -0.1)}, "prior_weights"),
        ({"prior_weights": "abc"}, "prior_weights"),
        ({"lr": 0.0}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"softmax": "sampled", "negatives": 0}, "negatives"),
    ],
)
def test_invalid_hyper_parameters_raise_one_line_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(RecvaeError, match=match) as info:
        small(**kwargs)
    assert "\n" not in str(info.value) and str(info.value).startswith("recvae: ")


def test_recvae_refuses_data_parallel_training(dataset: Dataset, monkeypatch) -> None:
    """RecVAE's halves are trained outside the loop's DDP-wrapped loss: in a process group the
    model refuses to be built, and the loop refuses its step (nothing would be all-reduced)."""
    from recvae import distributed

    assert RecVAE.trains_distributed is False
    step = small()._build_step(small()._new_net(N_ITEMS), 90)
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    with pytest.raises(RecvaeError, match=r"^recvae: trains in one process only.*2 processes"):
        small()
    with pytest.raises(RecvaeError, match=r"^recvae: RecVAEStep trains in one process only"):
        train(step, dataset.train, dataset.validation, TrainConfig(epochs=1, batch_size=32), name="recvae")


# --------------------------------------------------------------------------- through the CLI


def test_pipeline_refit_resume_and_cli_train(tmp_path: Path, capsys) -> None:
    from recvae.config import load_config
    from recvae.run.pipeline import run_pipeline

    params = {"epochs": 2, "batch_size": 100, "hidden_dim": 16, "latent_dim": 8}
    cfg = load_config(
        REPO / "pipelines" / "quickstart.yaml",
        {
            "data.path": str(REPO / "data" / "ml-latest-small.zip"),
            "data.out": str(tmp_path / "data"),
            "output_dir": str(tmp_path / "runs"),
            "models": [{"model": "recvae", "params": params}],
            "recommend.k": 5,
            "refit": True,
        },
    )
    first, = run_pipeline(cfg, track=False, show_progress=False)
    assert first.ok, first.error
    out = capsys.readouterr().out
    assert "[recvae] epoch   2" in out and "val NDCG@100" in out
    assert 1 <= first.refit_epochs <= 2 and first.metrics["test/ndcg_at_100"] > 0
    again, = run_pipeline(cfg, track=False, show_progress=False, resume=True)
    assert again.ok, again.error
    assert "[recvae] epoch" not in capsys.readouterr().out  # every epoch was in a checkpoint
    assert again.metrics["test/ndcg_at_100"] == first.metrics["test/ndcg_at_100"]
    # the fit and the refit report the seconds their checkpoints carried, not the resume's
    for name, seconds in (("recvae", again.fit_seconds), ("recvae.refit", again.refit_seconds)):
        saved = torch.load(Path(cfg.output_dir) / "checkpoints" / name / CHECKPOINT_FILE,
                           weights_only=True)["state"]
        assert seconds >= saved["seconds"] >= sum(h["epoch_seconds"] for h in saved["history"]) > 0

    argv = [
        "train", "--data", str(tmp_path / "data"), "--model", "recvae", "--out",
        str(tmp_path / "model"), "--epochs", "1", "--no-track", "--quiet",
        "--set", "hidden_dim=16", "--set", "gamma=null", "--set", "beta=0.3",
    ]
    assert cli.main(argv) == 0
    assert load_model(tmp_path / "model").beta == 0.3
    assert cli.main([*argv[:-4], "--set", "prior_weights=[0.5, 0.5]"]) == 2
    assert "prior_weights must be 3 numbers" in capsys.readouterr().err
