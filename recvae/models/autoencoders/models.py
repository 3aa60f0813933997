"""The autoencoders behind the Recommender interface: Mult-VAE^PR and Mult-DAE (Liang et al.
2018), RecVAE (Shenbin et al. 2020).

Each wrapper holds hyper-parameters as given, builds its network (``nets.py``) and its
training step (``training.py``), and hands both to the one training loop. Scoring runs the
network in evaluation mode (no dropout, z = μ) over batches of fold-in rows, so new users are
scored from their history without retraining.

Example::

    model = MultVAE(epochs=50).fit(dataset)
    scores = model.score(dataset.test.fold_in[:500])   # (500, n_items) logits, float32
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recvae import distributed
from recvae.batching import row_batches
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.io import load_arrays, read_json, save_arrays
from recvae.models.autoencoders.checkpoint import Checkpointing, load_tensors
from recvae.models.autoencoders.nets import (
    ACTIVATIONS,
    DAE,
    PRIOR_WEIGHTS,
    VAE,
    NegativeSampler,
    RecVAENet,
    RecVAEWithPrior,
    SparseRows,
    init_fan_in_uniform,
    init_weights,
    set_softmax,
)
from recvae.models.autoencoders.training import (
    PRECISIONS,
    ElboStep,
    RecVAEStep,
    TrainConfig,
    TrainingStep,
    torch_threads,
    train,
)
from recvae.models.base import Callback, Recommender, training_matrix
from recvae.models.params import (
    check_choice,
    check_device,
    check_dims,
    check_int,
    check_real,
    check_weights,
    is_int,
)

WEIGHTS_FILE = "weights.npz"
LEGACY_WEIGHTS_FILE = "weights.pt"
TRAINING_FILE = "training.json"
# ``total_anneal_steps: auto``: β reaches its cap at the same fraction of training as in the
# paper's ML-20M run, where cap 0.2 × 200,000 steps = step 40,000 of 200 epochs × 234 batches.
PAPER_ANNEAL_FRACTION = 40_000 / (200 * 234)
SOFTMAX = ("full", "sampled")


@dataclass(eq=False)
class Autoencoder(Recommender):
    """fit / score / save / load and the hyper-parameters every autoencoder shares.

    ``lr``, ``batch_size``, ``epochs`` as in the papers; ``patience`` stops after that many
    epochs without a better validation NDCG@100; ``device`` is ``auto`` (CUDA when present),
    ``cpu``, ``cuda`` or ``cuda:N``; ``threads`` defaults to the CPU cores available (divided
    among the processes of a torchrun job); ``eval_batch_size`` rows are scored at a time.
    Subclasses define the network (:meth:`_build_net`) and the training step (:meth:`_build_step`).

    ``softmax``: ``full`` (the papers') or ``sampled`` for large catalogues, where training
    normalises each user's multinomial over the batch's items plus ``negatives`` shared
    negatives drawn from popularity^``negatives_alpha`` with the logQ correction
    (:meth:`~recvae.models.autoencoders.nets.MultinomialOutput.sampled_nll`); the item matrices
    then get row-sparse gradients and lazy Adam in a single process (dense gradients under
    DDP). Scoring is always exact, over all items. It applies to every network whose decoder
    ends in a ``MultinomialOutput``.

    ``precision``: ``fp32``, ``tf32`` (CUDA tensor cores for float32 products) or ``bf16``
    (autocast) for the training steps; validation and scoring are float32. bf16 is for GPUs: on
    CPUs, even with AMX, its casts cost more than its products save (README, "A GPU").

    Inside a torchrun job (``torch.distributed`` initialised, e.g. by ``recvae train`` under
    torchrun) ``fit`` trains data-parallel: ``batch_size`` stays the global batch, ``cuda``
    means this process's GPU (``LOCAL_RANK``), and every process ends with the selected weights.
    """

    trains_in_epochs: ClassVar[bool] = True
    trains_distributed: ClassVar[bool] = True

    lr: float = 1e-3
    batch_size: int = 500
    epochs: int = 200
    seed: int = 98765
    device: str = "auto"
    patience: int | None = None
    eval_batch_size: int = 2000
    threads: int | None = None
    softmax: str = "full"
    negatives: int = 4096
    negatives_alpha: float = 0.75
    precision: str = "fp32"

    net_: nn.Module | None = field(default=None, init=False, repr=False)
    history_: list[dict[str, float]] = field(default_factory=list, init=False, repr=False)

    # ---------------------------------------------------------------- to define
    def _build_net(self, n_items: int) -> nn.Module:
        raise NotImplementedError

    def _build_step(self, net: nn.Module, n_train_users: int) -> TrainingStep:
        raise NotImplementedError

    # ---------------------------------------------------------------- validation
    def __post_init__(self) -> None:
        check_int(self, "batch_size", minimum=1)
        check_int(self, "epochs", minimum=1)
        check_int(self, "eval_batch_size", minimum=1)
        check_int(self, "seed", minimum=0)
        check_int(self, "patience", minimum=1, optional=True)
        check_int(self, "threads", minimum=1, optional=True)
        check_real(self, "lr", low=0.0, low_open=True)
        check_device(self)
        check_choice(self, "softmax", SOFTMAX)
        check_int(self, "negatives", minimum=1)
        check_real(self, "negatives_alpha", low=0.0)
        check_choice(self, "precision", PRECISIONS)

    # ---------------------------------------------------------------- contract
    def fit(
        self,
        dataset: Dataset,
        *,
        callbacks: Sequence[Callback] = (),
        show_progress: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> Autoencoder:
        """Train on ``dataset.train``, selecting the epoch of best validation NDCG@100.

        Each epoch's :class:`~recvae.models.base.EpochReport` carries the step's ``train/...``
        metrics (``train/loss`` always), ``epoch_seconds`` and, when the validation part has
        targets, ``val/ndcg_at_100``, ``val/ndcg_at_20``, ``val/recall_at_20``,
        ``val/recall_at_50``, ``val/recall_full_at_20`` and ``val_seconds``. With
        ``checkpoint_dir`` a checkpoint is written after every epoch; ``resume=True`` continues
        from it exactly (or starts afresh when there is none).
        """
        train_rows = training_matrix(dataset, self.name)
        item_ids = np.asarray(dataset.item_ids)
        if len(item_ids) != train_rows.shape[1]:
            raise RecvaeError(
                f"{self.name}: dataset has {len(item_ids)} item ids but its training matrix has "
                f"{train_rows.shape[1]} columns"
            )
        device = distributed.local_device(resolve_device(self.device, strict=True, name=self.name))
        checkpoint = (
            Checkpointing(checkpoint_dir, resume, self._fingerprint(item_ids, train_rows))
            if checkpoint_dir is not None else None
        )
        with torch_threads(self.threads):
            net = self._new_net(train_rows.shape[1]).to(device)
            self._set_softmax(net, train_rows, device)
            step = self._build_step(net, train_rows.shape[0])
            state = train(
                step,
                train_rows,
                dataset.validation,
                TrainConfig(
                    epochs=self.epochs, batch_size=self.batch_size, seed=self.seed, device=device,
                    patience=self.patience, eval_batch_size=self.eval_batch_size,
                    show_progress=show_progress, precision=self.precision,
                ),
                callbacks=callbacks,
                checkpoint=checkpoint,
                name=self.name,
            )
        self.net_ = net
        self.item_ids_ = item_ids
        self.history_ = state.history
        self.best_epoch_ = state.best_epoch
        self.resumed_seconds_ = state.resumed_seconds
        return self

    def refit_params(self) -> dict[str, Any]:
        """Train for the selected number of epochs, without early stopping."""
        if self.best_epoch_ is None:
            return {}
        return {"epochs": int(self.best_epoch_), "patience": None}

    def _score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        """Logits (n_rows, n_items), float32: the network in evaluation mode (no retraining)."""
        net = self._net()
        device = next(net.parameters()).device
        out = np.empty(fold_in.shape, dtype=np.float32)
        with torch_threads(self.threads), torch.no_grad():
            net.eval()
            for sl in row_batches(fold_in.shape[0], self.eval_batch_size):
                out[sl] = net(SparseRows.from_csr(fold_in[sl], device)).cpu().numpy()
        return out

    def _save_state(self, path: Path) -> None:
        # Plain arrays, not torch.save's pickle: loading a model (MLflow serving included)
        # unpickles nothing.
        net = self._net()
        save_arrays(path / WEIGHTS_FILE, {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()})
        # Without wall-clock timings, a saved model is a function of its data, params and seed:
        # two identical runs save identical files (the tracking store keeps one copy).
        history = [{k: v for k, v in h.items() if not k.endswith("_seconds")} for h in self.history_]
        training = {"best_epoch": self.best_epoch_, "history": history}
        (path / TRAINING_FILE).write_text(json.dumps(training, indent=1) + "\n")

    def _load_state(self, path: Path) -> None:
        # A model trained on CUDA loads (and scores) on CPU where CUDA is absent.
        device = resolve_device(self.device, strict=False, name=self.name)
        weights = path / WEIGHTS_FILE
        expected = f"the weights of a {self.name}"
        if not weights.is_file() and (path / LEGACY_WEIGHTS_FILE).is_file():
            weights = path / LEGACY_WEIGHTS_FILE  # saved by recvae before the .npz format
            state = load_tensors(weights, device, expected)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise RecvaeError(
                    f"{weights}: expected a mapping of tensor names to tensors (a "
                    f"{self.name}'s state_dict), got {type(state).__name__}"
                )
        else:
            state = {k: torch.from_numpy(v) for k, v in load_arrays(weights, expected).items()}
        net = self._new_net(self.n_items).to(device)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise RecvaeError(
                f"{weights}: weights do not match a {self.name} with "
                f"{self.n_items} items and this config ({first})"
            ) from None
        net.eval()
        self.net_ = net
        if (path / TRAINING_FILE).is_file():
            training = read_json(path / TRAINING_FILE, "the training history of a saved model")
            history, best = training.get("history"), training.get("best_epoch")
            if not isinstance(history, list) or not (best is None or is_int(best)):
                raise RecvaeError(
                    f"{path / TRAINING_FILE}: expected 'history' (a list of epochs) and "
                    f"'best_epoch' (an integer or null)"
                )
            self.history_, self.best_epoch_ = history, best

    # ---------------------------------------------------------------- helpers
    def _set_softmax(self, net: nn.Module, train_rows: sp.csr_matrix, device: torch.device) -> None:
        """Configure the output layers for ``softmax`` (item popularity from ``train_rows``)."""
        if self.softmax == "full":
            return
        popularity = np.bincount(train_rows.indices, minlength=train_rows.shape[1])
        sampler = NegativeSampler(popularity, self.negatives, self.negatives_alpha, device)
        # DDP all-reduces dense gradients only (see training._objective)
        set_softmax(net, sampler, sparse_grad=distributed.world()[1] == 1)

    def _new_net(self, n_items: int) -> nn.Module:
        net = self._build_net(n_items)
        init_weights(net, torch.Generator().manual_seed(self.seed))
        return net

    def _net(self) -> nn.Module:
        self._check_fitted()
        if self.net_ is None:
            raise RecvaeError(f"{self.name}: model has no weights; call fit() or load() first")
        return self.net_

    def _fingerprint(self, item_ids: np.ndarray, train_rows: sp.csr_matrix) -> dict[str, Any]:
        """What must not change between an interrupted run and its resumption."""
        free = {"epochs", "patience", "device", "threads", "eval_batch_size", "precision"}
        if self.softmax == "full":  # checkpoints written before `softmax` existed still resume
            free |= {"softmax", "negatives", "negatives_alpha"}
        params = {k: v for k, v in self.params().items() if k not in free}
        digest = hashlib.sha256("\x1f".join(map(str, item_ids)).encode()).hexdigest()
        return {"model": self.name, **params, "item_digest": digest, "train_nnz": int(train_rows.nnz)}


@dataclass(eq=False)
class _LiangAutoencoder(Autoencoder):
    """The shape and regularization knobs of Liang et al.'s two models (see :class:`MultVAE`)."""

    hidden_dims: tuple[int, ...] = (600,)
    activation: str = "tanh"
    dropout: float = 0.5
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hidden_dims = check_dims(self, "hidden_dims")
        check_real(self, "dropout", low=0.0, high=1.0, high_open=True)
        check_real(self, "weight_decay", low=0.0)
        check_choice(self, "activation", ACTIVATIONS)

    _variational: ClassVar[bool] = False  # Mult-VAE's loss has a KL term, Mult-DAE's none

    def _kl_schedule(self, n_train_users: int) -> tuple[float, int]:
        """(anneal_cap, total_anneal_steps); no KL term by default."""
        return 0.0, 0

    def _build_step(self, net: nn.Module, n_train_users: int) -> TrainingStep:
        anneal_cap, total_anneal_steps = self._kl_schedule(n_train_users)
        return ElboStep(
            net,
            lr=self.lr,
            anneal_cap=anneal_cap,
            total_anneal_steps=total_anneal_steps,
            # The reference adds 2·λ·Σ‖W‖²/2 (tf's l2_loss halves) with λ = 0.01/batch_size
            # to the batch-mean loss: a per-user coefficient spread over the batch.
            l2=self.weight_decay / self.batch_size,
            variational=self._variational,
        )


@dataclass(eq=False)
class MultVAE(_LiangAutoencoder):
    """Mult-VAE^PR (Liang et al. 2018): defaults are the paper's ML-20M settings, except the β
    schedule, which scales with the run.

    Architecture I-600-200-600-I with tanh: ``hidden_dims`` are the encoder's hidden sizes (the
    decoder mirrors them; ``()`` gives I-200-I, Mult-DAE's shape with a latent z),
    ``latent_dim`` the size of z. ``dropout`` is the input drop probability while training;
    β rises by 1/``total_anneal_steps`` per gradient step up to ``anneal_cap``.
    ``total_anneal_steps="auto"`` (the default) makes β reach the cap after the same share of
    the run's gradient steps as in the paper (85 %: ``epochs`` × batches per epoch); the paper's
    own 200,000 suits ML-20M only, and leaves β ≈ 0.005 on small logs. ``weight_decay`` λ adds
    (λ/batch_size)·Σ‖W‖² to the batch-mean loss (the paper's Mult-VAE uses 0). Other fields as
    :class:`Autoencoder`.

    Example::

        model = MultVAE(epochs=200).fit(dataset, checkpoint_dir="runs/ckpt/vae", resume=True)
        model.history_[-1]["val/ndcg_at_100"], model.best_epoch_
    """

    name: ClassVar[str] = "mult-vae"

    latent_dim: int = 200
    anneal_cap: float = 0.2
    total_anneal_steps: int | str = "auto"

    total_anneal_steps_: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "latent_dim", minimum=1)
        if self.total_anneal_steps != "auto":
            check_int(self, "total_anneal_steps", minimum=0)
        check_real(self, "anneal_cap", low=0.0)

    def _build_net(self, n_items: int) -> nn.Module:
        return VAE(n_items, self.hidden_dims, self.latent_dim, self.activation, self.dropout)

    _variational: ClassVar[bool] = True

    def _kl_schedule(self, n_train_users: int) -> tuple[float, int]:
        self.total_anneal_steps_ = resolve_anneal_steps(
            self.total_anneal_steps, self.anneal_cap, self.epochs,
            math.ceil(n_train_users / self.batch_size),
        )
        return float(self.anneal_cap), self.total_anneal_steps_

    def refit_params(self) -> dict[str, Any]:
        """The selected epochs, and the β schedule of the selected model (``auto`` would
        otherwise anneal faster over the shorter refit)."""
        params = super().refit_params()
        if self.total_anneal_steps_ is not None:
            params["total_anneal_steps"] = int(self.total_anneal_steps_)
        return params


