"""The one training loop of the autoencoders, and the step objects that say what an epoch does.

The loop (:func:`train`) owns what every model of the family shares: epochs numbered from 1,
randomness derived from ``(seed, epoch)``, validation NDCG@100 after each epoch, the best
epoch's weights, early stopping, an atomic checkpoint per epoch and exact resume, divergence
checks and the per-epoch callbacks. What happens inside an epoch belongs to a *step* object
(:class:`TrainingStep`): :class:`ElboStep` takes one Adam step per batch on ``nll + β·KL``
(Mult-VAE, Mult-DAE); :class:`RecVAEStep` alternates encoder and decoder passes (RecVAE).

Everything the loop must carry across a restart is one :class:`TrainState`, saved whole in
the checkpoint with the network and the step's optimizers. Because every epoch's randomness
(order, dropout masks, reparameterization noise, sampled negatives) comes only from
``(seed, epoch)``, a run resumed from a checkpoint reproduces the uninterrupted run exactly on
CPU.

Data-parallel training (``torchrun``, see :mod:`recvae.distributed`): every process runs this
loop; each takes its share of every batch of the epoch's permutation (:meth:`Epoch.passes`),
computes the loss through a ``DistributedDataParallel`` module (:meth:`Epoch.loss`), which
all-reduces the gradients, validates its share of the validation users, and rank 0 alone
checkpoints and calls the callbacks. ``batch_size`` is the global batch: two processes with
batch 500 take 250 users each per step, and the gradient equals the single-process one in
expectation (exactly, where training draws no noise).

Example::

    step = ElboStep(net, lr=1e-3, anneal_cap=0.2, total_anneal_steps=200_000)
    state = train(step, dataset.train, dataset.validation, TrainConfig(epochs=200))
    state.best_epoch, state.history[-1]["val/ndcg_at_100"]
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from recvae import distributed
from recvae.batching import row_batches
from recvae.data.dataset import Part
from recvae.errors import RecvaeError
from recvae.evaluation import evaluate
from recvae.models.autoencoders.checkpoint import (
    CHECKPOINT_FILE,  # noqa: F401 - tests/test_pipeline.py imports it from here
    Checkpointing,
    load_checkpoint,
    save_checkpoint,
)
from recvae.models.autoencoders.nets import (
    DeviceCsr,
    RecVAEWithPrior,
    SparseRows,
    row_sparse_parameters,
)
from recvae.models.autoencoders.optim import MixedAdam, adam_impl
from recvae.models.base import Callback, EpochReport

SELECTION_METRIC = "ndcg_at_100"  # model selection on validation NDCG@100, as the paper
SCORE_BUDGET = 1 << 26  # scores (floats) per validation batch: 256 MB
VALIDATION_METRICS = (
    "ndcg_at_100",
    "ndcg_at_20",
    "recall_at_20",
    "recall_at_50",
    "recall_full_at_20",
)


# --------------------------------------------------------------------------- schedule & RNG


def kl_weight(step: int, anneal_cap: float, total_anneal_steps: int) -> float:
    """β for the gradient step ``step`` (0-based, counted across epochs): KL annealing.

    Liang et al. raise β linearly from 0 and stop at ``anneal_cap`` (0.2 for Mult-VAE^PR).
    """
    if total_anneal_steps <= 0:
        return float(anneal_cap)
    return min(float(anneal_cap), step / total_anneal_steps)


def epoch_seeds(
    seed: int, epoch: int, part: int = 0, rank: int = 0
) -> tuple[np.random.Generator, int]:
    """The user-order generator and torch seed of pass ``part`` of an epoch, a pure function of
    ``(seed, epoch, part)`` (and, for the torch seed, of the process's ``rank``).

    Deriving them per epoch (instead of drawing from one stream) makes resume exact: a resumed
    run needs no RNG state from the interrupted one. ``part`` numbers the passes over the users
    within one epoch (RecVAE makes several); the single pass of Mult-VAE is part 0. Every rank
    of a distributed run gets the same order (each takes its share of it) and its own torch
    seed (its own dropout masks and noise); rank 0's is the single-process seed.
    """
    key = [int(seed), int(epoch)] + ([int(part)] if part else [])
    children = np.random.SeedSequence(key).spawn(2 + int(rank))
    order_ss, torch_ss = children[0], children[1 + int(rank)]
    return np.random.default_rng(order_ss), int(torch_ss.generate_state(1, np.uint64)[0] >> 1)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` intra-op threads (default: the cores this process may use,
    divided among the processes torchrun started on this machine)."""
    if n is None:
        n = distributed.default_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield int(n)
    finally:
        torch.set_num_threads(before)


PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def precision_scope(precision: str, device: torch.device) -> Iterator[None]:
    """Run the block's matrix products in ``precision`` (training only: validation and scoring
    stay float32, so that rankings are not decided by rounding).

    ``fp32``: float32 throughout. ``tf32``: float32 tensors, CUDA matrix products on TF32
    tensor cores (10-bit mantissa inputs, float32 accumulation; a no-op on CPUs). ``bf16``:
    autocast to bfloat16 for the products (the fused multinomial loss keeps its softmax and
    loss in float32); parameters, gradients and Adam's moments stay float32.
    """
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32" and device.type == "cuda":
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)
    else:
        yield


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Keep freed heap memory in the process for the block (glibc only; elsewhere a no-op).

    glibc serves blocks over 32 MB with fresh ``mmap`` pages and unmaps them on free, so each
    training step would fault in, zero and unmap its B×n_items logits and its n_items×600
    gradients again (~33k page faults per Mult-VAE step on ML-20M, 12 % of the step time).
    Serving them from a heap that is not trimmed lets a step reuse the previous step's pages
    (PyTorch's CPU allocator has no cache; jemalloc/tcmalloc via LD_PRELOAD do the same). The
    settings are restored and the heap trimmed afterwards.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        yield
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)  # a C int: trim only past 2 GB free
    try:
        yield
    finally:
        libc.mallopt(m_mmap_max, 65536)  # glibc's defaults
        libc.mallopt(m_trim_threshold, 128 * 1024)
        libc.malloc_trim(0)


