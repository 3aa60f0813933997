"""EDLAE (recvae/models/ease.py) and the memory guard EASE and EDLAE share.

The generic contract (fit, score, save/load round trip, planted clusters, empty matrix) runs for
both models in test_baselines.py; here: EDLAE's solution checked without our code, its p = 0
case against EASE, its parameters, the pipeline, and refusing a fit that cannot fit in memory.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import recvae.models.ease as ease_module
from recvae.cli import main
from recvae.data.dataset import Dataset, Part
from recvae.errors import RecvaeError
from recvae.models import load_model, memory, model_class
from recvae.models.ease import EASE, EDLAE, check_fit_memory, fit_memory_bytes
from tests.helpers import random_csr

REPO = Path(__file__).parents[2]


def dataset(n_users: int = 120, n_items: int = 25, density: float = 0.2, seed: int = 0) -> Dataset:
    x = random_csr(n_users, n_items, density, seed)
    evaluation = Part(fold_in=x[:20], holdout=random_csr(20, n_items, 0.1, seed + 1),
                      users=np.arange(20))
    return Dataset(
        train=x, train_users=np.arange(n_users), validation=evaluation, test=evaluation,
        user_ids=np.arange(n_users), item_ids=np.arange(n_items) * 3 + 1, manifest={},
    )


# ----------------------------------------------------------------- the solution
def constrained_ridge(x: np.ndarray, l2: float, p: float) -> np.ndarray:
    """argmin ‖X − XB‖² + Σ_i (λ + p/(1−p)·G_ii)·‖B_i·‖² subject to diag(B) = 0, solved column
    by column as the least-squares problem it is: column j regresses item j on the other items,
    with the item-wise ridge as extra rows (numpy's lstsq; no Gram matrix, no inverse)."""
    n = x.shape[1]
    ridge = l2 + p / (1 - p) * (x**2).sum(axis=0)
    b = np.zeros((n, n))
    for j in range(n):
        others = np.delete(np.arange(n), j)
        a = np.vstack([x[:, others], np.diag(np.sqrt(ridge[others]))])
        y = np.concatenate([x[:, j], np.zeros(n - 1)])
        b[others, j] = np.linalg.lstsq(a, y, rcond=None)[0]
    return b


@pytest.mark.parametrize("l2, p", [(3.0, 0.25), (0.5, 0.6), (20.0, 0.1)])
def test_edlae_equals_a_direct_constrained_least_squares_solve(l2, p):
    ds = dataset()
    model = EDLAE(l2=l2, dropout=p).fit(ds)
    assert model.B_.dtype == np.float32 and model.B_.shape == (25, 25)
    assert np.all(np.diag(model.B_) == 0)
    expected = constrained_ridge(ds.train.toarray().astype(np.float64), l2, p)
    np.testing.assert_allclose(model.B_, expected, rtol=1e-5, atol=1e-6)
    # the dropout penalty really changes the solution (else the test above proves little)
    assert np.abs(expected - constrained_ridge(ds.train.toarray().astype(np.float64), l2, 0.0)).max() > 1e-3


def test_edlae_is_the_expected_dropout_loss_minimizer():
    # Steck's derivation, checked by enumerating every dropout mask of a tiny X: B is stationary
    # (off the zero diagonal) for E‖X − (Δ∘X)B/(1−p)‖² + λ‖B‖², Δ_ui ~ Bernoulli(1 − p).
    x = np.array([[1, 1, 0, 1], [0, 1, 1, 0], [1, 0, 1, 1]], dtype=np.float64)
    p, l2 = 0.3, 0.5
    ds = dataset(n_users=3, n_items=4)
    ds.train = sp.csr_matrix(x.astype(np.float32))
    b = EDLAE(l2=l2, dropout=p).fit(ds).B_.astype(np.float64)
    grad = 2 * l2 * b
    for mask in itertools.product((0, 1), repeat=x.size):
        keep = np.array(mask, dtype=np.float64).reshape(x.shape)
        prob = (1 - p) ** keep.sum() * p ** (x.size - keep.sum())
        noisy = keep * x / (1 - p)
        grad += prob * -2 * noisy.T @ (x - noisy @ b)
    off_diagonal = ~np.eye(4, dtype=bool)
    assert np.abs(grad[off_diagonal]).max() < 1e-5


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_edlae_at_zero_dropout_is_ease_exactly(dtype):
    ds = dataset(n_users=300, n_items=60, seed=4)
    ease = EASE(l2=7.0, dtype=dtype).fit(ds)
    edlae = EDLAE(l2=7.0, dropout=0.0, dtype=dtype).fit(ds)
    assert np.array_equal(edlae.B_, ease.B_)
    assert not np.array_equal(EDLAE(l2=7.0, dropout=0.01, dtype=dtype).fit(ds).B_, ease.B_)


def test_edlae_defaults_are_the_papers_msd_setting_and_survive_save_load(tmp_path):
    model = model_class("edlae")()
    assert isinstance(model, EDLAE) and (model.l2, model.dropout) == (70.0, 0.25)
    ds = dataset()
    model = EDLAE(l2=5.0, dropout=0.4, dtype="float32").fit(ds)
    loaded = load_model(model.save(tmp_path / "edlae"))
    assert type(loaded) is EDLAE and loaded.params() == {"l2": 5.0, "dtype": "float32", "dropout": 0.4}
    np.testing.assert_array_equal(loaded.score(ds.test.fold_in), model.score(ds.test.fold_in))
    with pytest.raises(RecvaeError, match="holds a 'edlae' model, expected 'ease'"):
        EASE.load(tmp_path / "edlae")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dropout": 1.0}, r"edlae: dropout must be in \[0.0, 1.0\), got 1.0"),
        ({"dropout": -0.1}, "edlae: dropout must be"),
        ({"dropout": float("nan")}, "edlae: dropout must be"),
        ({"dropout": "0.3"}, "edlae: dropout must be"),
        ({"dropout": True}, "edlae: dropout must be"),
        ({"l2": -1.0}, "edlae: l2 must be a finite number ≥ 0"),
        ({"dtype": "float16"}, "edlae: unknown dtype 'float16'"),
    ],
)
def test_edlae_bad_parameters_fail_in_one_line(kwargs, match):
    with pytest.raises(RecvaeError, match=match) as info:
        EDLAE(**kwargs)
    assert "\n" not in str(info.value)