@dataclass(eq=False)
class MultDAE(_LiangAutoencoder):
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


@dataclass(eq=False)
class RecVAE(Autoencoder):
    """RecVAE (Shenbin, Alekseev, Tutubalina, Malykh & Nikolenko, WSDM 2020): defaults are the
    paper's ML-20M settings, as the authors' ``run.py --n-epochs 50 --gamma 0.005``.

    Encoder: the L2-normalised sparse input (``dropout`` while training the encoder), then
    ``encoder_layers`` dense layers of ``hidden_dim`` units with swish, LayerNorm and dense
    residual sums, then μ and log σ² of size ``latent_dim``. Decoder: one linear layer to the
    items, multinomial likelihood. Prior: the mixture ``prior_weights`` of N(0, I), the previous
    epoch's posterior and N(0, e¹⁰·I). KL weight per user β_u = ``gamma``·|x_u|; for a fixed β
    set ``gamma=None`` and ``beta``. Each epoch trains the encoder for ``encoder_passes``
    passes over the users, then the decoder for ``decoder_passes``. ``epochs`` = 50 is the
    authors' ML-20M command (their README, and the WSDM notebook's ``range(50)``); ``lr`` and
    ``batch_size`` are the paper's. Other fields as :class:`Autoencoder` (``softmax: sampled``
    included: both halves' likelihoods use it, and each half's Adam is lazy on its item
    matrix), except that RecVAE trains in one process: data-parallel training (torchrun,
    ``nproc`` > 1) is refused, since its alternating halves call the network outside the
    loop's DDP-wrapped loss.

    Example::

        model = RecVAE().fit(dataset, checkpoint_dir="runs/ckpt/recvae", resume=True)
        fixed_beta = RecVAE(gamma=None, beta=0.2, epochs=100)
    """

    name: ClassVar[str] = "recvae"
    trains_distributed: ClassVar[bool] = False  # RecVAEStep computes its losses outside DDP

    lr: float = 5e-4
    epochs: int = 50
    hidden_dim: int = 600
    encoder_layers: int = 5
    latent_dim: int = 200
    dropout: float = 0.5
    gamma: float | None = 0.005
    beta: float | None = None
    encoder_passes: int = 3
    decoder_passes: int = 1
    prior_weights: tuple[float, ...] = PRIOR_WEIGHTS

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("hidden_dim", "encoder_layers", "latent_dim", "encoder_passes",
                    "decoder_passes"):
            check_int(self, key, minimum=1)
        check_real(self, "dropout", low=0.0, high=1.0, high_open=True)
        check_real(self, "gamma", low=0.0, optional=True)
        check_real(self, "beta", low=0.0, optional=True)
        if (self.gamma is None) == (self.beta is None):
            raise RecvaeError(
                f"{self.name}: set exactly one of gamma (β = gamma·|x_u| per user) and beta (a "
                f"fixed β), got gamma={self.gamma!r}, beta={self.beta!r}; for a fixed β also "
                "set gamma: null"
            )
        self.prior_weights = check_weights(self, "prior_weights", len(PRIOR_WEIGHTS))
        world_size = distributed.world()[1]
        if world_size > 1:
            raise RecvaeError(
                f"{self.name}: trains in one process only, not in a torchrun job of {world_size} "
                "processes; use nproc: 1 (or no --nproc)"
            )

    def _build_net(self, n_items: int) -> nn.Module:
        return RecVAENet(
            n_items, self.hidden_dim, self.encoder_layers, self.latent_dim, self.dropout
        )

    def _new_net(self, n_items: int) -> nn.Module:
        # The reference keeps PyTorch's default initialisation (U(±1/√fan_in), LayerNorm 1/0);
        # Liang et al.'s Glorot + tiny biases would also zero the LayerNorm gains.
        net = self._build_net(n_items)
        init_fan_in_uniform(net, torch.Generator().manual_seed(self.seed))
        return net

    def _build_step(self, net: nn.Module, n_train_users: int) -> TrainingStep:
        assert isinstance(net, RecVAENet)
        return RecVAEStep(
            RecVAEWithPrior(net, self.prior_weights),
            lr=self.lr,
            gamma=self.gamma,
            beta=self.beta,
            encoder_passes=self.encoder_passes,
            decoder_passes=self.decoder_passes,
        )


# =========================================================================== helpers


def resolve_anneal_steps(
    total_anneal_steps: int | str, anneal_cap: float, epochs: int, steps_per_epoch: int
) -> int:
    """``total_anneal_steps`` as a number: ``auto`` puts β at ``anneal_cap`` after the paper's
    share (:data:`PAPER_ANNEAL_FRACTION`) of ``epochs × steps_per_epoch`` gradient steps."""
    if total_anneal_steps != "auto":
        return int(total_anneal_steps)
    if anneal_cap <= 0:
        return 0
    return max(1, round(PAPER_ANNEAL_FRACTION * epochs * steps_per_epoch / anneal_cap))


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
