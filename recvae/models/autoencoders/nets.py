"""The autoencoders' networks: Mult-VAE^PR and Mult-DAE of Liang, Krishnan, Hoffman & Jebara,
"Variational Autoencoders for Collaborative Filtering", WWW 2018 (reference code:
``VAE_ML20M_WWW2018.ipynb``), RecVAE of Shenbin et al., WSDM 2020 (reference code:
``ilya-shenbin/RecVAE``, ``model.py``), and the pieces every network of the family shares: a
batch of sparse rows, the sparse input layer and the fused multinomial output layer.

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

Large catalogues: with a :class:`NegativeSampler` set on the output layer (``softmax: sampled``)
the softmax runs over the batch's items plus S shared negatives instead of all items, so a batch
costs B × (items in the batch + S) instead of B × n_items, and the item-indexed matrices (the
sparse input layer, the output layer) can take row-sparse gradients (``sparse_grad``).

Example::

    net = VAE(n_items, hidden_dims=(600,), latent_dim=200, activation="tanh", dropout=0.5)
    nll, kl = net.loss(SparseRows.from_csr(train[:500]), generator)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,
}


# =========================================================================== batches


@dataclass
class SparseRows:
    """A batch of user rows as tensors on one device: ``x[rows[e], cols[e]] = values[e]``.

    ``offsets[r]`` is where row r's entries start (the layout ``embedding_bag`` wants);
    ``counts[r]`` is the row's total ``Σ_j x_rj`` (the multinomial's number of draws).
    """

    n_rows: int
    offsets: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def from_csr(cls, m: sp.csr_matrix, device: torch.device | str = "cpu") -> SparseRows:
        """The rows of a CSR matrix (any number of rows; the whole matrix is never densified)."""
        m = m.tocsr()
        indptr = m.indptr.astype(np.int64)
        n_rows = m.shape[0]
        rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(indptr))
        values = np.asarray(m.data, dtype=np.float32)
        counts = np.bincount(rows, weights=values, minlength=n_rows)

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True)

        return cls(
            n_rows=n_rows,
            offsets=put(indptr[:-1]),
            rows=put(rows),
            cols=put(m.indices.astype(np.int64)),
            values=put(values),
            counts=put(counts.astype(np.float32)),
        )


class DeviceCsr:
    """A CSR matrix kept on a device, whose batches of rows are gathered there.

    On a GPU, slicing rows with scipy on the host and copying each batch over costs more than
    the training step itself (milliseconds per batch against a GEMM of ~0.5 ms), so the
    training rows move to the device once (12 bytes per interaction) and each batch is built
    with a few gathers. The host keeps ``indptr`` to size the batch without a device sync.
    """

    def __init__(self, m: sp.csr_matrix, device: torch.device | str) -> None:
        m = m.tocsr()
        self.device = torch.device(device)
        self.indptr_host = m.indptr.astype(np.int64)
        self.indptr = torch.from_numpy(self.indptr_host).to(self.device)
        self.indices = torch.from_numpy(m.indices.astype(np.int64)).to(self.device)
        self.data = torch.from_numpy(np.asarray(m.data, dtype=np.float32)).to(self.device)

    def rows(self, index: np.ndarray) -> SparseRows:
        """The rows ``index`` (host integers) as a batch, equal to ``SparseRows.from_csr(m[index])``."""
        index = np.asarray(index, dtype=np.int64)
        lengths_host = self.indptr_host[index + 1] - self.indptr_host[index]
        total = int(lengths_host.sum())
        n = len(index)
        lengths = torch.from_numpy(lengths_host).to(self.device)
        starts = self.indptr[torch.from_numpy(index).to(self.device)]
        offsets = torch.cumsum(lengths, 0) - lengths
        rows = torch.repeat_interleave(
            torch.arange(n, device=self.device), lengths, output_size=total
        )
        pos = starts[rows] + torch.arange(total, device=self.device) - offsets[rows]
        values = self.data[pos]
        counts = torch.zeros(n, device=self.device).index_add_(0, rows, values)
        return SparseRows(n, offsets, rows, self.indices[pos], values, counts)


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


class _GatherRows(torch.autograd.Function):
    """``param[index]`` (rows of an item-indexed parameter) whose gradient touches only those rows.

    ``index`` holds distinct rows in increasing order. ``sparse``: the gradient is a sparse COO
    tensor of those rows, already coalesced (no sort in the optimizer), for lazy Adam;
    otherwise a dense gradient (zeros elsewhere) for a dense optimizer or an all-reduce that
    needs dense tensors.
    """

    @staticmethod
    def forward(ctx, param, index, sparse):  # noqa: ANN001, ANN205
        ctx.save_for_backward(index)
        ctx.shape, ctx.sparse = param.shape, sparse
        return param.index_select(0, index)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (index,) = ctx.saved_tensors
        if ctx.sparse:
            g = torch.sparse_coo_tensor(
                index.unsqueeze(0), grad, ctx.shape, is_coalesced=True, check_invariants=False
            )
        else:
            g = grad.new_zeros(ctx.shape).index_add_(0, index, grad)
        return g, None, None


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
        # A sparse COO gradient touching only the batch's item rows (for lazy Adam on large
        # catalogues); dense by default.
        self.sparse_grad = False

    def forward(self, x: SparseRows, values: torch.Tensor) -> torch.Tensor:
        if not self.sparse_grad:
            table, cols = self.weight, x.cols
        else:  # the batch's rows of W: their gradient is a coalesced sparse one
            items, cols = torch.unique(x.cols, return_inverse=True)
            table = _GatherRows.apply(self.weight, items, True)
        return (
            F.embedding_bag(cols, table, x.offsets, mode="sum", per_sample_weights=values)
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
        # Under autocast (precision: bf16) the GEMMs run in the low precision, but the bias, the
        # softmax over n_items and the loss stay in float32: a bf16 softmax loses the tail items.
        ctx.low, ctx.bias_dtype = autocast_dtype(h.device.type), bias.dtype
        if ctx.low is None:
            logits = torch.addmm(bias, h, weight.t())  # the decoder's one dense GEMM
        else:
            logits = torch.mm(h, weight.t()).float().add_(bias)
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
        low = ctx.low or residual.dtype  # the backward GEMMs in the forward's precision
        r = residual.to(low)
        if ctx.needs_input_grad[0]:
            grad_h = torch.mm(r, weight.to(low)).float().mul_(scale.unsqueeze(1)).to(h.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(r.t(), (h.float() * scale.unsqueeze(1)).to(low)).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = torch.mv(residual.t(), scale).to(ctx.bias_dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast casts matrix products to on ``device_type``, or None when it is off."""
    try:
        on = torch.is_autocast_enabled(device_type)
        return torch.get_autocast_dtype(device_type) if on else None
    except TypeError:  # torch < 2.4 has one function per device type
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


