"""The one training loop of the autoencoders, and the step objects that say what an epoch does.

The loop (:func:`train`) owns what every model of the family shares: epochs numbered from 1,
randomness derived from ``(seed, epoch)``, validation NDCG@100 after each epoch, the best
epoch's weights, early stopping, an atomic checkpoint per epoch and exact resume, divergence
checks and the per-epoch callbacks. What happens inside an epoch belongs to a *step* object
(:class:`TrainingStep`): :class:`ElboStep` takes one Adam step per batch on ``nll + β·KL``
(Mult-VAE, Mult-DAE); RecVAE's alternating encoder and decoder passes are another step.

Everything the loop must carry across a restart is one :class:`TrainState`, saved whole in
the checkpoint with the network and the step's optimizers. Because every epoch's randomness
(order, dropout masks, reparameterization noise) comes only from ``(seed, epoch)``, a run
resumed from a checkpoint reproduces the uninterrupted run exactly on CPU.

Example::

    step = ElboStep(net, lr=1e-3, anneal_cap=0.2, total_anneal_steps=200_000)
    state = train(step, dataset.train, dataset.validation, TrainConfig(epochs=200))
    state.best_epoch, state.history[-1]["val/ndcg_at_100"]
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import pickle
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from recvae.batching import row_batches
from recvae.data.dataset import Part
from recvae.errors import RecvaeError
from recvae.evaluation import evaluate
from recvae.io import atomic_file, binary_sink
from recvae.models.autoencoders.nets import SparseRows
from recvae.models.base import Callback, EpochReport

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 2
SELECTION_METRIC = "ndcg_at_100"  # model selection on validation NDCG@100, as the paper
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


def epoch_seeds(seed: int, epoch: int, part: int = 0) -> tuple[np.random.Generator, int]:
    """The user-order generator and torch seed of pass ``part`` of an epoch, a pure function of
    ``(seed, epoch, part)``.

    Deriving them per epoch (instead of drawing from one stream) makes resume exact: a resumed
    run needs no RNG state from the interrupted one. ``part`` numbers the passes over the users
    within one epoch (RecVAE makes several); the single pass of Mult-VAE is part 0.
    """
    key = [int(seed), int(epoch)] + ([int(part)] if part else [])
    order_ss, torch_ss = np.random.SeedSequence(key).spawn(2)
    return np.random.default_rng(order_ss), int(torch_ss.generate_state(1, np.uint64)[0] >> 1)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` intra-op threads (default: the cores this process may use)."""
    if n is None:
        n = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield int(n)
    finally:
        torch.set_num_threads(before)


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
    """One epoch as a step sees it: the training rows, and batches in a seeded random order."""

    train: sp.csr_matrix
    number: int
    seed: int
    batch_size: int
    device: torch.device
    show_progress: bool = False

    def passes(self, part: int = 0) -> Iterator[tuple[SparseRows, torch.Generator]]:
        """Pass ``part`` over every training user: batches of rows with the generator that draws
        their training noise (dropout, reparameterization), both derived from the seed, the
        epoch and ``part``."""
        n_users = self.train.shape[0]
        order_rng, torch_seed = epoch_seeds(self.seed, self.number, part)
        perm = order_rng.permutation(n_users)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(torch_seed)
        batches = tqdm(
            row_batches(n_users, self.batch_size),
            total=-(-n_users // self.batch_size),
            desc=f"epoch {self.number}" + (f".{part}" if part else ""),
            unit="batch",
            leave=False,  # cleared when the epoch ends: the epoch's line is the callbacks' job
            disable=None if self.show_progress else True,  # None: only on a terminal
        )
        for sl in batches:
            yield SparseRows.from_csr(self.train[perm[sl]], self.device), generator


class TrainingStep(Protocol):
    """What an epoch does to a network: the per-model part of training.

    ``net`` is trained in place; ``optimizers`` are saved in checkpoints by name. ``run``
    trains one epoch, advancing ``state.steps`` by the gradient steps it took, and returns the
    epoch's ``train/...`` metrics (``train/loss`` must be among them: the loop stops on a
    non-finite loss).
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
        total_anneal_steps: int = 0, l2: float = 0.0,
    ) -> None:
        self.net = net
        self.anneal_cap, self.total_anneal_steps, self.l2 = anneal_cap, total_anneal_steps, l2
        self.weights = [p for p in net.parameters() if p.ndim >= 2]
        biases = [p for p in net.parameters() if p.ndim < 2]
        # λ·Σ‖W‖² has gradient 2λ·W, which is exactly what Adam's (coupled, non-decoupled)
        # weight_decay adds to the gradient: weight_decay = 2λ on the weight matrices only.
        self.optimizer = torch.optim.Adam(
            [{"params": self.weights, "weight_decay": 2.0 * l2},
             {"params": biases, "weight_decay": 0.0}],
            lr=lr,
            **adam_impl(next(net.parameters()).device),
        )

    def optimizers(self) -> Mapping[str, torch.optim.Optimizer]:
        return {"adam": self.optimizer}

    def beta(self, step: int) -> float:
        return kl_weight(step, self.anneal_cap, self.total_anneal_steps)

    def run(self, epoch: Epoch, state: TrainState) -> dict[str, float]:
        self.net.train()
        sums = torch.zeros(3, dtype=torch.float64, device=epoch.device)  # Σ nll·B, kl·B, β·kl·B
        n = 0
        for x, generator in epoch.passes():
            b = self.beta(state.steps)
            nll, kl = self.net.loss(x, generator)
            loss = nll + b * kl if b else nll
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            state.steps += 1
            n += x.n_rows
            # Accumulated on the device: no host synchronisation per batch on GPUs.
            sums += torch.stack([nll.detach(), kl.detach(), b * kl.detach()]).double() * x.n_rows
        nll_mean, kl_mean, beta_kl_mean = (sums / max(n, 1)).tolist()
        metrics = {
            "train/loss": nll_mean + beta_kl_mean,
            "train/nll": nll_mean,
            "train/kl": kl_mean,
            "train/beta": self.beta(state.steps - 1),
        }
        if self.l2:
            metrics["train/l2_penalty"] = self.l2 * sum(
                float(w.detach().square().sum()) for w in self.weights
            )
        return metrics


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


@dataclass
class Checkpointing:
    """Where to checkpoint, whether to resume, and what must match to resume.

    ``fingerprint`` (the model's config and data shape) must equal the checkpoint's.
    """

    directory: str | os.PathLike
    resume: bool = False
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.directory) / CHECKPOINT_FILE


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
    """
    config = config or TrainConfig()
    n_users, n_items = train_rows.shape
    if n_users == 0 or train_rows.nnz == 0:
        raise RecvaeError(
            f"{name}: the training matrix is empty ({n_users} users, {train_rows.nnz} interactions)"
        )
    train_rows = train_rows.tocsr()
    device = torch.device(config.device)
    net = step.net
    validate = validation is not None and validation.holdout.nnz > 0

    state = TrainState()
    saved_epoch: int | None = None  # the epoch of this run's last checkpoint
    if checkpoint is not None:
        checkpoint = Checkpointing(
            checkpoint.directory, checkpoint.resume,
            dict(checkpoint.fingerprint, n_items=n_items, n_train_users=n_users),
        )
        if checkpoint.resume and checkpoint.path.is_file():
            state = _restore(checkpoint, step, device, name)
            saved_epoch = state.epoch

    epochs = config.epochs
    start = epochs + 1 if state.stopped_early else state.epoch + 1
    # No bar over epochs: each epoch is reported to the callbacks (one printed line per epoch in
    # the CLI), and a bar left beside those lines goes stale.
    for number in range(start, epochs + 1):
        t0 = time.perf_counter()
        epoch = Epoch(
            train_rows, number, config.seed, config.batch_size, device, config.show_progress
        )
        with reuse_freed_memory() if device.type == "cpu" else contextlib.nullcontext():
            metrics = step.run(epoch, state)
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

        is_best = True
        if validate:
            assert validation is not None
            t1 = time.perf_counter()
            scores = validation_metrics(net, validation, device, config.eval_batch_size)
            metrics.update({f"val/{k}": v for k, v in scores.items()})
            metrics["val_seconds"] = time.perf_counter() - t1
            is_best = scores[SELECTION_METRIC] > state.best_score
            if is_best:
                state.best_score = scores[SELECTION_METRIC]
                state.bad_epochs = 0
            else:
                state.bad_epochs += 1
        if is_best:
            state.best_epoch = number
            state.best_weights = _cpu_copy(net.state_dict()) if validate else None
        state.epoch = number
        state.history.append({"epoch": float(number), **metrics})
        state.stopped_early = (
            validate and config.patience is not None and state.bad_epochs >= config.patience
            and number < epochs
        )
        if checkpoint is not None:
            _save(checkpoint, step, state)
            saved_epoch = number
        report = EpochReport(epoch=number, metrics=metrics, is_best=is_best)
        for callback in callbacks:
            callback(report)
        if state.stopped_early:
            break

    if state.best_weights is not None:
        net.load_state_dict(state.best_weights)
    net.eval()
    return state


@torch.no_grad()
def validation_metrics(
    net: torch.nn.Module, part: Part, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Validation metrics (:data:`VALIDATION_METRICS`) of ``net`` on ``part``, in eval mode."""
    net.eval()
    result = evaluate(
        lambda m: net(SparseRows.from_csr(m, device)), part, ks=(20, 50, 100),
        batch_size=batch_size, inplace=True,
    )
    return {k: result.means[k] for k in VALIDATION_METRICS}


# --------------------------------------------------------------------------- internals


def adam_impl(device: torch.device) -> dict[str, bool]:
    """Adam's fused kernel (one pass over each parameter) where this torch build has it."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return {}
    return {"fused": True}


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


_TORCH_ZIP = b"PK\x03\x04"  # torch.save has written zip archives since PyTorch 1.6


def save_tensors(obj: Any, path: Path) -> None:
    """``torch.save`` whose write errors keep their errno (a full disk is one line, not
    torch's "unexpected pos")."""
    with binary_sink(path) as f:
        torch.save(obj, f)


def load_tensors(path: Path, device: torch.device | str, expected: str) -> Any:
    """``torch.load`` of a file :func:`save_tensors` wrote, tensors and plain containers only.

    A missing, truncated or foreign file, or one holding other pickled objects (refused, never
    run), is a RecvaeError naming ``path`` and what was ``expected``.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(_TORCH_ZIP))
    except FileNotFoundError:
        raise RecvaeError(f"{path}: no such file; expected {expected}") from None
    if head != _TORCH_ZIP:
        # Older torch files and plain pickles: refused before torch looks at them.
        raise RecvaeError(
            f"{path}: not a PyTorch zip archive (it starts with {head!r}); expected {expected}"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # weights_only met something other than tensors
        raise RecvaeError(
            f"{path}: refused: it holds pickled Python objects beyond tensors, which recvae never "
            f"loads; expected {expected}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # torch's damaged-archive errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecvaeError(f"{path}: cannot read ({first[:160]}); expected {expected}") from None


def _save(checkpoint: Checkpointing, step: TrainingStep, state: TrainState) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": checkpoint.fingerprint,
        "state": asdict(state),
        "net": step.net.state_dict(),
        "optimizers": {k: opt.state_dict() for k, opt in step.optimizers().items()},
    }
    with atomic_file(checkpoint.path) as tmp:
        save_tensors(payload, tmp)


def _restore(
    checkpoint: Checkpointing, step: TrainingStep, device: torch.device, name: str
) -> TrainState:
    path = checkpoint.path
    ckpt = load_tensors(path, device, "a recvae training checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RecvaeError(
            f"{path}: not a recvae training checkpoint of format {CHECKPOINT_FORMAT}; "
            "remove it or use another checkpoint directory"
        )
    saved, fingerprint = ckpt["fingerprint"], checkpoint.fingerprint
    if saved.get("n_items") != fingerprint["n_items"] or saved.get(
        "item_digest"
    ) != fingerprint.get("item_digest"):
        raise RecvaeError(
            f"{path}: checkpoint was trained on {saved.get('n_items')} items, this data has "
            f"{fingerprint['n_items']} (or a different item vocabulary); use another checkpoint_dir"
        )
    diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if diff:
        pairs = ", ".join(f"{k}: {saved.get(k)!r} → {fingerprint.get(k)!r}" for k in diff)
        raise RecvaeError(f"{path}: {name} checkpoint does not match this run ({pairs})")
    optimizers = step.optimizers()
    if set(ckpt["optimizers"]) != set(optimizers):
        raise RecvaeError(f"{path}: checkpoint's optimizers do not match {name}'s")
    step.net.load_state_dict(ckpt["net"])
    for key, opt in optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][key])
    return TrainState(**ckpt["state"])
