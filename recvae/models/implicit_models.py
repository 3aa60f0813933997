"""Baselines fitted by the `implicit` library: ALS, BPR and item-kNN, behind recvae's interface.

implicit fits; recvae scores. Evaluation users are new (strong generalization), so every model
scores a user from the fold-in history alone, the way implicit scores a user it recomputes:

- ALS: ``recalculate_user`` (an exact weighted least-squares solve per user), then ``u · Yᵀ``;
- item-kNN: ``fold_in @ S``, what ``ItemItemRecommender.recommend`` sums over a user's items;
- BPR: implicit cannot recalculate BPR users, so a ridge solve on BPR's item factors (see ``BPR``).

implicit runs its own OpenMP threads (``num_threads``, 0 = all cores); BLAS is held to one thread
around its calls, as implicit asks, because nested BLAS threads slow it down several times.
ALS and BPR are seeded (``random_state``, default 98765) so that a pipeline gives the same
metrics run after run on a CPU; BPR defaults to one thread for that (see ``BPR``).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.io import load_npz, save_npy
from recvae.models.base import (
    Callback,
    EpochReport,
    Recommender,
    load_state_array,
    report_all,
    report_fit_seconds,
    training_matrix,
)
from recvae.models.params import check_choice, check_int, check_real

SIMILARITIES = ("cosine", "bm25")


def _check_gpu(model: str, use_gpu: bool) -> None:
    import implicit.gpu

    if use_gpu and not implicit.gpu.HAS_CUDA:
        raise RecvaeError(f"{model}: use_gpu=True but implicit was built without CUDA")


@dataclass(eq=False)
class _FactorModel(Recommender):
    """Shared by ALS and BPR: implicit's matrix factorization, item factors kept for scoring.

    ``item_factors_`` is float32 of shape (n_items, factors) for ALS and (n_items, factors + 1)
    for BPR, whose last column is the item bias.
    """

    factors: int = 100
    regularization: float = 0.01
    iterations: int = 15
    # seeded by default, like the autoencoders: the same data gives the same model (None: a
    # fresh draw each fit)
    random_state: int | None = 98765
    num_threads: int = 0
    use_gpu: bool = False
    item_factors_: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    # what the fold-in derives from item_factors_ once (ALS: implicit's solver; BPR: projection)
    _fold_in_cache: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int(self, "factors", minimum=1)
        check_int(self, "iterations", minimum=1)
        check_int(self, "num_threads", minimum=0)
        check_real(self, "regularization", low=0.0)
        check_int(self, "random_state", minimum=0, optional=True)

    def _implicit_model(self) -> Any:
        """A fresh implicit model with these hyper-parameters, on the CPU unless ``use_gpu``."""
        raise NotImplementedError

    def _epoch_callback(self, train: sp.csr_matrix, callbacks: Sequence[Callback]) -> Callable:
        raise NotImplementedError

    def fit(
        self,
        dataset: Dataset,
        *,
        callbacks: Sequence[Callback] = (),
        show_progress: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> _FactorModel:
        """Fit implicit's model on ``dataset.train``; each epoch is reported to ``callbacks``."""
        from tqdm.auto import tqdm

        train = sp.csr_matrix(training_matrix(dataset, self.name), dtype=np.float32)
        _check_gpu(self.name, self.use_gpu)
        # implicit's own bar has no label: ours is named, shown only on a terminal, then cleared
        bar = tqdm(total=self.iterations, desc=self.name, unit="epoch", leave=False,
                   disable=None if show_progress else True)
        with bar, threadpool_limits(1, "blas"):
            model = self._implicit_model()
            model.fit(
                train, show_progress=False,
                callback=self._epoch_callback(train, [*callbacks, lambda _: bar.update()]),
            )
        if self.use_gpu:
            model = model.to_cpu()
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self._fold_in_cache = None
        self.item_ids_ = dataset.item_ids
        return self

    def _save_state(self, path: Path) -> None:
        assert self.item_factors_ is not None
        save_npy(path / "item_factors.npy", self.item_factors_)

    def _load_state(self, path: Path) -> None:
        # columns: the factors (implicit may pad them on a GPU), + BPR's item bias
        shape = (self.n_items, None)
        self.item_factors_ = load_state_array(path / "item_factors.npy", self.name, shape)
        self._fold_in_cache = None


