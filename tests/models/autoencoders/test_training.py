"""The shared training loop: KL annealing, best-epoch selection, early stopping, checkpoints,
exact resume, divergence handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import recvae.models.autoencoders.training as training
from recvae.data.dataset import Dataset, Part
from recvae.errors import RecvaeError
from recvae.evaluation import evaluate
from recvae.models.autoencoders.checkpoint import CHECKPOINT_FILE
from recvae.models.autoencoders.models import MultDAE, MultVAE
from recvae.models.autoencoders.nets import VAE, SparseRows
from recvae.models.autoencoders.training import epoch_seeds, kl_weight
from recvae.models.base import EpochReport
from tests.helpers import random_dataset

N_ITEMS = 50


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return random_dataset(100, 25, N_ITEMS, string_ids=False)


def vae(**kw) -> MultVAE:
    # 4 batches per epoch; β reaches the cap of 0.2 after 20 steps (epoch 5).
    args = dict(
        hidden_dims=(12,),
        latent_dim=4,
        epochs=4,
        batch_size=32,
        total_anneal_steps=100,
        device="cpu",
        threads=1,
        lr=3e-3,
    )
    return MultVAE(**{**args, **kw})


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.net_.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]


def scripted_validation(monkeypatch, values: list[float]) -> None:
    """Replace validation by a fixed sequence of NDCG@100 values, one per epoch."""
    it = iter(values)

    def fake(net, part, device, batch_size):
        return dict.fromkeys(training.VALIDATION_METRICS, 0.0) | {"ndcg_at_100": next(it)}

    monkeypatch.setattr(training, "validation_metrics", fake)


# --------------------------------------------------------------------------- schedule


def test_kl_weight_rises_linearly_to_the_cap() -> None:
    assert kl_weight(0, 0.2, 200_000) == 0.0
    assert kl_weight(1, 0.2, 200_000) == 1 / 200_000
    assert kl_weight(20_000, 0.2, 200_000) == pytest.approx(0.1)
    assert kl_weight(40_000, 0.2, 200_000) == pytest.approx(0.2)
    assert kl_weight(10**7, 0.2, 200_000) == 0.2
    assert kl_weight(5, 0.2, 0) == 0.2  # no annealing
    assert kl_weight(5, 0.0, 0) == 0.0  # Mult-DAE: no KL


def test_beta_counts_gradient_steps_across_epochs(dataset: Dataset) -> None:
    model = vae(epochs=3).fit(dataset)
    # 100 users / 32 per batch = 4 steps per epoch; β of the epoch's last step is reported.
    assert [h["train/beta"] for h in model.history_] == pytest.approx([3 / 100, 7 / 100, 11 / 100])
    capped = vae(epochs=2, total_anneal_steps=5, anneal_cap=0.3).fit(dataset)
    assert [h["train/beta"] for h in capped.history_] == pytest.approx([0.3, 0.3])
    for h in model.history_:
        assert h["train/loss"] == pytest.approx(
            h["train/nll"] + h["train/beta"] * h["train/kl"], rel=0.05
        )


def test_epoch_randomness_is_a_function_of_seed_and_epoch() -> None:
    a, b, c = epoch_seeds(1, 3), epoch_seeds(1, 3), epoch_seeds(1, 4)
    assert a[1] == b[1] != c[1]
    assert np.array_equal(a[0].permutation(10), b[0].permutation(10))


def test_dae_weight_decay_is_the_reference_l2_penalty(dataset: Dataset) -> None:
    """One Adam step on nll + (λ/batch)·Σ‖W‖² (weights only) equals what fit does."""
    wd, bs = 0.5, 128  # one batch holds all 100 users
    model = MultDAE(
        hidden_dims=(6,),
        epochs=1,
        batch_size=bs,
        weight_decay=wd,
        lr=0.01,
        device="cpu",
        threads=1,
        seed=3,
    )
    net = model._new_net(N_ITEMS)
    order, torch_seed = epoch_seeds(3, 1)
    x = SparseRows.from_csr(dataset.train[order.permutation(dataset.train.shape[0])])
    nll, _ = net.loss(x, torch.Generator().manual_seed(torch_seed))
    penalty = (wd / bs) * sum(p.square().sum() for p in net.parameters() if p.ndim == 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    (nll + penalty).backward()
    opt.step()
    model.fit(dataset)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(model.net_.state_dict()[k], v, rtol=1e-5, atol=1e-7, msg=k)


# --------------------------------------------------------------------------- selection


def test_best_epoch_weights_are_restored(dataset: Dataset, monkeypatch) -> None:
    reports: list[EpochReport] = []
    scripted_validation(monkeypatch, [0.1, 0.3, 0.2, 0.25])
    model = vae(epochs=4).fit(dataset, callbacks=[reports.append])
    assert [r.epoch for r in reports] == [1, 2, 3, 4]
    assert [r.is_best for r in reports] == [True, True, False, False]
    assert model.best_epoch_ == 2
    monkeypatch.undo()
    two_epochs = vae(epochs=2).fit(dataset)  # same seed: epochs 1–2 are the same run
    assert_same_state(state(model), state(two_epochs))


def test_final_model_scores_the_best_validation_ndcg(dataset: Dataset) -> None:
    model = vae(epochs=6, lr=0.05).fit(dataset)
    ndcgs = [h["val/ndcg_at_100"] for h in model.history_]
    assert model.best_epoch_ == int(np.argmax(ndcgs)) + 1
    final = evaluate(model.score, dataset.validation, ks=(20, 50, 100)).means["ndcg_at_100"]
    assert final == pytest.approx(max(ndcgs), abs=1e-9)


def test_early_stopping_after_patience_epochs(dataset: Dataset, monkeypatch) -> None:
    scripted_validation(monkeypatch, [0.5, 0.4, 0.45, 0.3, 0.9, 0.9])
    model = vae(epochs=6, patience=2).fit(dataset)
    assert len(model.history_) == 3 and model.best_epoch_ == 1


def test_without_validation_targets_the_last_epoch_is_kept(dataset: Dataset) -> None:
    empty = Part(
        dataset.validation.fold_in,
        sp.csr_matrix(dataset.validation.fold_in.shape, dtype=np.float32),
        dataset.validation.users,
    )
    ds = Dataset(
        dataset.train, dataset.train_users, empty, dataset.test, dataset.user_ids, dataset.item_ids
    )
    model = vae(epochs=2, patience=1).fit(ds)
    assert model.best_epoch_ == 2 and "val/ndcg_at_100" not in model.history_[-1]


# --------------------------------------------------------------------------- determinism & resume


def test_training_is_deterministic_for_a_seed(dataset: Dataset) -> None:
    a, b = vae(epochs=2).fit(dataset), vae(epochs=2).fit(dataset)
    assert_same_state(state(a), state(b))
    c = vae(epochs=2, seed=1).fit(dataset)
    assert not torch.equal(state(a)["decoder.output.weight"], state(c)["decoder.output.weight"])


class Crash(Exception):
    pass


def crash_at(epoch: int):
    def callback(report: EpochReport) -> None:
        if report.epoch == epoch:
            raise Crash

    return callback


@pytest.mark.parametrize(
    "factory",
    [
        vae,
        lambda **kw: MultDAE(
            hidden_dims=(8,), epochs=4, batch_size=32, device="cpu", threads=1, **kw
        ),
    ],
)
def test_resume_after_interruption_equals_uninterrupted_run(
    factory, dataset: Dataset, tmp_path
) -> None:
    reference = factory(patience=3).fit(dataset)
    with pytest.raises(Crash):
        factory(patience=3).fit(dataset, checkpoint_dir=tmp_path, callbacks=[crash_at(2)])
    killed = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["state"]
    assert killed["epoch"] == 2
    # the killed process's seconds travel in the checkpoint: at least its epochs' own times
    epochs_own = sum(h["epoch_seconds"] + h.get("val_seconds", 0.0) for h in killed["history"])
    assert killed["seconds"] >= epochs_own > 0
    seen: list[int] = []
    resumed = factory(patience=3).fit(
        dataset, checkpoint_dir=tmp_path, resume=True, callbacks=[lambda r: seen.append(r.epoch)]
    )
    assert seen == [3, 4]
    assert resumed.resumed_seconds_ == killed["seconds"] and reference.resumed_seconds_ == 0.0
    assert resumed.best_epoch_ == reference.best_epoch_
    assert without_timing(resumed.history_) == without_timing(reference.history_)
    assert_same_state(state(resumed), state(reference))
    # Resuming a finished run trains no more and restores the same best weights.
    again = factory(patience=3).fit(
        dataset, checkpoint_dir=tmp_path, resume=True, callbacks=[lambda r: seen.append(r.epoch)]
    )
    assert seen == [3, 4]
    assert_same_state(state(again), state(reference))
    finished = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["state"]
    assert again.resumed_seconds_ == finished["seconds"] > killed["seconds"]


def test_resume_can_extend_the_number_of_epochs(dataset: Dataset, tmp_path) -> None:
    vae(epochs=2).fit(dataset, checkpoint_dir=tmp_path)
    extended = vae(epochs=3).fit(dataset, checkpoint_dir=tmp_path, resume=True)
    assert_same_state(state(extended), state(vae(epochs=3).fit(dataset)))


def test_a_checkpoint_without_a_seconds_count_resumes_with_its_epochs_times(
    dataset: Dataset, tmp_path
) -> None:
    vae(epochs=2).fit(dataset, checkpoint_dir=tmp_path)
    ckpt = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    del ckpt["state"]["seconds"], ckpt["state"]["resumed_seconds"]  # as recvae wrote it before
    torch.save(ckpt, tmp_path / CHECKPOINT_FILE)
    resumed = vae(epochs=2).fit(dataset, checkpoint_dir=tmp_path, resume=True)
    own = sum(h["epoch_seconds"] + h["val_seconds"] for h in ckpt["state"]["history"])
    assert resumed.resumed_seconds_ == pytest.approx(own) and own > 0


def test_resume_without_a_checkpoint_starts_afresh(dataset: Dataset, tmp_path) -> None:
    model = vae(epochs=1).fit(dataset, checkpoint_dir=tmp_path / "new", resume=True)
    assert_same_state(state(model), state(vae(epochs=1).fit(dataset)))
    assert (tmp_path / "new" / CHECKPOINT_FILE).is_file()


def test_resume_refuses_a_checkpoint_of_another_run(dataset: Dataset, tmp_path) -> None:
    vae(epochs=1).fit(dataset, checkpoint_dir=tmp_path)
    with pytest.raises(RecvaeError, match="lr"):
        vae(epochs=2, lr=0.01).fit(dataset, checkpoint_dir=tmp_path, resume=True)
    other_items = Dataset(
        dataset.train,
        dataset.train_users,
        dataset.validation,
        dataset.test,
        dataset.user_ids,
        np.arange(N_ITEMS) + 1000,
    )
    with pytest.raises(RecvaeError, match="item"):
        vae(epochs=2).fit(other_items, checkpoint_dir=tmp_path, resume=True)


def test_divergence_raises_and_keeps_the_last_good_checkpoint(
    dataset: Dataset, tmp_path, monkeypatch
) -> None:
    calls = {"n": 0}
    real_loss = VAE.loss

    def loss(self, x, generator):
        calls["n"] += 1
        nll, kl = real_loss(self, x, generator)
        return (nll * math.nan if calls["n"] > 4 else nll), kl  # epoch 2 diverges

    monkeypatch.setattr(VAE, "loss", loss)
    with pytest.raises(RecvaeError, match=r"epoch 2.*last good checkpoint \(epoch 1\)") as info:
        vae(epochs=3).fit(dataset, checkpoint_dir=tmp_path)
    assert "\n" not in str(info.value)
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["state"]["epoch"] == 1
    # A fresh run diverging at once leaves the older run's checkpoint alone and says so.
    with pytest.raises(RecvaeError, match=r"epoch 1.*no checkpoint of this run"):
        vae(epochs=3, lr=2e-3).fit(dataset, checkpoint_dir=tmp_path)
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["state"]["epoch"] == 1


def test_progress_bar_only_on_a_terminal(dataset: Dataset, capsys, monkeypatch) -> None:  # noqa: ANN001
    """A batch bar per epoch, labeled and cleared, on a terminal only; no bar over the epochs
    (the callbacks print one line per epoch)."""
    import io
    import sys

    vae(epochs=1).fit(dataset, show_progress=True)
    assert capsys.readouterr().err == ""  # a log file gets no bars

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    vae(epochs=2).fit(dataset, show_progress=True)
    shown = sys.stderr.getvalue()
    assert "epoch 1:" in shown and "epoch 2:" in shown and "batch" in shown
    assert "mult-vae" not in shown  # the epoch bar that went stale beside the epoch lines
    assert shown.endswith("\r")  # cleared (tqdm's leave=False)
