"""The one training loop of the autoencoders (Mult-VAE, Mult-DAE), after Liang et al. (2018).

Per epoch: users are permuted with a generator derived from ``(seed, epoch)``, cut into batches
of CSR rows, and each batch takes one Adam step on ``nll + β·KL`` with
``β = min(anneal_cap, step / total_anneal_steps)``. After each epoch the model is scored on the
validation users (fold-in → held-out, NDCG@100), the best epoch's weights are kept, an optional
checkpoint is written atomically, and the callbacks receive an :class:`EpochReport`.

Because every epoch's randomness (order, dropout masks, reparameterization noise) comes only
from ``(seed, epoch)``, a run resumed from a checkpoint reproduces the uninterrupted run exactly
on CPU.

Example::

    result = train_autoencoder(net, dataset.train, dataset.validation, epochs=200, seed=98765)
    result.best_epoch, result.history[-1]["val/ndcg_at_100"]
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
from recvae.io import atomic_file
from recvae.models.base import Callback, EpochReport

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
SELECTION_METRIC = "ndcg_at_100"  # model selection on validation NDCG@100, as the paper
VALIDATION_METRICS = (
    "ndcg_at_100",
    "ndcg_at_20",
    "recall_at_20",
    "recall_at_50",
    "recall_full_at_20",
)


# --------------------------------------------------------------------------- batches


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


class AutoencoderNet(Protocol):
    """What the loop needs from a network (see ``recvae.models.vae``)."""

    def loss(self, x: SparseRows, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(nll, kl)``: batch means of the multinomial negative log-likelihood and the KL,
        drawing training noise (dropout, reparameterization) from ``generator``."""

    def __call__(self, x: SparseRows) -> torch.Tensor:
        """Logits (n_rows, n_items) at evaluation (no dropout, z = μ)."""


# --------------------------------------------------------------------------- schedule & RNG


def kl_weight(step: int, anneal_cap: float, total_anneal_steps: int) -> float:
    """β for the gradient step ``step`` (0-based, counted across epochs): KL annealing.

    Liang et al. raise β linearly from 0 and stop at ``anneal_cap`` (0.2 for Mult-VAE^PR).
    """
    if total_anneal_steps <= 0:
        return float(anneal_cap)
    return min(float(anneal_cap), step / total_anneal_steps)


def epoch_seeds(seed: int, epoch: int) -> tuple[np.random.Generator, int]:
    """The epoch's user-order generator and torch seed, a pure function of ``(seed, epoch)``.

    Deriving them per epoch (instead of drawing from one stream) makes resume exact: a resumed
    run needs no RNG state from the interrupted one.
    """
    ss = np.random.SeedSequence([int(seed), int(epoch)])
    order_ss, torch_ss = ss.spawn(2)
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


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What training produced besides the (best) weights left in the network."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    steps: int = 0
    stopped_early: bool = False