@dataclass(eq=False)
class ALS(_FactorModel):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) fitted by ``implicit``.

    Training values are multiplied by ``alpha`` to give the confidences (implicit's own
    ``alpha``: C = alpha · X on the observed entries). Other fields are implicit's
    (``factors``, ``regularization``, ``iterations``, ``calculate_training_loss``,
    ``random_state``, ``num_threads``, ``use_gpu``) with its defaults, except ``use_gpu=False``
    and a fixed ``random_state``, so a fit is reproducible (with any ``num_threads``). A fold-in
    row is scored by implicit's ``recalculate_user`` (the exact least-squares user factor given
    the item factors), so training and new users are treated alike.

    Example::

        model = ALS(factors=128, alpha=10.0, random_state=0).fit(dataset)
        scores = model.score(dataset.test.fold_in[:100])   # (100, n_items) float32
    """

    name: ClassVar[str] = "als"
    alpha: float = 1.0
    calculate_training_loss: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_real(self, "alpha", low=0.0, low_open=True)

    def _implicit_model(self) -> Any:
        from implicit.als import AlternatingLeastSquares

        return AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            calculate_training_loss=self.calculate_training_loss,
            num_threads=self.num_threads,
            random_state=self.random_state,
            use_gpu=self.use_gpu,
        )

    def _epoch_callback(self, train: sp.csr_matrix, callbacks: Sequence[Callback]) -> Callable:
        def on_epoch(epoch: int, seconds: float, loss: float | None) -> None:
            metrics = {"epoch_seconds": float(seconds)}
            if loss is not None:
                metrics["train/loss"] = float(loss)
            report_all(callbacks, EpochReport(epoch=epoch, metrics=metrics))

        return on_epoch

    def user_factors(self, fold_in: sp.csr_matrix) -> np.ndarray:
        """User factors (n_rows, factors) float32, recomputed by implicit from the histories."""
        if self._fold_in_cache is None:
            from implicit.cpu.als import AlternatingLeastSquares

            with threadpool_limits(1, "blas"):
                solver = AlternatingLeastSquares(
                    factors=self.factors,
                    regularization=self.regularization,
                    alpha=self.alpha,
                    num_threads=self.num_threads,
                )
            solver.item_factors = self.item_factors_
            self._fold_in_cache = solver
        with threadpool_limits(1, "blas"):
            return self._fold_in_cache.recalculate_user(
                np.arange(fold_in.shape[0]), sp.csr_matrix(fold_in, dtype=np.float32)
            )

    def _score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        assert self.item_factors_ is not None
        return self.user_factors(fold_in) @ self.item_factors_.T


@dataclass(eq=False)
class BPR(_FactorModel):
    """Bayesian Personalized Ranking (Rendle et al. 2009) fitted by ``implicit``.

    Fields are implicit's (``factors``, ``learning_rate``, ``regularization``, ``iterations``,
    ``verify_negative_samples``, ``random_state``, ``num_threads``, ``use_gpu``) with its
    defaults, except ``use_gpu=False`` and ``num_threads=1``: implicit's SGD is Hogwild over
    ``num_threads`` threads (0 = all cores), whose races make each fit different, so only one
    thread reproduces a fit exactly from ``random_state`` (ALS is exact with any thread count).

    Fold-in: BPR learns no way to embed a new user, and implicit does not support
    ``recalculate_user`` for it. A fold-in row x (n_items,) is embedded ALS-style, by ridge
    regression of x on the item factors Q (n_items, factors + 1; the last column is the item
    bias, treated as one more feature whose user weight is fitted instead of fixed at 1):

        u = argmin ‖x − Q u‖² + λ‖u‖² = (QᵀQ + λI)⁻¹ Qᵀ x,     scores = Q u

    with λ = ``fold_in_regularization``. For a batch this is one product,
    ``scores = (fold_in @ Q (QᵀQ + λI)⁻¹) Qᵀ``: the history projected onto the span of the
    learned item factors, as PureSVD folds in users.

    Example::

        model = BPR(factors=128, iterations=100, random_state=0).fit(dataset)
        scores = model.score(dataset.test.fold_in[:100])   # (100, n_items) float32
    """

    name: ClassVar[str] = "bpr"
    num_threads: int = 1  # reproducible (see above); 0 uses every core, not reproducibly
    learning_rate: float = 0.01
    iterations: int = 100
    verify_negative_samples: bool = True
    fold_in_regularization: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check_real(self, "learning_rate", low=0.0, low_open=True)
        check_real(self, "fold_in_regularization", low=0.0, low_open=True)

    def _implicit_model(self) -> Any:
        from implicit.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            verify_negative_samples=self.verify_negative_samples,
            num_threads=self.num_threads,
            random_state=self.random_state,
            use_gpu=self.use_gpu,
        )

    def _epoch_callback(self, train: sp.csr_matrix, callbacks: Sequence[Callback]) -> Callable:
        samples = train.nnz  # implicit draws one (user, liked, sampled) triple per interaction

        def on_epoch(epoch: int, seconds: float, correct: int, skipped: int) -> None:
            metrics = {"epoch_seconds": float(seconds), "train/skipped": skipped / samples}
            if samples > skipped:
                metrics["train/auc"] = correct / (samples - skipped)
            report_all(callbacks, EpochReport(epoch=epoch, metrics=metrics))

        return on_epoch

    def user_factors(self, fold_in: sp.csr_matrix) -> np.ndarray:
        """Ridge user factors (n_rows, factors + 1) float32 of the histories (see the class doc)."""
        q = self.item_factors_
        assert q is not None
        if self._fold_in_cache is None:
            # Q (QᵀQ + λI)⁻¹, (n_items, factors + 1): solved once in float64, kept for every batch
            q64 = q.astype(np.float64)
            gram = q64.T @ q64
            gram[np.diag_indices_from(gram)] += self.fold_in_regularization
            chol = scipy.linalg.cho_factor(gram, overwrite_a=True)
            self._fold_in_cache = scipy.linalg.cho_solve(chol, q64.T).T.astype(np.float32)
        return np.asarray(fold_in.astype(np.float32) @ self._fold_in_cache)

    def _score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        assert self.item_factors_ is not None
        return self.user_factors(fold_in) @ self.item_factors_.T


@dataclass(eq=False)
class ItemKNN(Recommender):
    """Item-item nearest neighbours fitted by ``implicit`` (``CosineRecommender`` or
    ``BM25Recommender``).

    ``similarity_`` is the sparse (n_items, n_items) matrix S that keeps, for each item (row),
    its ``k`` most similar items; a history x scores ``x @ S``, exactly the sum that implicit's
    ``recommend`` takes over a user's items. ``k1`` and ``b`` are BM25's and ignored for cosine.
    Fields default to implicit's (K=20, K1=1.2, B=0.75).

    Example::

        model = ItemKNN(similarity="bm25", k=100).fit(dataset)
        scores = model.score(dataset.test.fold_in[:100])   # (100, n_items) float32
    """

    name: ClassVar[str] = "item-knn"
    similarity: str = "cosine"
    k: int = 20
    k1: float = 1.2
    b: float = 0.75
    num_threads: int = 0
    similarity_: sp.csr_matrix | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_choice(self, "similarity", SIMILARITIES)
        check_int(self, "k", minimum=1)
        check_int(self, "num_threads", minimum=0)
        check_real(self, "k1", low=0.0)
        check_real(self, "b", low=0.0, high=1.0)

    def fit(
        self,
        dataset: Dataset,
        *,
        callbacks: Sequence[Callback] = (),
        show_progress: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> ItemKNN:
        """Compute the item-item similarity on ``dataset.train``; reports ``fit_seconds`` once."""
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
        from implicit.utils import ParameterWarning

        start = time.perf_counter()
        train = sp.csr_matrix(training_matrix(dataset, self.name), dtype=np.float32)
        if self.similarity == "bm25":
            model = BM25Recommender(K=self.k, K1=self.k1, B=self.b, num_threads=self.num_threads)
        else:
            model = CosineRecommender(K=self.k, num_threads=self.num_threads)
        with warnings.catch_warnings():
            # implicit hands its own re-weighted COO matrix to all_pairs_knn, then warns about it
            warnings.simplefilter("ignore", ParameterWarning)
            model.fit(train, show_progress=False)  # one pass, seconds at most: no unlabeled bar
        self.similarity_ = sp.csr_matrix(model.similarity, dtype=np.float32)
        self.item_ids_ = dataset.item_ids
        report_fit_seconds(callbacks, start)
        return self

    def _score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        assert self.similarity_ is not None
        return (fold_in.astype(np.float32) @ self.similarity_).toarray()

    def _save_state(self, path: Path) -> None:
        assert self.similarity_ is not None
        sp.save_npz(path / "similarity.npz", self.similarity_, compressed=False)

    def _load_state(self, path: Path) -> None:
        similarity = load_npz(path / "similarity.npz", f"the {self.name} similarity matrix")
        if similarity.shape != (self.n_items, self.n_items):
            raise RecvaeError(
                f"{path / 'similarity.npz'}: shape {similarity.shape}; expected "
                f"{(self.n_items, self.n_items)} (the items of items.parquet)"
            )
        self.similarity_ = similarity
