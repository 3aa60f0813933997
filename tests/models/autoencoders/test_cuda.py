"""The CUDA path: training and scoring on a GPU against the CPU, the device-resident training
rows, the sampled softmax and the reduced precisions there. ``pytest -m cuda`` selects these
(``benchmarks/gpu.sh`` does); without a CUDA device they are skipped, except the CPU variants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recvae.models.autoencoders.models import MultDAE, MultVAE
from recvae.models.autoencoders.nets import DeviceCsr, SparseRows
from tests.models.autoencoders.test_ddp_training import make_dataset

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
cuda = [pytest.mark.cuda, needs_cuda]


def dae(**kw) -> MultDAE:
    """No dropout: no training noise, so the CPU and the GPU see the same batches and losses."""
    args = dict(hidden_dims=(16,), dropout=0.0, epochs=4, batch_size=100, lr=3e-3, threads=1)
    return MultDAE(**{**args, **kw})


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_batches_gathered_on_the_device_equal_host_batches(device: str) -> None:
    ds = make_dataset()
    idx = np.array([5, 3, 399, 7, 0])
    got = DeviceCsr(ds.train, device).rows(idx)
    want = SparseRows.from_csr(ds.train[idx], device)
    assert got.n_rows == want.n_rows
    for field in ("offsets", "rows", "cols", "values", "counts"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field


@pytest.mark.cuda
@needs_cuda
def test_training_on_cuda_equals_the_cpu() -> None:
    """Same batches, no noise: only the GEMM libraries' summation orders differ (MKL/oneDNN vs
    cuBLAS, float32; TF32 is off by default), ~1e-6 relative per step."""
    ds = make_dataset()
    cpu, gpu = dae(device="cpu").fit(ds), dae(device="cuda").fit(ds)
    for a, b in zip(gpu.history_, cpu.history_, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
        assert a["val/ndcg_at_100"] == pytest.approx(b["val/ndcg_at_100"], abs=2e-3)
    for k, v in cpu.net_.state_dict().items():
        torch.testing.assert_close(gpu.net_.state_dict()[k].cpu(), v, rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.cuda
@needs_cuda
def test_scoring_on_cuda_equals_the_cpu() -> None:
    ds = make_dataset()
    model = dae(device="cpu", epochs=2).fit(ds)
    on_cpu = model.score(ds.test.fold_in)
    model.net_.to("cuda")
    np.testing.assert_allclose(model.score(ds.test.fold_in), on_cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("softmax", ["full", "sampled"])
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_softmax_and_precision_on_cuda(softmax: str, precision: str) -> None:
    """Every combination trains to the validation NDCG@100 of float32 with the full softmax,
    within 0.02 (this log's seed-to-seed spread is about 0.01)."""
    ds = make_dataset()

    def best(**kw) -> float:
        model = MultVAE(hidden_dims=(24,), latent_dim=8, epochs=6, batch_size=100, lr=3e-3,
                        device="cuda", negatives=20, **kw).fit(ds)
        assert all(np.isfinite(h["train/loss"]) for h in model.history_)
        return max(h["val/ndcg_at_100"] for h in model.history_)

    assert best(softmax=softmax, precision=precision) == pytest.approx(best(), abs=0.02)