def test_edlae_not_positive_definite_names_the_model():
    ds = dataset()
    ds.train = sp.csr_matrix(ds.train.multiply(np.arange(25) > 0))  # item 0 has no users
    with pytest.raises(RecvaeError, match=r"edlae: .*not positive definite.*l2 > 0"):
        EDLAE(l2=0.0, dropout=0.5).fit(ds)


@pytest.mark.parametrize("block, chunk", [(7, 1 << 22), (2048, 40), (5, 13)])
def test_blocked_and_chunked_passes_agree_with_one_block(monkeypatch, block, chunk):
    # small BLOCK / CHUNK exercise the Gram blocks bounded by rows and by entries and the
    # chunked float64 → float32 compaction
    ds = dataset(n_users=200, n_items=45, seed=3)
    expected = ease_module.ease_weights(ds.train, 5.0, np.dtype("float64"), dropout=0.3)
    monkeypatch.setattr(ease_module, "BLOCK", block)
    monkeypatch.setattr(ease_module, "CHUNK", chunk)
    blocks = ease_module.gram_blocks(ds.train)
    assert blocks[0][0] == 0 and blocks[-1][1] == 45 and len(blocks) > 1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    b = ease_module.ease_weights(ds.train, 5.0, np.dtype("float64"), dropout=0.3)
    assert b.dtype == np.float32 and b.flags.c_contiguous
    np.testing.assert_allclose(b, expected, atol=1e-6)


