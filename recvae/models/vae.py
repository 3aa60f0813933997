"""Mult-VAE^PR and Mult-DAE: Liang, Krishnan, Hoffman & Jebara, "Variational Autoencoders for
Collaborative Filtering", WWW 2018 (reference code: ``VAE_ML20M_WWW2018.ipynb``).

A user's clicks x (a row over the item vocabulary) are L2-normalised, corrupted by dropout while
training, and encoded; the decoder's softmax over all items is the multinomial π(z), and training
maximises  Σ_j x_j log π_j(z) − β·KL(q(z|x) ‖ N(0, I))  (Mult-VAE^PR, Eq. 6 of the paper) or,
without the latent distribution, Σ_j x_j log π_j(h(x̃)) (Mult-DAE).

Cost: the input is sparse, so the first layer is a gather-and-sum over the observed items
(nnz·600 flops instead of n_items·600 per user); the loss is computed from the logits at the
observed items and a log-sum-exp, never from a dense x. What remains is one dense GEMM forward
and two backward for the decoder's output layer: the compute floor of the model. Measured on
2 CPU cores (benchmarks/train_speed.py): 67 s per ML-20M-shaped Mult-VAE epoch, 1.45× that
floor at the best decoder-shaped GEMM rate; peak memory 1.2 GB.

Example::

    model = MultVAE(epochs=50).fit(dataset)
    scores = model.score(dataset.test.fold_in[:500])   # (500, n_items) logits, float32
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from recvae.batching import row_batches
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.models.base import Callback, Recommender
from recvae.training import SparseRows, torch_threads, train_autoencoder

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,
}
WEIGHTS_FILE = "weights.pt"
TRAINING_FILE = "training.json"


# =========================================================================== modules


def corrupt(x: SparseRows, dropout: float, generator: torch.Generator | None) -> torch.Tensor:
    """The encoder's input values: each row L2-normalised, then (when training) dropout.

    Dropout keeps each observed item with probability 1 − p and rescales it by 1/(1 − p), as
    ``tf.nn.dropout`` after ``tf.nn.l2_normalize`` in the reference; unobserved items are zero
    either way, so only the nonzeros are touched. Pass ``generator=None`` for evaluation.
    """
    sq = torch.zeros(x.n_rows, device=x.values.device).index_add_(0, x.rows, x.values.square())
    values = x.values * sq.clamp_min(1e-12).rsqrt()[x.rows]  # tf.nn.l2_normalize's epsilon
    if generator is not None and dropout > 0:
        keep = torch.rand(values.shape, generator=generator, device=values.device) >= dropout
        values = values * keep / (1.0 - dropout)
    return values


class SparseLinear(nn.Module):
    """First encoder layer, x·W + b for sparse rows x: costs nnz·out flops, not n_items·out.

    ``embedding_bag`` sums the rows of W of each user's items, weighted by the input values.
    It beat ``torch.sparse.mm`` (CSR × dense) on ML-20M-shaped batches of 500 users: 21 ms vs
    44 ms for forward + weight gradient on 2 CPU cores (benchmarks/train_speed.py
    --compare-first-layer), and its backward needs no transposed sparse matrix.
    """

    def __init__(self, n_items: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_items, out_dim))  # one row per item
        self.bias = nn.Parameter(torch.empty(out_dim))

    def forward(self, x: SparseRows, values: torch.Tensor) -> torch.Tensor:
        return (
            F.embedding_bag(x.cols, self.weight, x.offsets, mode="sum", per_sample_weights=values)
            + self.bias
        )


class _MultinomialNLL(torch.autograd.Function):
    """Mean over rows of −Σ_j x_ij·log softmax(h·Wᵀ + b)_ij and its gradient, in one B×I buffer.

    −Σ_j x_ij log softmax_ij = n_i·logsumexp_i − Σ_j x_ij·logit_ij with n_i = Σ_j x_ij: only the
    logits at the observed items are gathered, so the dense x is never built. The gradient with
    respect to the logits is diag(n/B)·(P − diag(1/n)·X) with P = softmax: P overwrites the
    logits in place (the row-wise softmax kernel keeps each 80 kB row in cache), X touches only
    its nonzeros, and diag(n/B) is applied to the small B×H operands of the backward GEMMs
    instead of to the B×I matrix. Autograd through ``log_softmax`` would allocate and sweep
    several more B×I tensors, which on CPU costs a sizeable fraction of the GEMM time.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, rows, cols, values, counts):  # noqa: ANN001, ANN205
        n_rows = h.shape[0]
        logits = torch.addmm(bias, h, weight.t())  # the decoder's one dense GEMM
        observed = logits[rows, cols]
        top, argtop = logits.max(dim=1)
        if logits.is_cuda:
            probs = torch.softmax(logits, dim=1)
        else:  # in place: no second B×I buffer (and no fresh pages to fault in)
            probs = torch.ops.aten._softmax.out(logits, 1, False, out=logits)
        # log Σ_j exp(logit_ij) = max_i − log p(argmax_i); p(argmax) ≥ 1/n_items cannot underflow.
        log_norm = top - probs.gather(1, argtop.unsqueeze(1)).squeeze(1).log()
        x_logit = torch.zeros_like(counts).index_add_(0, rows, values * observed)
        nll = (counts * log_norm - x_logit).sum() / n_rows
        probs.index_put_((rows, cols), -values / counts.clamp_min(1e-30)[rows], accumulate=True)
        ctx.save_for_backward(h, weight, probs, counts / n_rows)
        return nll

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_nll):  # noqa: ANN001, ANN205
        h, weight, residual, scale = ctx.saved_tensors  # grad wrt logits = diag(scale)·residual
        scale = scale * grad_nll
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.mm(residual, weight).mul_(scale.unsqueeze(1))
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(residual.t(), h * scale.unsqueeze(1))
        if ctx.needs_input_grad[2]:
            grad_b = torch.mv(residual.t(), scale)
        return grad_h, grad_w, grad_b, None, None, None, None