# --------------------------------------------------------------------------- epochs & steps


@dataclass
class Epoch:
    """One epoch as a step sees it: the training rows, batches in a seeded random order, and the
    network's loss computed the way this run needs it (:meth:`loss`).

    In a distributed run (``world_size`` > 1) every process sees the same batches of
    ``batch_size`` users and trains on its ``rank``'s share of each.
    """

    train: sp.csr_matrix
    number: int
    seed: int
    batch_size: int
    device: torch.device
    show_progress: bool = False
    rank: int = 0
    world_size: int = 1
    objective: nn.Module | None = None  # Objective(net), wrapped in DDP when distributed
    on_device: DeviceCsr | None = None  # ``train`` kept on the device (GPUs), batches gathered there
    rows_seen: int = field(default=0, init=False)  # rows this process trained on, all passes
    # this process's rows × world_size / the batch's rows: 1 unless the batch splits unevenly
    grad_scale: float = field(default=1.0, init=False)

    def passes(self, part: int = 0) -> Iterator[tuple[SparseRows, torch.Generator]]:
        """Pass ``part`` over every training user: batches of rows with the generator that draws
        their training noise (dropout, reparameterization, negatives), both derived from the
        seed, the epoch and ``part`` (and the rank). Distributed: this process's contiguous share
        of each batch (shares differ by at most one row)."""
        n_users, world = self.train.shape[0], self.world_size
        order_rng, torch_seed = epoch_seeds(self.seed, self.number, part, self.rank)
        perm = order_rng.permutation(n_users)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(torch_seed)
        batches = list(row_batches(n_users, self.batch_size))
        if len(batches) > 1 and batches[-1].stop - batches[-1].start < world:
            # too few users left for one each: the previous batch takes them
            batches[-2:] = [slice(batches[-2].start, batches[-1].stop)]
        progress = tqdm(
            batches,
            desc=f"epoch {self.number}" + (f".{part}" if part else ""),
            unit="batch",
            leave=False,  # cleared when the epoch ends: the epoch's line is the callbacks' job
            # None: only on a terminal; one bar per run, rank 0's
            disable=None if self.show_progress and self.rank == 0 else True,
        )
        for sl in progress:
            n = sl.stop - sl.start
            lo, hi = sl.start + n * self.rank // world, sl.start + n * (self.rank + 1) // world
            self.grad_scale = world * (hi - lo) / n
            self.rows_seen += hi - lo
            x = (
                self.on_device.rows(perm[lo:hi]) if self.on_device is not None
                else SparseRows.from_csr(self.train[perm[lo:hi]], self.device)
            )
            yield x, generator

    def loss(self, x: SparseRows, generator: torch.Generator, *args: Any, **kwargs: Any) -> Any:
        """``net.loss(x, generator, *args, **kwargs)``, computed through the module that
        ``DistributedDataParallel`` wraps when distributed, so that its backward all-reduces the
        gradients: steps call this rather than ``net.loss``.

        The gradients of the returned batch means are scaled by :attr:`grad_scale`, so that
        DDP's average over processes is the gradient of the mean over the whole batch even when
        it splits unevenly (the values themselves are unchanged). The step's loss must be a
        linear combination of the returned tensors, as ``nll + β·KL`` is.
        """
        if self.objective is None:
            raise ValueError(f"epoch {self.number} has no objective: train() builds it")
        out = self.objective(x, generator, *args, **kwargs)
        if self.grad_scale == 1.0:
            return out
        if isinstance(out, torch.Tensor):
            return _ScaleGrad.apply(out, self.grad_scale)
        return type(out)(
            _ScaleGrad.apply(t, self.grad_scale) if isinstance(t, torch.Tensor) else t for t in out
        )