class NegativeSampler:
    """S negatives per batch, shared by its rows, drawn with replacement from q_j ∝ n_j^α.

    ``popularity`` n_j is each item's count of training users (at least 1, so that every item
    can be drawn); α = 0.75 flattens the unigram distribution as word2vec's negative sampling
    does. The draws come from the batch's generator, so they are a function of (seed, epoch)
    and resume stays exact.
    """

    def __init__(
        self, popularity: np.ndarray, n_negatives: int, alpha: float,
        device: torch.device | str = "cpu",
    ) -> None:
        q = np.maximum(np.asarray(popularity, dtype=np.float64), 1.0) ** float(alpha)
        q /= q.sum()
        self.n_negatives = int(n_negatives)
        self.alpha = float(alpha)
        # float64: at 10^6 items the smallest q_j is far below float32's resolution of a CDF.
        self.cdf = torch.from_numpy(np.cumsum(q)).to(device)
        self.log_q = torch.from_numpy(np.log(q)).to(device)

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(distinct items drawn, how many times each was drawn): S draws in all."""
        u = torch.rand(self.n_negatives, generator=generator, dtype=torch.float64,
                       device=self.cdf.device)
        idx = torch.searchsorted(self.cdf, u, right=True).clamp_max_(len(self.cdf) - 1)
        return torch.unique(idx, return_counts=True)


class MultinomialOutput(nn.Module):
    """Decoder output layer: logits h·Wᵀ + b over all items; π = softmax(logits).

    Training uses the full softmax unless ``sampler`` is set (``softmax: sampled``); scoring
    (``forward``) is always exact, over all items.
    """

    def __init__(self, in_dim: int, n_items: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_items, in_dim))
        self.bias = nn.Parameter(torch.empty(n_items))
        self.sampler: NegativeSampler | None = None
        self.sparse_grad = False  # row-sparse gradients of weight and bias (sampled only)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, h, self.weight.t())

    def nll(
        self, h: torch.Tensor, x: SparseRows, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Batch mean of −Σ_j x_j log π_j: the multinomial log-likelihood of Eq. 2, negated.

        With a sampler the softmax's normaliser is estimated (see :meth:`sampled_nll`), drawing
        the negatives from ``generator``.
        """
        if self.sampler is None:
            return _MultinomialNLL.apply(
                h, self.weight, self.bias, x.rows, x.cols, x.values, x.counts
            )
        if generator is None:
            raise ValueError("the sampled softmax draws its negatives from the batch's generator")
        return self.sampled_nll(h, x, self.sampler, generator)

    def sampled_nll(
        self, h: torch.Tensor, x: SparseRows, sampler: NegativeSampler,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The multinomial NLL with Z_u = Σ_j exp(logit_uj) estimated from the batch's items and
        S shared negatives (sampled softmax with the logQ correction; FastVAE, Chen et al. WWW
        2022; Yi et al. RecSys 2019).

        Z_u splits into the items of the batch, P (every user's positives are among them),
        summed exactly, and the others, estimated by importance sampling from the S draws:
        Σ_{j∉P} exp(logit_uj) ≈ Σ_{distinct draws j∉P} (c_j / (S·q_j))·exp(logit_uj), c_j the
        times j was drawn. So each negative's logit gets the correction log c_j − log(S·q_j)
        and draws that fall in P are dropped: given P, the estimate of Z_u is unbiased. The
        fused loss then runs on B × (|P| + negatives) logits, and only the rows of W and b of
        those items receive a gradient.
        """
        items, inverse = torch.unique(x.cols, return_inverse=True)
        negatives, counts = sampler.draw(generator)
        outside = ~torch.isin(negatives, items)
        negatives, counts = negatives[outside], counts[outside]
        correction = counts.double().log() - math.log(sampler.n_negatives) - sampler.log_q[negatives]
        # in increasing order (the gradients are then coalesced); positives follow their items
        candidates, order = torch.sort(torch.cat([items, negatives]))
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order), device=order.device)
        offset = torch.cat([correction.new_zeros(len(items)), correction])[order].to(h.dtype)
        weight = _GatherRows.apply(self.weight, candidates, self.sparse_grad)
        bias = _GatherRows.apply(self.bias, candidates, self.sparse_grad) + offset
        cols = position[inverse]
        return _MultinomialNLL.apply(h, weight, bias, x.rows, cols, x.values, x.counts)


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

    def nll(
        self, z: torch.Tensor, x: SparseRows, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.output.nll(self.hidden(z), x, generator)


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
        return self.decoder.nll(z, x, generator), kl


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
        return self.decoder.nll(h, x, generator), h.new_zeros(())


def init_weights(net: nn.Module, generator: torch.Generator) -> None:
    """Glorot-uniform weight matrices and N(0, 0.001²) biases truncated at 2σ, as the reference's
    ``xavier_initializer`` and ``truncated_normal_initializer(stddev=0.001)``."""
    for p in net.parameters():
        if p.ndim >= 2:
            nn.init.xavier_uniform_(p, generator=generator)
        else:
            nn.init.trunc_normal_(p, std=0.001, a=-0.002, b=0.002, generator=generator)


# =========================================================================== RecVAE

LAYER_NORM_EPS = 0.1  # the reference's Encoder(eps=1e-1), far above LayerNorm's usual 1e-5
WIDE_PRIOR_LOGVAR = 10.0  # the prior's wide component N(0, e¹⁰·I) (the reference's "uniform")
PRIOR_WEIGHTS = (3 / 20, 3 / 4, 1 / 10)  # N(0, I), the old posterior, the wide normal
_LOG_2PI = math.log(2.0 * math.pi)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; μ, e^logvar), as the reference's ``log_norm_pdf``."""
    return -0.5 * (logvar + _LOG_2PI + (z - mu).square() / logvar.exp())


class ResidualEncoder(nn.Module):
    """RecVAE's q(z|x): the sparse input layer, then dense layers with swish and LayerNorm, each
    layer fed the sum of every earlier layer's output, then μ and log σ²:

        h₁ = LN(swish(W₁x + b₁)),   h_{k+1} = LN(swish(W_{k+1}h_k + b_{k+1} + h₁ + … + h_k)).

    With ``n_layers=5`` this is the reference's ``h3 = ln3(swish(fc3(h2) + h1 + h2))`` chain.
    The reference has separate μ and log σ² layers; one layer with 2·latent outputs is the same
    map in one GEMM. The input values are given (L2-normalised, maybe dropped out: ``corrupt``).
    """

    def __init__(self, n_items: int, hidden_dim: int, n_layers: int, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.input = SparseLinear(n_items, hidden_dim)
        self.layers = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(n_layers - 1))
        self.norms = nn.ModuleList(
            nn.LayerNorm(hidden_dim, eps=LAYER_NORM_EPS) for _ in range(n_layers)
        )
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)

    def forward(
        self, x: SparseRows, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norms[0](F.silu(self.input(x, values)))  # silu is swish: x·sigmoid(x)
        total = h  # h₁ + … + h_k
        for layer, norm in zip(self.layers, self.norms[1:], strict=True):
            h = norm(F.silu(layer(h) + total))
            total = total + h
        out = self.head(h)
        return out[:, : self.latent_dim], out[:, self.latent_dim :]


class RecVAENet(nn.Module):
    """RecVAE as it scores: the residual encoder q(z|x) and a one-layer decoder
    p(x|z) = Mult(n, softmax(Wz + b)). At evaluation z = μ and there is no dropout."""

    def __init__(
        self, n_items: int, hidden_dim: int, n_layers: int, latent_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.encoder = ResidualEncoder(n_items, hidden_dim, n_layers, latent_dim)
        self.decoder = MultinomialOutput(latent_dim, n_items)

    def encode(
        self, x: SparseRows, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of q(z|x); input dropout drawn from ``generator`` (none without one)."""
        return self.encoder(x, corrupt(x, self.dropout, generator))

    def forward(self, x: SparseRows) -> torch.Tensor:
        """Logits for evaluation: no dropout, z = μ."""
        mu, _ = self.encode(x)
        return self.decoder(mu)


class CompositePrior(nn.Module):
    """RecVAE's prior, per latent dimension:
    p(z|x) = w₁·N(0, I) + w₂·q_old(z|x) + w₃·N(0, e¹⁰·I), with weights 3/20, 3/4, 1/10.

    q_old is a frozen copy of the encoder, refreshed once per epoch after the encoder passes
    (:meth:`refresh`): the KL toward it keeps each epoch's posterior near the last one, which
    the paper credits for the stability of training without KL annealing; the wide normal
    keeps the mixture from penalising codes far from both.
    """

    def __init__(self, encoder: ResidualEncoder, weights: Sequence[float] = PRIOR_WEIGHTS) -> None:
        super().__init__()
        # The reference's old encoder starts as an independently initialised encoder, an
        # arbitrary distribution for epoch 1; a copy of the initial encoder is "the posterior
        # before the first epoch", which is what the prior means.
        self.encoder = copy.deepcopy(encoder).requires_grad_(False)
        log_weights = torch.tensor([float(w) for w in weights]).log()
        self.register_buffer("log_weights", log_weights, persistent=False)

    @torch.no_grad()
    def refresh(self, encoder: ResidualEncoder) -> None:
        """Make the old posterior the current ``encoder``'s."""
        for old, new in zip(self.encoder.parameters(), encoder.parameters(), strict=True):
            old.copy_(new)

    def log_prob(self, z: torch.Tensor, x: SparseRows) -> torch.Tensor:
        """log p(z|x) per user and latent dimension (B×L); the gradient reaches ``z`` only."""
        with torch.no_grad():  # the old posterior sees the clean input: encoder_old(x, 0)
            mu, logvar = self.encoder(x, corrupt(x, 0.0, None))
        z2 = z.square()
        components = torch.stack(
            [
                -0.5 * (_LOG_2PI + z2),
                log_normal(z, mu, logvar),
                -0.5 * (WIDE_PRIOR_LOGVAR + _LOG_2PI + z2 * math.exp(-WIDE_PRIOR_LOGVAR)),
            ],
            dim=-1,
        )
        return torch.logsumexp(components + self.log_weights, dim=-1)


class RecVAEWithPrior(nn.Module):
    """What RecVAE trains: the network (:attr:`net`) and its composite prior (:attr:`prior`).

    The prior's old encoder is training state: checkpoints hold it through this module's
    ``state_dict``, a saved model holds :attr:`net` alone. Calling the module scores with
    :attr:`net` (validation during training).
    """

    def __init__(self, net: RecVAENet, prior_weights: Sequence[float] = PRIOR_WEIGHTS) -> None:
        super().__init__()
        self.net = net
        self.prior = CompositePrior(net.encoder, prior_weights)

    def forward(self, x: SparseRows) -> torch.Tensor:
        return self.net(x)

    def encoder_terms(
        self, x: SparseRows, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(−log p(x|z) as a batch mean, the KL per user) at one z ~ q(z|x̃), x̃ dropped out.

        The KL is the reference's Monte-Carlo estimate Σ_d [log q(z_d|x) − log p(z_d|x)] at the
        sampled z (the mixture prior has no closed form). Draws the dropout mask, then ε (then
        the sampled softmax's negatives, with ``softmax: sampled``) from ``generator``.
        """
        mu, logvar = self.net.encode(x, generator)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
        # At z = μ + σ·ε, (z − μ)²/σ² is ε²: the same value and gradient as the reference's
        # log_norm_pdf(z, μ, log σ²), whose terms through z and through μ, σ cancel exactly.
        log_q = -0.5 * (logvar + _LOG_2PI + eps.square())
        kl = (log_q - self.prior.log_prob(z, x)).sum(dim=1)
        return self.net.decoder.nll(z, x, generator), kl

    def decoder_nll(self, x: SparseRows, generator: torch.Generator) -> torch.Tensor:
        """−log p(x|z) as a batch mean at one z ~ q(z|x), without dropout (the decoder passes).

        The encoder is frozen in these passes, so it runs without a graph, and the KL term is
        not computed at all: it does not depend on the decoder, so it has no gradient to give
        it (the reference computes it, and the old encoder's forward, and discards both).
        Draws ε (then any sampled-softmax negatives) from ``generator``.
        """
        with torch.no_grad():
            mu, logvar = self.net.encode(x)
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        return self.net.decoder.nll(z, x, generator)


def init_fan_in_uniform(net: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation, which the RecVAE reference keeps: each linear layer's
    weight and bias U(±1/√fan_in) (``nn.Linear.reset_parameters``), LayerNorm gain 1, shift 0."""
    for module in net.modules():
        if isinstance(module, nn.LayerNorm):
            module.reset_parameters()
            continue
        if isinstance(module, SparseLinear):  # one row per input: fan_in is the item count
            fan_in = module.weight.shape[0]
        elif isinstance(module, nn.Linear | MultinomialOutput):
            fan_in = module.weight.shape[1]
        else:
            continue
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(module.weight, -bound, bound, generator=generator)
        nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def set_softmax(net: nn.Module, sampler: NegativeSampler | None, *, sparse_grad: bool) -> None:
    """Train every :class:`MultinomialOutput` of ``net`` with ``sampler`` (None: the full
    softmax) and give the item-indexed matrices (those of the output layers and of every
    :class:`SparseLinear`) row-sparse gradients when ``sparse_grad``."""
    for module in net.modules():
        if isinstance(module, MultinomialOutput):
            module.sampler = sampler
            module.sparse_grad = sparse_grad and sampler is not None
        elif isinstance(module, SparseLinear):
            module.sparse_grad = sparse_grad


def row_sparse_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``net`` whose gradients are sparse COO tensors (see :func:`set_softmax`)."""
    out: list[nn.Parameter] = []
    for module in net.modules():
        if isinstance(module, MultinomialOutput) and module.sparse_grad:
            out += [module.weight, module.bias]
        elif isinstance(module, SparseLinear) and module.sparse_grad:
            out.append(module.weight)
    return out