def train_autoencoder(
    net: torch.nn.Module,
    train: sp.csr_matrix,
    validation: Part | None = None,
    *,
    lr: float = 1e-3,
    batch_size: int = 500,
    epochs: int = 200,
    anneal_cap: float = 0.0,
    total_anneal_steps: int = 0,
    l2: float = 0.0,
    seed: int = 98765,
    device: torch.device | str = "cpu",
    patience: int | None = None,
    eval_batch_size: int = 2000,
    callbacks: Sequence[Callback] = (),
    show_progress: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    fingerprint: dict[str, Any] | None = None,
    name: str = "model",
) -> TrainResult:
    """Train ``net`` (already on ``device``) on the CSR rows of ``train``; return the history.

    ``l2`` is the coefficient λ of a penalty ``λ·Σ‖W‖²`` on the weight matrices (not biases),
    added to the per-batch mean loss. Epochs are numbered from 1. When ``validation`` has
    targets, the weights of the epoch with the best validation NDCG@100 are restored at the end
    and ``patience`` epochs without improvement stop training; otherwise the last epoch is kept.
    With ``checkpoint_dir``, ``checkpoint.pt`` is rewritten atomically after each epoch, and
    ``resume=True`` continues from it (starting afresh when there is none). ``fingerprint``
    (the model's config and data shape) must match the checkpoint's on resume.

    Raises RecvaeError when the loss becomes NaN/inf; the previous checkpoint is left as it was.
    """
    n_users, n_items = train.shape
    if n_users == 0 or train.nnz == 0:
        raise RecvaeError(
            f"{name}: the training matrix is empty ({n_users} users, {train.nnz} interactions)"
        )
    train = train.tocsr()
    device = torch.device(device)
    fingerprint = dict(fingerprint or {}, n_items=n_items, n_train_users=n_users)
    validate = validation is not None and validation.holdout.nnz > 0

    # λ·Σ‖W‖² has gradient 2λ·W, which is exactly what Adam's (coupled, non-decoupled)
    # weight_decay adds to the gradient: weight_decay = 2λ on the weight matrices only.
    weights = [p for p in net.parameters() if p.ndim >= 2]
    biases = [p for p in net.parameters() if p.ndim < 2]
    optimizer = torch.optim.Adam(
        [{"params": weights, "weight_decay": 2.0 * l2}, {"params": biases, "weight_decay": 0.0}],
        lr=lr,
        **_adam_impl(device),
    )

    result = TrainResult()
    best_state: dict[str, torch.Tensor] | None = None
    best_score = -math.inf
    bad_epochs = 0
    start = 1
    saved_epoch: int | None = None  # the epoch of this run's last checkpoint
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        ckpt = _read_checkpoint(ckpt_path, fingerprint, device, name)
        net.load_state_dict(ckpt["net"])
        optimizer.load_state_dict(ckpt["optimizer"])
        result = TrainResult(
            history=ckpt["history"],
            best_epoch=ckpt["best_epoch"],
            steps=ckpt["steps"],
            stopped_early=ckpt["stopped_early"],
        )
        best_state, best_score, bad_epochs = (
            ckpt["best_state"],
            ckpt["best_score"],
            ckpt["bad_epochs"],
        )
        start = saved_epoch = ckpt["epoch"]
        start += 1
        if result.stopped_early:
            start = epochs + 1

    epoch_bar = tqdm(
        total=epochs, initial=start - 1, desc=name, unit="epoch", disable=not show_progress
    )
    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        with reuse_freed_memory() if device.type == "cpu" else contextlib.nullcontext():
            train_nll, train_kl, train_beta_kl, result.steps = _train_epoch(
                net,
                optimizer,
                train,
                epoch=epoch,
                seed=seed,
                batch_size=batch_size,
                first_step=result.steps,
                beta=lambda step: kl_weight(step, anneal_cap, total_anneal_steps),
                device=device,
                show_progress=show_progress,
            )
        train_loss = train_nll + train_beta_kl
        train_seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            kept = (
                f"the last good checkpoint (epoch {saved_epoch}) in {checkpoint_dir} is kept"
                if saved_epoch is not None
                else "no checkpoint of this run was written"
            )
            raise RecvaeError(
                f"{name}: training diverged at epoch {epoch} (loss {train_loss}); {kept}; "
                "try a lower lr"
            )

        metrics = {
            "train/loss": train_loss,
            "train/nll": train_nll,
            "train/kl": train_kl,
            "train/beta": kl_weight(result.steps - 1, anneal_cap, total_anneal_steps),
            "epoch_seconds": train_seconds,
        }
        if l2:
            metrics["train/l2_penalty"] = l2 * sum(
                float(w.detach().square().sum()) for w in weights
            )
        is_best = True
        if validate:
            assert validation is not None
            t1 = time.perf_counter()
            scores = validation_metrics(net, validation, device, eval_batch_size)
            metrics.update({f"val/{k}": v for k, v in scores.items()})
            metrics["val_seconds"] = time.perf_counter() - t1
            is_best = scores[SELECTION_METRIC] > best_score
            if is_best:
                best_score = scores[SELECTION_METRIC]
                bad_epochs = 0
            else:
                bad_epochs += 1
        if is_best:
            result.best_epoch = epoch
            best_state = _cpu_copy(net.state_dict()) if validate else None
        result.history.append({"epoch": float(epoch), **metrics})
        result.stopped_early = (
            validate and patience is not None and bad_epochs >= patience and epoch < epochs
        )

        if ckpt_path is not None:
            _write_checkpoint(
                ckpt_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "steps": result.steps,
                    "net": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best_state": best_state,
                    "best_score": best_score,
                    "best_epoch": result.best_epoch,
                    "bad_epochs": bad_epochs,
                    "history": result.history,
                    "stopped_early": result.stopped_early,
                },
            )
            saved_epoch = epoch
        report = EpochReport(epoch=epoch, metrics=metrics, is_best=is_best)
        for callback in callbacks:
            callback(report)
        epoch_bar.update(1)
        if validate:
            epoch_bar.set_postfix(
                ndcg100=f"{metrics['val/ndcg_at_100']:.4f}", best=result.best_epoch
            )
        if result.stopped_early:
            break
    epoch_bar.close()

    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return result


def _train_epoch(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train: sp.csr_matrix,
    *,
    epoch: int,
    seed: int,
    batch_size: int,
    first_step: int,
    beta: Callable[[int], float],
    device: torch.device,
    show_progress: bool,
) -> tuple[float, float, float, int]:
    """One pass over the training users: (mean nll, mean KL, mean β·KL, steps done so far)."""
    n_users = train.shape[0]
    order_rng, torch_seed = epoch_seeds(seed, epoch)
    perm = order_rng.permutation(n_users)
    generator = torch.Generator(device=device)
    generator.manual_seed(torch_seed)
    net.train()
    step = first_step
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # Σ nll·B, Σ kl·B, Σ β·kl·B
    batches = tqdm(
        row_batches(n_users, batch_size),
        total=-(-n_users // batch_size),
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
        disable=not show_progress,
    )
    for sl in batches:
        b = beta(step)
        x = SparseRows.from_csr(train[perm[sl]], device)
        nll, kl = net.loss(x, generator)
        loss = nll + b * kl if b else nll
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        # Accumulated on the device: no host synchronisation per batch on GPUs.
        sums += torch.stack([nll.detach(), kl.detach(), b * kl.detach()]).double() * x.n_rows
    nll_mean, kl_mean, beta_kl_mean = (sums / n_users).tolist()
    return nll_mean, kl_mean, beta_kl_mean, step


@torch.no_grad()
def validation_metrics(
    net: torch.nn.Module, part: Part, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Validation metrics (:data:`VALIDATION_METRICS`) of ``net`` on ``part``, in eval mode."""
    net.eval()
    result = evaluate(
        lambda m: net(SparseRows.from_csr(m, device)), part, ks=(20, 50, 100), batch_size=batch_size,
        inplace=True,
    )
    return {k: result.means[k] for k in VALIDATION_METRICS}


# --------------------------------------------------------------------------- internals


def _adam_impl(device: torch.device) -> dict[str, bool]:
    """Adam's fused kernel (one pass over each parameter) where this torch build has it."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return {}
    return {"fused": True}


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _write_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def _read_checkpoint(
    path: Path, fingerprint: dict[str, Any], device: torch.device, name: str
) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise RecvaeError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RecvaeError(f"{path}: not a recvae training checkpoint (format {CHECKPOINT_FORMAT})")
    saved = ckpt["fingerprint"]
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
    return ckpt