class MultinomialOutput(nn.Module):
    """Decoder output layer: logits h·Wᵀ + b over all items; π = softmax(logits)."""

    def __init__(self, in_dim: int, n_items: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_items, in_dim))
        self.bias = nn.Parameter(torch.empty(n_items))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, h, self.weight.t())

    def nll(self, h: torch.Tensor, x: SparseRows) -> torch.Tensor:
        """Batch mean of −Σ_j x_j log π_j: the multinomial log-likelihood of Eq. 2, negated."""
        return _MultinomialNLL.apply(h, self.weight, self.bias, x.rows, x.cols, x.values, x.counts)


class Encoder(nn.Module):
    """Sparse input layer, then dense layers, with the activation between layers (and after the
    last one when ``final_activation``)."""

    def __init__(
        self, n_items: int, dims: Sequence[int], activation: str, final_activation: bool
    ) -> None:
        super().__init__()
        self.input = SparseLinear(n_items, dims[0])
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.act = ACTIVATIONS[activation]
        self.final_activation = final_activation

    def forward(self, x: SparseRows, values: torch.Tensor) -> torch.Tensor:
        h = self.input(x, values)
        for layer in self.layers:
            h = layer(self.act(h))
        return self.act(h) if self.final_activation else h


class Decoder(nn.Module):
    """Dense layers with the activation after each, then the multinomial output layer."""

    def __init__(self, dims: Sequence[int], n_items: int, activation: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.output = MultinomialOutput(dims[-1], n_items)
        self.act = ACTIVATIONS[activation]

    def hidden(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            z = self.act(layer(z))
        return z

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden(z))

    def nll(self, z: torch.Tensor, x: SparseRows) -> torch.Tensor:
        return self.output.nll(self.hidden(z), x)


class VAE(nn.Module):
    """Mult-VAE: q(z|x) = N(μ, diag σ²) from the encoder, p(x|z) = Mult(n, softmax(f(z)))."""

    def __init__(
        self,
        n_items: int,
        hidden_dims: Sequence[int],
        latent_dim: int,
        activation: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self.latent_dim, self.dropout = latent_dim, dropout
        # The encoder's last layer outputs μ and log σ² side by side, as the reference.
        self.encoder = Encoder(n_items, [*hidden_dims, 2 * latent_dim], activation, False)
        self.decoder = Decoder([latent_dim, *reversed(hidden_dims)], n_items, activation)

    def encode(
        self, x: SparseRows, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x, corrupt(x, self.dropout, generator))
        return h[:, : self.latent_dim], h[:, self.latent_dim :]

    def forward(self, x: SparseRows) -> torch.Tensor:
        """Logits for evaluation: no dropout, z = μ."""
        mu, _ = self.encode(x)
        return self.decoder(mu)

    def loss(self, x: SparseRows, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(−E_q[log p(x|z)] with one sample, KL(q(z|x) ‖ N(0, I))), both batch means.

        Draws the dropout mask, then ε, from ``generator``.
        """
        mu, logvar = self.encode(x, generator)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)  # reparameterization trick
        kl = (0.5 * (-logvar + logvar.exp() + mu.square() - 1.0)).sum(dim=1).mean()
        return self.decoder.nll(z, x), kl


class DAE(nn.Module):
    """Mult-DAE: a denoising autoencoder with the same multinomial likelihood and no KL term."""

    def __init__(
        self, n_items: int, hidden_dims: Sequence[int], activation: str, dropout: float
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.encoder = Encoder(n_items, hidden_dims, activation, True)
        self.decoder = Decoder(list(reversed(hidden_dims)), n_items, activation)

    def forward(self, x: SparseRows) -> torch.Tensor:
        """Logits for evaluation: the clean (normalised, not dropped-out) input."""
        return self.decoder(self.encoder(x, corrupt(x, self.dropout, None)))

    def loss(self, x: SparseRows, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(−Σ_j x_j log π_j(x̃) as a batch mean, 0): the dropout mask comes from ``generator``."""
        h = self.encoder(x, corrupt(x, self.dropout, generator))
        return self.decoder.nll(h, x), h.new_zeros(())


def init_weights(net: nn.Module, generator: torch.Generator) -> None:
    """Glorot-uniform weight matrices and N(0, 0.001²) biases truncated at 2σ, as the reference's
    ``xavier_initializer`` and ``truncated_normal_initializer(stddev=0.001)``."""
    for p in net.parameters():
        if p.ndim >= 2:
            nn.init.xavier_uniform_(p, generator=generator)
        else:
            nn.init.trunc_normal_(p, std=0.001, a=-0.002, b=0.002, generator=generator)


# =========================================================================== recommenders


@dataclass
class _Autoencoder(Recommender):
    """fit / score / save / load and the hyper-parameters shared by :class:`MultVAE` and
    :class:`MultDAE` (defaults: Mult-VAE's; documented there)."""

    hidden_dims: tuple[int, ...] = (600,)
    activation: str = "tanh"
    dropout: float = 0.5
    lr: float = 1e-3
    batch_size: int = 500
    epochs: int = 200
    weight_decay: float = 0.0
    seed: int = 98765
    device: str = "auto"
    patience: int | None = None
    eval_batch_size: int = 2000
    threads: int | None = None

    net_: nn.Module | None = field(default=None, init=False, repr=False)
    history_: list[dict[str, float]] = field(default_factory=list, init=False, repr=False)
    best_epoch_: int | None = field(default=None, init=False, repr=False)

    # ---------------------------------------------------------------- to define
    def _build_net(self, n_items: int) -> nn.Module:
        raise NotImplementedError

    def _kl_schedule(self) -> tuple[float, int]:
        """(anneal_cap, total_anneal_steps); no KL term by default."""
        return 0.0, 0

    # ---------------------------------------------------------------- validation
    def __post_init__(self) -> None:
        try:
            dims = tuple(self.hidden_dims)
        except TypeError:
            raise RecvaeError(
                f"{self.name}: hidden_dims must be a list of positive integers, got "
                f"{self.hidden_dims!r}"
            ) from None
        for d in dims:
            _check_int(self.name, "hidden_dims", d, minimum=1)
        self.hidden_dims = tuple(int(d) for d in dims)
        _check_int(self.name, "batch_size", self.batch_size, minimum=1)
        _check_int(self.name, "epochs", self.epochs, minimum=1)
        _check_int(self.name, "eval_batch_size", self.eval_batch_size, minimum=1)
        _check_int(self.name, "seed", self.seed, minimum=0)
        if self.patience is not None:
            _check_int(self.name, "patience", self.patience, minimum=1)
        if self.threads is not None:
            _check_int(self.name, "threads", self.threads, minimum=1)
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise RecvaeError(f"{self.name}: dropout must be in [0, 1), got {self.dropout!r}")
        if not _is_real(self.lr) or not (self.lr > 0 and math.isfinite(self.lr)):
            raise RecvaeError(f"{self.name}: lr must be a positive number, got {self.lr!r}")
        if not _is_real(self.weight_decay) or not 0.0 <= self.weight_decay < math.inf:
            raise RecvaeError(f"{self.name}: weight_decay must be ≥ 0, got {self.weight_decay!r}")
        if self.activation not in ACTIVATIONS:
            raise RecvaeError(
                f"{self.name}: unknown activation {self.activation!r}: expected one of "
                f"{', '.join(ACTIVATIONS)}"
            )
        if not isinstance(self.device, str) or not re.fullmatch(
            r"auto|cpu|cuda(:\d+)?", self.device
        ):
            raise RecvaeError(
                f"{self.name}: unknown device {self.device!r}: expected 'auto', 'cpu', 'cuda' or "
                "'cuda:N'"
            )

    # ---------------------------------------------------------------- contract
    def fit(
        self,
        dataset: Dataset,
        *,
        callbacks: Sequence[Callback] = (),
        show_progress: bool = False,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
    ) -> _Autoencoder:
        """Train on ``dataset.train``, selecting the epoch of best validation NDCG@100.

        Each epoch's :class:`~recvae.models.base.EpochReport` carries ``train/loss`` (nll + β·KL),
        ``train/nll``, ``train/kl``, ``train/beta``, ``epoch_seconds`` and, when the validation
        part has targets, ``val/ndcg_at_100``, ``val/ndcg_at_20``, ``val/recall_at_20``,
        ``val/recall_at_50``, ``val/recall_full_at_20`` and ``val_seconds``. With
        ``checkpoint_dir`` a checkpoint is written after every epoch; ``resume=True`` continues
        from it exactly (or starts afresh when there is none).
        """
        train = dataset.train
        if not sp.issparse(train):
            raise RecvaeError(f"{self.name}: dataset.train must be a scipy CSR matrix")
        if train.shape[0] == 0 or train.nnz == 0:
            raise RecvaeError(
                f"{self.name}: the training matrix is empty ({train.shape[0]} users, "
                f"{train.nnz} interactions); check the dataset's split"
            )
        item_ids = np.asarray(dataset.item_ids)
        if len(item_ids) != train.shape[1]:
            raise RecvaeError(
                f"{self.name}: dataset has {len(item_ids)} item ids but its training matrix has "
                f"{train.shape[1]} columns"
            )
        device = resolve_device(self.device, strict=True, name=self.name)
        anneal_cap, total_anneal_steps = self._kl_schedule()
        with torch_threads(self.threads):
            net = self._new_net(train.shape[1]).to(device)
            result = train_autoencoder(
                net,
                train,
                dataset.validation,
                lr=self.lr,
                batch_size=self.batch_size,
                epochs=self.epochs,
                anneal_cap=anneal_cap,
                total_anneal_steps=total_anneal_steps,
                # The reference adds 2·λ·Σ‖W‖²/2 (tf's l2_loss halves) with λ = 0.01/batch_size
                # to the batch-mean loss: a per-user coefficient spread over the batch.
                l2=self.weight_decay / self.batch_size,
                seed=self.seed,
                device=device,
                patience=self.patience,
                eval_batch_size=self.eval_batch_size,
                callbacks=callbacks,
                show_progress=show_progress,
                checkpoint_dir=checkpoint_dir,
                resume=resume,
                fingerprint=self._fingerprint(item_ids, train),
                name=self.name,
            )
        self.net_ = net
        self.item_ids_ = item_ids
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        return self

    def _score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        """Logits (n_rows, n_items), float32: encoder without dropout, z = μ (no retraining)."""
        net = self._net()
        device = next(net.parameters()).device
        out = np.empty(fold_in.shape, dtype=np.float32)
        with torch_threads(self.threads), torch.no_grad():
            net.eval()
            for sl in row_batches(fold_in.shape[0], self.eval_batch_size):
                out[sl] = net(SparseRows.from_csr(fold_in[sl], device)).cpu().numpy()
        return out

    def _save_state(self, path: Path) -> None:
        net = self._net()
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path / WEIGHTS_FILE)
        training = {"best_epoch": self.best_epoch_, "history": self.history_}
        (path / TRAINING_FILE).write_text(json.dumps(training, indent=1) + "\n")

    def _load_state(self, path: Path) -> None:
        # A model trained on CUDA loads (and scores) on CPU where CUDA is absent.
        device = resolve_device(self.device, strict=False, name=self.name)
        state = torch.load(path / WEIGHTS_FILE, map_location=device, weights_only=True)
        net = self._new_net(self.n_items).to(device)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise RecvaeError(
                f"{path / WEIGHTS_FILE}: weights do not match a {self.name} with "
                f"{self.n_items} items and this config ({first})"
            ) from None
        net.eval()
        self.net_ = net
        if (path / TRAINING_FILE).is_file():
            training = json.loads((path / TRAINING_FILE).read_text())
            self.history_, self.best_epoch_ = training["history"], training["best_epoch"]

    # ---------------------------------------------------------------- helpers
    def _new_net(self, n_items: int) -> nn.Module:
        net = self._build_net(n_items)
        init_weights(net, torch.Generator().manual_seed(self.seed))
        return net

    def _net(self) -> nn.Module:
        self._check_fitted()
        if self.net_ is None:
            raise RecvaeError(f"{self.name}: model has no weights; call fit() or load() first")
        return self.net_

    def _fingerprint(self, item_ids: np.ndarray, train: sp.csr_matrix) -> dict[str, Any]:
        """What must not change between an interrupted run and its resumption."""
        free = {"epochs", "patience", "device", "threads", "eval_batch_size"}
        params = {k: v for k, v in self.params().items() if k not in free}
        digest = hashlib.sha256("\x1f".join(map(str, item_ids)).encode()).hexdigest()
        return {"model": self.name, **params, "item_digest": digest, "train_nnz": int(train.nnz)}


@dataclass
class MultVAE(_Autoencoder):
    """Mult-VAE^PR (Liang et al. 2018): defaults are the paper's ML-20M settings.

    Architecture I-600-200-600-I with tanh: ``hidden_dims`` are the encoder's hidden sizes (the
    decoder mirrors them; ``()`` gives I-200-I, Mult-DAE's shape with a latent z),
    ``latent_dim`` the size of z. ``dropout`` is the input drop
    probability while training; β rises by 1/``total_anneal_steps`` per gradient step up to
    ``anneal_cap``. ``weight_decay`` λ adds (λ/batch_size)·Σ‖W‖² to the batch-mean loss (the
    paper's Mult-VAE uses 0). ``patience`` stops after that many epochs without a better
    validation NDCG@100; ``device`` is ``auto`` (CUDA when present), ``cpu``, ``cuda`` or
    ``cuda:N``; ``threads`` defaults to the CPU cores available.

    Example::

        model = MultVAE(epochs=200).fit(dataset, checkpoint_dir="runs/ckpt/vae", resume=True)
        model.history_[-1]["val/ndcg_at_100"], model.best_epoch_
    """

    name: ClassVar[str] = "mult-vae"

    latent_dim: int = 200
    anneal_cap: float = 0.2
    total_anneal_steps: int = 200_000

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self.name, "latent_dim", self.latent_dim, minimum=1)
        _check_int(self.name, "total_anneal_steps", self.total_anneal_steps, minimum=0)
        if not _is_real(self.anneal_cap) or not 0.0 <= self.anneal_cap < math.inf:
            raise RecvaeError(f"{self.name}: anneal_cap must be ≥ 0, got {self.anneal_cap!r}")

    def _build_net(self, n_items: int) -> nn.Module:
        return VAE(n_items, self.hidden_dims, self.latent_dim, self.activation, self.dropout)

    def _kl_schedule(self) -> tuple[float, int]:
        return float(self.anneal_cap), int(self.total_anneal_steps)


@dataclass
class MultDAE(_Autoencoder):
    """Mult-DAE (Liang et al. 2018): defaults are the paper's ML-20M settings.

    Architecture I-200-I with tanh: ``hidden_dims`` are the encoder's sizes down to the code
    (the decoder mirrors them). ``weight_decay`` λ = 0.01 adds (λ/batch_size)·Σ‖W‖² on the
    weight matrices to the batch-mean loss, as the reference (``lam=0.01/batch_size``, loss +
    2·λ·Σ‖W‖²/2). Other fields as :class:`MultVAE`.

    Example::

        model = MultDAE(epochs=200, patience=20).fit(dataset)
    """

    name: ClassVar[str] = "mult-dae"

    hidden_dims: tuple[int, ...] = (200,)
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.hidden_dims:
            raise RecvaeError(f"{self.name}: hidden_dims needs at least one layer (the code)")

    def _build_net(self, n_items: int) -> nn.Module:
        return DAE(n_items, self.hidden_dims, self.activation, self.dropout)


# =========================================================================== helpers


def resolve_device(spec: str, *, strict: bool, name: str = "model") -> torch.device:
    """The torch device for ``auto`` / ``cpu`` / ``cuda[:N]``.

    ``strict`` (training) raises when CUDA is asked for but absent; otherwise (loading a saved
    model) it falls back to the CPU.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        index = device.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            if not strict:
                return torch.device("cpu")
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise RecvaeError(
                f"{name}: device={spec!r} but this machine has {found} CUDA device(s) "
                f"(torch {torch.__version__}); use device='cpu' or 'auto'"
            )
    return device


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_int(model: str, field_name: str, v: object, *, minimum: int) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        bound = "positive" if minimum == 1 else f"≥ {minimum}"
        raise RecvaeError(f"{model}: {field_name} must be a {bound} integer, got {v!r}")