# ----------------------------------------------------------------- through the CLI
def test_recvae_train_edlae(tmp_path, capsys):
    data = dataset(n_users=150, n_items=30).save(tmp_path / "data")
    out = tmp_path / "models" / "edlae"
    code = main(["train", "--data", str(data), "--model", "edlae", "--set", "dropout=0.33",
                 "--set", "l2=70", "--out", str(out), "--no-track", "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "edlae" in stdout and f"saved {out}" in stdout
    model = load_model(out)
    assert isinstance(model, EDLAE) and (model.dropout, model.l2) == (0.33, 70)
    meta = json.loads((out / "recvae_model.json").read_text())
    assert meta["model"] == "edlae" and meta["params"]["dropout"] == 0.33


def test_recvae_train_edlae_bad_dropout_exits_2(tmp_path, capsys):
    data = dataset().save(tmp_path / "data")
    code = main(["train", "--data", str(data), "--model", "edlae", "--set", "dropout=1.5",
                 "--out", str(tmp_path / "m"), "--no-track"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "recvae: error: model 'edlae'.params: edlae: dropout must be in [0.0, 1.0), got 1.5"
    ]
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------- the memory guard
@pytest.mark.parametrize("cls", [EASE, EDLAE])
def test_a_fit_that_cannot_fit_is_refused_before_allocating(monkeypatch, cls):
    ds = dataset(n_users=200, n_items=50)
    need = fit_memory_bytes(ds.train, np.dtype("float64"))
    monkeypatch.setattr(memory, "available_bytes", lambda: need - 1)

    def no_allocation(*args, **kwargs):
        raise AssertionError("the Gram matrix was allocated")

    monkeypatch.setattr(ease_module, "gram", no_allocation)
    with pytest.raises(RecvaeError) as info:
        cls(l2=10.0).fit(ds)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{cls.name}: needs ≈ ")
    assert f"{memory.format_bytes(need)} of memory (a dense 50 × 50 float64 matrix)" in message
    assert f"only {memory.format_bytes(need - 1)} is available" in message
    assert "dtype: float32" in message and "mult-vae" in message and "softmax: sampled" in message


def test_the_guard_lets_a_fit_through_when_it_fits_or_cannot_tell(monkeypatch):
    ds = dataset()
    need = fit_memory_bytes(ds.train, np.dtype("float32"))
    monkeypatch.setattr(memory, "available_bytes", lambda: need)
    assert EDLAE(l2=10.0, dtype="float32").fit(ds).B_ is not None
    monkeypatch.setattr(memory, "available_bytes", lambda: None)  # not Linux: no check
    check_fit_memory("ease", ds.train, np.dtype("float64"))


def test_the_guard_message_without_a_float32_hint(monkeypatch):
    ds = dataset()
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    with pytest.raises(RecvaeError, match=r"ease: needs .* float32 matrix\), but only 1\.0 kB") as info:
        check_fit_memory("ease", ds.train, np.dtype("float32"))
    assert "dtype: float32 (" not in str(info.value)


def test_the_estimate_counts_the_dense_matrix_and_the_temporaries():
    x = random_csr(1000, 300, 0.05, 0)
    f64, f32 = fit_memory_bytes(x, np.dtype("float64")), fit_memory_bytes(x, np.dtype("float32"))
    assert f64 > 300 * 300 * 8 and f32 > 300 * 300 * 4 and f64 > f32
    # the sparse copies grow with the interactions, the dense part does not
    denser = random_csr(1000, 300, 0.2, 0)
    assert fit_memory_bytes(denser, np.dtype("float32")) > f32


def test_the_guard_in_recvae_train_exits_2(tmp_path, capsys, monkeypatch):
    data = dataset().save(tmp_path / "data")
    monkeypatch.setattr(memory, "available_bytes", lambda: 10_000)
    code = main(["train", "--data", str(data), "--model", "ease", "--out", str(tmp_path / "m"),
                 "--no-track"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("recvae: error:")]
    assert "ease: needs ≈" in line and "is available" in line and "mult-vae" in line


@pytest.mark.slow
def test_the_estimate_bounds_the_measured_peak_rss(tmp_path):
    # the benchmark fits 4,000 items in a fresh process and measures its peak RSS (VmHWM)
    out = tmp_path / "memory.json"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ease_memory.py"), "--items", "4000",
         "--dtypes", "float64", "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    [row] = json.loads(out.read_text())["rows"]
    assert row["finite"] and row["measured_mb"] > row["dense_mb"]
    # never below the real peak (the guard would let an OOM through); not wildly above it
    assert 1.0 <= row["estimate/measured"] <= 1.6, row