class Objective(nn.Module):
    """The training loss of ``net`` as a module's ``forward``: ``net.loss(x, generator, ...)``.

    ``DistributedDataParallel`` all-reduces the gradients of what its module's ``forward``
    returns; wrapping the network's ``loss`` this way leaves the networks' own ``forward``
    (evaluation logits) untouched, works for any step, and keeps the network's state_dict keys.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: SparseRows, generator: torch.Generator, *args: Any, **kwargs: Any) -> Any:
        return self.net.loss(x, generator, *args, **kwargs)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, t, scale):  # noqa: ANN001, ANN205
        ctx.scale = scale
        return t.view_as(t)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad * ctx.scale, None


class TrainingStep(Protocol):
    """What an epoch does to a network: the per-model part of training.

    ``net`` is trained in place; ``optimizers`` are saved in checkpoints by name. ``run``
    trains one epoch, advancing ``state.steps`` by the gradient steps it took, and returns the
    epoch's ``train/...`` metrics (``train/loss`` must be among them: the loop stops on a
    non-finite loss). It computes losses with ``epoch.loss(x, generator, ...)`` (which calls
    ``net.loss`` through DDP when distributed), never ``net.loss`` directly, and builds its
    optimizers with :class:`MixedAdam` where row-sparse gradients may occur.

    A step may set ``find_unused_parameters = False`` when every parameter that requires a
    gradient receives one in every batch (DDP then skips its search for unused ones); the
    default, True, is safe for steps that freeze parts of the network in some passes. A step
    that calls its network directly sets ``data_parallel = False``: the loop refuses to run it
    in a process group.
    """

    net: torch.nn.Module

    def optimizers(self) -> Mapping[str, torch.optim.Optimizer]: ...

    def run(self, epoch: Epoch, state: TrainState) -> dict[str, float]: ...


class ElboStep:
    """One Adam step per batch on ``nll + β·KL`` (Liang et al.): Mult-VAE, and Mult-DAE (KL 0).

    ``net.loss(x, generator)`` returns the batch means ``(nll, kl)``. β follows
    :func:`kl_weight` over the gradient steps. ``l2`` is the coefficient λ of a penalty
    ``λ·Σ‖W‖²`` on the weight matrices (not biases), added to the per-batch mean loss.
    """

    def __init__(
        self, net: torch.nn.Module, *, lr: float = 1e-3, anneal_cap: float = 0.0,
        total_anneal_steps: int = 0, l2: float = 0.0, variational: bool = True,
    ) -> None:
        self.net = net
        self.variational = variational  # False (Mult-DAE): no KL term, so no kl or β to report
        self.anneal_cap, self.total_anneal_steps, self.l2 = anneal_cap, total_anneal_steps, l2
        self.weights = [p for p in net.parameters() if p.ndim >= 2]
        self.optimizer = MixedAdam(net.parameters(), lr=lr, l2=l2, sparse=row_sparse_parameters(net))

    find_unused_parameters = False  # every parameter has a gradient in every batch

    def optimizers(self) -> Mapping[str, torch.optim.Optimizer]:
        return self.optimizer.optimizers("adam")

    def beta(self, step: int) -> float:
        return kl_weight(step, self.anneal_cap, self.total_anneal_steps)

    def run(self, epoch: Epoch, state: TrainState) -> dict[str, float]:
        self.net.train()
        sums = torch.zeros(3, dtype=torch.float64, device=epoch.device)  # Σ nll·B, kl·B, β·kl·B
        n = 0
        for x, generator in epoch.passes():
            b = self.beta(state.steps)
            nll, kl = epoch.loss(x, generator)
            loss = nll + b * kl if b else nll
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            state.steps += 1
            n += x.n_rows
            # Accumulated on the device: no host synchronisation per batch on GPUs.
            sums += torch.stack([nll.detach(), kl.detach(), b * kl.detach()]).double() * x.n_rows
        nll_mean, kl_mean, beta_kl_mean = (sums / max(n, 1)).tolist()
        metrics = {"train/loss": nll_mean + beta_kl_mean, "train/nll": nll_mean}
        if self.variational:
            metrics.update({"train/kl": kl_mean, "train/beta": self.beta(state.steps - 1)})
        if self.l2:
            metrics["train/l2_penalty"] = self.l2 * sum(
                float(w.detach().square().sum()) for w in self.weights
            )
        return metrics


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Run the block with ``module``'s parameters out of autograd: no gradient is computed for
    them (``_MultinomialNLL`` then skips its weight-gradient GEMM), none can reach them."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class RecVAEStep:
    """RecVAE's epoch (Shenbin et al. 2020, reference ``run.py``): ``encoder_passes`` passes
    over the users training the encoder (decoder frozen, input dropout), then the composite
    prior's old posterior is refreshed to the new encoder, then ``decoder_passes`` passes
    training the decoder (encoder frozen, no dropout). One Adam per half, as the reference.

    The encoder minimises ``nll + mean_u(β_u·KL_u)`` with β_u = ``gamma``·|x_u| (the user's
    number of interactions) or, with ``gamma=None``, a fixed ``beta``; the decoder minimises the
    nll alone (the KL has no gradient for it). Each pass is its own seeded :meth:`Epoch.passes`
    part (encoder passes 0…, then the decoder passes), so a resumed run stays exact.
    Metrics: ``train/loss``, ``train/nll``, ``train/kl`` and ``train/beta`` are means over the
    users of the encoder passes (β and KL are per user, so loss ≠ nll + beta·kl in general);
    ``train/decoder_loss`` is the decoder passes' mean nll.

    One process only (``data_parallel = False``): the halves' losses are not computed through
    :meth:`Epoch.loss`, so DDP would not all-reduce them, and each pass would need its own
    wrapper around a half.
    """

    data_parallel = False

    def __init__(
        self, net: RecVAEWithPrior, *, lr: float = 5e-4, gamma: float | None = 0.005,
        beta: float | None = None, encoder_passes: int = 3, decoder_passes: int = 1,
    ) -> None:
        if (gamma is None) == (beta is None):
            raise RecvaeError("recvae: give exactly one of gamma and beta")
        self.net = net
        self.gamma, self.beta = gamma, beta
        self.encoder_passes, self.decoder_passes = encoder_passes, decoder_passes
        self.encoder_optimizer = _half_adam(net.net.encoder, lr)
        self.decoder_optimizer = _half_adam(net.net.decoder, lr)

    def optimizers(self) -> Mapping[str, torch.optim.Optimizer]:
        return {**_named(self.encoder_optimizer, "encoder"),
                **_named(self.decoder_optimizer, "decoder")}

    def kl_weights(self, x: SparseRows) -> torch.Tensor:
        """β_u per user of the batch: γ·|x_u|, or the fixed β."""
        if self.gamma is not None:
            return self.gamma * x.counts
        return torch.full_like(x.counts, float(self.beta))

    def run(self, epoch: Epoch, state: TrainState) -> dict[str, float]:
        net = self.net
        net.train()
        # Σ over users of the encoder passes: nll, KL, β·KL, β; then of the decoder passes: nll.
        enc = torch.zeros(4, dtype=torch.float64, device=epoch.device)
        dec = torch.zeros((), dtype=torch.float64, device=epoch.device)
        n_enc = n_dec = 0
        with frozen(net.net.decoder):  # no decoder weight gradient: half its backward GEMMs
            for part in range(self.encoder_passes):
                for x, generator in epoch.passes(part):
                    nll, kl = net.encoder_terms(x, generator)
                    beta = self.kl_weights(x)
                    beta_kl = beta * kl
                    loss = nll + beta_kl.mean()
                    self.encoder_optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.encoder_optimizer.step()
                    state.steps += 1
                    n_enc += x.n_rows
                    terms = torch.stack(
                        [nll.detach() * x.n_rows, kl.detach().sum(), beta_kl.detach().sum(),
                         beta.sum()]
                    )
                    enc += terms.double()  # on the device: no host sync per batch on GPUs
        net.prior.refresh(net.net.encoder)  # after the encoder passes, as the reference
        for part in range(self.encoder_passes, self.encoder_passes + self.decoder_passes):
            for x, generator in epoch.passes(part):
                nll = net.decoder_nll(x, generator)  # the encoder runs without a graph
                self.decoder_optimizer.zero_grad(set_to_none=True)
                nll.backward()
                self.decoder_optimizer.step()
                state.steps += 1
                n_dec += x.n_rows
                dec += nll.detach().double() * x.n_rows
        nll_mean, kl_mean, beta_kl_mean, beta_mean = (enc / max(n_enc, 1)).tolist()
        return {
            "train/loss": nll_mean + beta_kl_mean,
            "train/nll": nll_mean,
            "train/kl": kl_mean,
            "train/beta": beta_mean,
            "train/decoder_loss": float(dec) / max(n_dec, 1),
        }


def _half_adam(half: nn.Module, lr: float) -> torch.optim.Adam | MixedAdam:
    """One half's Adam, as the reference's; with the sampled softmax (row-sparse gradients on
    the item matrices: the encoder's input layer, the decoder) lazy on those matrices."""
    sparse = row_sparse_parameters(half)
    if sparse:
        return MixedAdam(half.parameters(), lr=lr, sparse=sparse)
    return torch.optim.Adam(half.parameters(), lr=lr, **adam_impl(next(half.parameters()).device))


def _named(optimizer: torch.optim.Adam | MixedAdam, name: str) -> dict[str, torch.optim.Optimizer]:
    return optimizer.optimizers(name) if isinstance(optimizer, MixedAdam) else {name: optimizer}


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainConfig:
    """The loop's knobs, as plain values."""

    epochs: int = 200
    batch_size: int = 500
    seed: int = 98765
    device: torch.device | str = "cpu"
    patience: int | None = None  # epochs without a better validation NDCG@100 before stopping
    eval_batch_size: int = 2000
    show_progress: bool = False
    precision: str = "fp32"  # fp32 | tf32 | bf16: see precision_scope


@dataclass
class TrainState:
    """Everything training carries from one epoch to the next, saved whole in a checkpoint."""

    epoch: int = 0  # the last completed epoch (epochs are numbered from 1)
    steps: int = 0  # gradient steps taken so far (the β schedule counts them)
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float = -math.inf
    bad_epochs: int = 0  # epochs since the best one
    stopped_early: bool = False
    best_weights: dict[str, torch.Tensor] | None = None  # CPU copy of the best epoch's weights
    #: wall seconds spent on this training up to the last completed epoch, by every process
    #: that worked on it: a resumed run carries on from its checkpoint's count
    seconds: float = 0.0
    #: the part of ``seconds`` that the checkpoint this run resumed from carried (0 afresh)
    resumed_seconds: float = 0.0


def train(
    step: TrainingStep,
    train_rows: sp.csr_matrix,
    validation: Part | None = None,
    config: TrainConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    checkpoint: Checkpointing | None = None,
    name: str = "model",
) -> TrainState:
    """Train ``step.net`` (already on ``config.device``) on the CSR rows ``train_rows``.

    When ``validation`` has targets, the weights of the epoch with the best validation NDCG@100
    are restored at the end and ``patience`` epochs without improvement stop training;
    otherwise the last epoch is kept. With ``checkpoint``, the checkpoint is rewritten
    atomically after each epoch, and ``checkpoint.resume`` continues from it (starting afresh
    when there is none). Raises RecvaeError when the loss becomes NaN/inf; the previous
    checkpoint is left as it was.

    In a process group (torchrun) every process calls this with the same arguments: the
    gradients are all-reduced, the ``train/...`` metrics averaged over all training rows and the
    validation metrics computed over all validation users, so every process reports the same
    numbers and takes the same best-epoch and stopping decisions (rank 0's, broadcast); only
    rank 0 writes the checkpoint and calls ``callbacks``. Every process reads the checkpoint
    when resuming.
    """
    started = time.perf_counter()
    config = config or TrainConfig()
    n_users, n_items = train_rows.shape
    if n_users == 0 or train_rows.nnz == 0:
        raise RecvaeError(
            f"{name}: the training matrix is empty ({n_users} users, {train_rows.nnz} interactions)"
        )
    rank, world_size = distributed.world()
    if config.batch_size < world_size:
        raise RecvaeError(
            f"{name}: batch_size {config.batch_size} is the global batch, split among "
            f"{world_size} processes; it must be at least {world_size}"
        )
    train_rows = train_rows.tocsr()
    device = torch.device(config.device)
    net = step.net
    validate = validation is not None and validation.holdout.nnz > 0

    state = TrainState()
    saved_epoch: int | None = None  # the epoch of this run's last checkpoint
    if checkpoint is not None:
        world = {"world_size": world_size} if world_size > 1 else {}
        checkpoint = Checkpointing(
            checkpoint.directory, checkpoint.resume,
            dict(checkpoint.fingerprint, n_items=n_items, n_train_users=n_users, **world),
        )
        if checkpoint.resume and checkpoint.path.is_file():
            state = _restore(checkpoint, step, device, name)
            state.resumed_seconds = state.seconds
            saved_epoch = state.epoch
    objective = _objective(step, world_size, name)
    on_device = DeviceCsr(train_rows, device) if device.type == "cuda" else None

    epochs = config.epochs
    start = epochs + 1 if state.stopped_early else state.epoch + 1
    # No bar over epochs: each epoch is reported to the callbacks (one printed line per epoch in
    # the CLI), and a bar left beside those lines goes stale.
    for number in range(start, epochs + 1):
        t0 = time.perf_counter()
        epoch = Epoch(
            train_rows, number, config.seed, config.batch_size, device, config.show_progress,
            rank=rank, world_size=world_size, objective=objective, on_device=on_device,
        )
        with (
            reuse_freed_memory() if device.type == "cpu" else contextlib.nullcontext(),
            precision_scope(config.precision, device),
        ):
            metrics = step.run(epoch, state)
        if world_size > 1:
            metrics = _mean_over_processes(metrics, epoch.rows_seen)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        loss = metrics["train/loss"]
        if not math.isfinite(loss):
            kept = (
                f"the last good checkpoint (epoch {saved_epoch}) in {checkpoint.directory} is kept"
                if checkpoint is not None and saved_epoch is not None
                else "no checkpoint of this run was written"
            )
            raise RecvaeError(
                f"{name}: training diverged at epoch {number} (loss {loss}); {kept}; try a lower lr"
            )

        if validate:
            assert validation is not None
            t1 = time.perf_counter()
            scores = validation_metrics(net, validation, device, config.eval_batch_size)
            metrics.update({f"val/{k}": v for k, v in scores.items()})
            metrics["val_seconds"] = time.perf_counter() - t1
        # Every process decides on rank 0's numbers: the same best epoch, the same stop.
        metrics = distributed.broadcast(metrics)
        is_best = True
        if validate:
            is_best = metrics[f"val/{SELECTION_METRIC}"] > state.best_score
            if is_best:
                state.best_score = metrics[f"val/{SELECTION_METRIC}"]
                state.bad_epochs = 0
            else:
                state.bad_epochs += 1
        if is_best:
            state.best_epoch = number
            state.best_weights = _cpu_copy(net.state_dict()) if validate else None
        state.epoch = number
        state.history.append({"epoch": float(number), **metrics})
        state.seconds = state.resumed_seconds + time.perf_counter() - started
        state.stopped_early = (
            validate and config.patience is not None and state.bad_epochs >= config.patience
            and number < epochs
        )
        if checkpoint is not None:
            if rank == 0:
                _save(checkpoint, step, state)
            saved_epoch = number
        if rank == 0:
            report = EpochReport(epoch=number, metrics=metrics, is_best=is_best)
            for callback in callbacks:
                callback(report)
        if state.stopped_early:
            break
    if world_size > 1:  # rank 0's last checkpoint is complete before any process reads it again
        distributed.barrier()

    if state.best_weights is not None:
        net.load_state_dict(state.best_weights)
    net.eval()
    state.seconds = state.resumed_seconds + time.perf_counter() - started
    return state


@torch.no_grad()
def validation_metrics(
    net: torch.nn.Module, part: Part, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Validation metrics (:data:`VALIDATION_METRICS`) of ``net`` on ``part``, in eval mode.

    Distributed, each process scores its share of the users with targets and the per-user
    sums are all-reduced: the same means as one process computes (up to the order of the sums).
    Batches are capped at :data:`SCORE_BUDGET` scores, so a catalogue of 10^6 items scores 64
    users at a time instead of allocating ``batch_size`` × n_items.
    """
    net.eval()
    batch_size = max(1, min(batch_size, SCORE_BUDGET // part.fold_in.shape[1]))
    rank, world_size = distributed.world()

    def run(p: Part) -> tuple[dict[str, float], int]:
        result = evaluate(
            lambda m: net(SparseRows.from_csr(m, device)), p, ks=(20, 50, 100),
            batch_size=batch_size, inplace=True,
        )
        return result.means, result.n_users

    if world_size == 1:
        return {k: v for k, v in run(part)[0].items() if k in VALIDATION_METRICS}
    holdout = part.holdout.tocsr(copy=True)
    holdout.eliminate_zeros()  # explicit zeros are no targets (as in evaluate)
    mine = np.array_split(np.flatnonzero(np.diff(holdout.indptr)), world_size)[rank]
    sums = torch.zeros(len(VALIDATION_METRICS) + 1, dtype=torch.float64)
    if len(mine):
        means, n = run(Part(part.fold_in[mine], holdout[mine], np.asarray(part.users)[mine]))
        sums[:-1] = torch.tensor([means[k] * n for k in VALIDATION_METRICS], dtype=torch.float64)
        sums[-1] = n
    distributed.all_reduce_sum(sums)
    return {k: float(v) for k, v in zip(VALIDATION_METRICS, (sums[:-1] / sums[-1]).tolist(), strict=True)}


def _objective(step: TrainingStep, world_size: int, name: str = "model") -> nn.Module:
    """The loss module steps call through :meth:`Epoch.loss`: DDP-wrapped when distributed.

    A step with ``data_parallel = False`` (one that computes its losses without
    :meth:`Epoch.loss`, whose gradients DDP would never all-reduce) is refused in a process group.
    """
    objective = Objective(step.net)
    if world_size == 1:
        return objective
    if not getattr(step, "data_parallel", True):
        raise RecvaeError(
            f"{name}: {type(step).__name__} trains in one process only (nproc 1), not in a "
            f"process group of {world_size}"
        )
    if row_sparse_parameters(step.net):
        # DDP's reducer expects dense gradients outside nn.Embedding, and NCCL has no sparse
        # all-reduce: distributed training keeps the item matrices' gradients dense.
        raise ValueError("row-sparse gradients cannot be all-reduced by DDP; use dense ones")
    return DistributedDataParallel(
        objective,
        device_ids=None,  # the module and every input already live on this process's device
        find_unused_parameters=getattr(step, "find_unused_parameters", True),
        gradient_as_bucket_view=True,
    )


def _mean_over_processes(metrics: dict[str, float], rows: int) -> dict[str, float]:
    """Per-process means of an epoch (over ``rows`` training rows each) → the mean over all rows."""
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] * rows for k in keys] + [rows], dtype=torch.float64)
    distributed.all_reduce_sum(t)
    return {k: float(v) for k, v in zip(keys, (t[:-1] / t[-1]).tolist(), strict=True)}


# --------------------------------------------------------------------------- internals


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _save(checkpoint: Checkpointing, step: TrainingStep, state: TrainState) -> None:
    """Checkpoint the step's network and optimizers with ``state`` (rank 0, after each epoch)."""
    save_checkpoint(checkpoint, step.net, step.optimizers(), asdict(state))


def _restore(
    checkpoint: Checkpointing, step: TrainingStep, device: torch.device, name: str
) -> TrainState:
    """Load the checkpoint into the step's network and optimizers; the state to resume from."""
    return TrainState(**load_checkpoint(checkpoint, step.net, step.optimizers(), device, name))
