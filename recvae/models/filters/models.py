"""GF-CF, BSPM and ChebyCF: training-free graph filters over the item graph P = R̃ᵀR̃.

Each model scores a batch of histories r (rows of fold-in, any users) as a filter of P plus
an "ideal" low-pass part built from the top singular vectors V of R̃ (see ``graph.py``):

    GF-CF    s = r P + α · r D^{-1/2} V Vᵀ D^{1/2}                            (Shen et al. 2021)
    BSPM     s = S(P)[ B(P) r + β_idl · r D^{-1/2} V Vᵀ D^{1/2} ]               (Choi et al. 2023)
             B: Euler steps of the blurring ODE dy/dt = yP − y,
             S: Euler or RK4 steps of the sharpening ODE dy/dt = −yP
    ChebyCF  s = [ Σ_k c_k T_k(L̃)(r D^{-β}) + α · r D^{-β} V Vᵀ ] D^{β},      (Kim et al. 2025)
             L̃ = I − 2P, c_k: Chebyshev interpolation of a plateau-shaped low-pass h_φ

(row-vector form, as in the papers; the code works on the transposes, see ``graph.py``).
Fitting computes R̃, the degrees and V, nothing else; the SVD is shared through a cache keyed
by the training matrix and the rank, so the trials of a search pay for it once. GF-CF and
ChebyCF are sums of fixed bases weighted by their hyper-parameters (GF-CF's α; ChebyCF's φ,
through c_k, and α): the bases of a scored batch are cached too (:data:`BASIS_CACHE`), so a
trial that changes only those re-weights them instead of recomputing the products with P.

An item without training interactions scores 0, for every user and every setting.

Example::

    model = ChebyCF().fit(dataset)                    # Gowalla: K = 8, φ = 1.5, η = 512, α = 0.2, β = 0.4
    scores = model.score(dataset.test.fold_in[:100])  # (100, n_items) float32
"""

from __future__ import annotations

import os
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from scipy.linalg.blas import saxpy

from recvae.batching import row_batches
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.io import load_npz, save_npy
from recvae.models.base import (
    Callback,
    Recommender,
    load_state_array,
    report_fit_seconds,
    training_matrix,
)
from recvae.models.filters.cache import ArrayCache, digest_csr
from recvae.models.filters.graph import OPERATORS, ItemGraph, ideal_basis
from recvae.models.params import check_choice, check_int, check_real

#: Bytes of one item-major float32 signal (n_items × rows) of a scoring chunk. Small enough to
#: stay in the CPU's caches while R̃'s products sweep it: ChebyCF on Gowalla took 5.6 CPU-s per
#: 1,024 users in chunks of 8 MB (51 users) against 8.7 s in chunks of 128 MB (818 users); 4 MB
#: 6.2 s, 16 MB 6.0 s (one core, same process). It also bounds scoring's temporaries.
SIGNAL_BYTES = 8 << 20
#: Polynomial bases of scored batches kept for the next trial of a search (see ``cache.py``).
#: Where a validation pass's bases are far larger (Gowalla, ChebyCF: 9 + 1 bases × 30k users ×
#: 41k items = 44 GB), no chunk fits and nothing is kept.
BASIS_CACHE = ArrayCache(max_bytes=512 << 20)
SOLVERS = ("euler", "rk4")


@dataclass(eq=False)
class GraphFilter(Recommender):
    """Base of the graph filters: fit (R̃, degrees, V), the batched scorer, save and load.

    ``operator`` picks how P is applied: ``sparse`` (R̃ᵀ(R̃ x), always possible), ``dense`` (one
    n_items² float32 matrix; refused when it cannot fit in memory) or ``auto`` (dense only where
    it is faster and fits). The scores are the same up to float32 rounding.
    Learned state: ``graph_`` (the :class:`ItemGraph`) and ``ideal_`` (V, (n_items, k) float32;
    k = 0 when the ideal part's weight is 0).
    """

    name: ClassVar[str] = "graph-filter"
    #: The hyper-parameter that sets the ideal pass's rank (named in errors).
    rank_param: ClassVar[str] = "k"
    operator: str = "auto"
    graph_: ItemGraph | None = field(default=None, init=False, repr=False, compare=False)
    ideal_: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_choice(self, "operator", OPERATORS)

    # ----------------------------------------------------------- each filter's own part
    @property
    @abstractmethod
    def _rank(self) -> int:
        """k of the ideal pass V Vᵀ; 0 when its weight is 0 (no SVD is computed)."""

    @abstractmethod
    def _filter(self, x: sp.csr_matrix) -> np.ndarray:
        """Scores (n_items, b) of an item-major batch x: CSR (n_items, b), the fold-in rows' transpose."""

    # ----------------------------------------------------------------- contract
    def fit(
        self,
        dataset: Dataset,
        *,
        callbacks: Sequence[Callback] = (),
        show_progress: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> GraphFilter:
        """Compute R̃, the item degrees and V from ``dataset.train``; reports ``fit_seconds`` once."""
        start = time.perf_counter()
        train = training_matrix(dataset, self.name)
        self.graph_ = self.ideal_ = None  # a refit must not hold the old dense P beside the new one
        graph = ItemGraph.of(train)
        graph.densify(self.operator, self.name)
        self.ideal_ = self._ideal_basis(graph)
        self.graph_ = graph
        self.item_ids_ = dataset.item_ids
        report_fit_seconds(callbacks, start)
        return self

    def _score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        assert self.graph_ is not None
        graph, (n_rows, n_items) = self.graph_, fold_in.shape
        out = np.empty((n_rows, n_items), dtype=np.float32)

        def score_chunk(rows: slice) -> None:
            scores = self._filter(fold_in[rows].astype(np.float32).T.tocsr())
            # degree-0 items: their weights D^{±p} are 0 already (the authors' 1/sqrt(0) gives
            # NaN in GF-CF and BSPM); this keeps them 0 whatever a filter's formula does
            scores[graph.zero_degree] = 0.0
            out[rows] = scores.T

        # Chunks run in threads, one per core we may use: scipy's sparse products and numpy's
        # element-wise passes release the GIL, and a chunk's work is independent of the others'
        workers = available_cores()
        n_chunks = -(-n_rows // max(1, SIGNAL_BYTES // (4 * n_items)))
        n_chunks = -(-n_chunks // workers) * workers  # equal chunks, a whole number per worker
        chunks = list(row_batches(n_rows, max(1, -(-n_rows // n_chunks))))
        if workers == 1 or len(chunks) == 1:
            for rows in chunks:
                score_chunk(rows)
        else:
            with ThreadPoolExecutor(min(workers, len(chunks))) as pool:
                list(pool.map(score_chunk, chunks))
        return out

    def _save_state(self, path: Path) -> None:
        assert self.graph_ is not None and self.ideal_ is not None
        sp.save_npz(path / "normalized.npz", self.graph_.normalized, compressed=False)
        save_npy(path / "item_degree.npy", self.graph_.item_degree)
        save_npy(path / "ideal.npy", self.ideal_)

    def _load_state(self, path: Path) -> None:
        normalized = load_npz(path / "normalized.npz", f"the {self.name} normalized matrix R̃")
        if normalized.shape[1] != self.n_items or normalized.dtype != np.float32:
            raise RecvaeError(
                f"{path / 'normalized.npz'}: {normalized.dtype} matrix of shape {normalized.shape}; "
                f"expected float32 with {self.n_items} columns (the items of items.parquet)"
            )
        degree = load_state_array(path / "item_degree.npy", self.name, (self.n_items,))
        self.ideal_ = load_state_array(path / "ideal.npy", self.name, (self.n_items, self._rank))
        normalized.sort_indices()
        graph = ItemGraph(normalized=normalized, item_degree=degree)
        graph.densify(self.operator, self.name)
        self.graph_ = graph

    # ------------------------------------------------------------------ shared parts
    def _ideal_basis(self, graph: ItemGraph) -> np.ndarray:
        if self._rank == 0:
            return np.zeros((graph.n_items, 0), dtype=np.float32)
        return ideal_basis(graph, self._rank, self.name, self.rank_param)

    def _ideal(self, x: sp.csr_matrix, power: float) -> np.ndarray:
        """D^p V Vᵀ D^{-p} x (n_items, b): the ideal low-pass filter of the sparse batch x (row form:
        r D^{-p} V Vᵀ D^p)."""
        assert self.graph_ is not None and self.ideal_ is not None
        g, v = self.graph_, self.ideal_
        # Vᵀ(D^{-p} x) from the sparse x costs nnz(x) × k; only V(·) is a dense product
        projected = np.asarray(x.T.multiply(g.degree_power(-power).T) @ v).T
        return (v @ projected) * g.degree_power(power)


@dataclass(eq=False)
class LinearGraphFilter(GraphFilter):
    """A filter that is a fixed sum of bases: scores = post(Σ_j c_j · basis_j(x)), where the bases
    depend only on :meth:`_basis_key`'s hyper-parameters and c_j on the others.

    The bases of a batch are kept in :data:`BASIS_CACHE` (when they fit), keyed by the graph, the
    basis hyper-parameters and the batch's content, and re-weighted by later models: the trials of
    a search that change only the weights skip every product with P. The bases are summed in the
    same order either way, so a cached batch scores bit for bit like a computed one.
    """

    @abstractmethod
    def _bases(self, x: sp.csr_matrix) -> Iterator[np.ndarray]:
        """The bases (n_items, b) of the batch, in the order of :meth:`_coefficients`."""

    @abstractmethod
    def _coefficients(self) -> np.ndarray:
        """The weights c_j (float32) of the bases."""

    @abstractmethod
    def _basis_key(self) -> tuple:
        """The hyper-parameters that the bases depend on."""

    def _post(self, combined: np.ndarray) -> np.ndarray:
        """What follows the weighted sum (ChebyCF: the degree post-normalisation)."""
        return combined

    def _filter(self, x: sp.csr_matrix) -> np.ndarray:
        assert self.graph_ is not None
        coefficients = self._coefficients()
        shape = (len(coefficients), *x.shape)
        group = (self.graph_.key, self.name, self._basis_key())
        # once a pass has filled the cache, its later batches are neither looked up nor copied
        cacheable = BASIS_CACHE.has_room(4 * int(np.prod(shape)), group=group)
        key = (*group, digest_csr(x)) if cacheable else None
        bases = BASIS_CACHE.get(key) if cacheable else None
        kept = None
        if bases is None:
            bases = self._bases(x)
            kept = np.empty(shape, dtype=np.float32) if cacheable else None
        combined = np.zeros(x.shape[0] * x.shape[1], dtype=np.float32)
        for j, (c, basis) in enumerate(zip(coefficients, bases, strict=True)):
            if kept is not None:
                kept[j] = basis
            # combined += c · basis: one pass, no temporary (BLAS saxpy, in place on the
            # contiguous float32 ``combined``, which it returns)
            combined = saxpy(basis.reshape(-1), combined, a=c)
        if kept is not None:
            BASIS_CACHE.put(key, kept, group=group)
        return self._post(combined.reshape(x.shape))


@dataclass(eq=False)
class GFCF(LinearGraphFilter):
    """GF-CF (Shen et al., CIKM 2021): s = r P + α · r D^{-1/2} V Vᵀ D^{1/2}.

    ``alpha`` (α ≥ 0) weighs the ideal low-pass part, ``k`` is its rank (the top-k singular
    vectors of R̃). Defaults: the authors' Gowalla and Yelp2018 setting (α = 0.3, k = 256;
    their Amazon-book run takes α = 0).
    """

    name: ClassVar[str] = "gf-cf"
    alpha: float = 0.3
    k: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        check_real(self, "alpha", low=0.0)
        check_int(self, "k", minimum=1)

    @property
    def _rank(self) -> int:
        return self.k if self.alpha > 0 else 0

    def _basis_key(self) -> tuple:
        return (self._rank,)

    def _coefficients(self) -> np.ndarray:
        return np.array([1.0, self.alpha][: 1 + (self._rank > 0)], dtype=np.float32)

    def _bases(self, x: sp.csr_matrix) -> Iterator[np.ndarray]:
        assert self.graph_ is not None
        yield self.graph_.propagate(x)
        if self._rank:
            yield self._ideal(x, 0.5)


@dataclass(eq=False)
class BSPM(GraphFilter):
    """BSPM (Choi et al., SIGIR 2023): blur, then sharpen, with the ideal part merged in.

    Blurring integrates dy/dt = yP − y from y(0) = r over ``blur_time`` in ``blur_steps`` Euler
    steps; the ideal part is r D^{-1/2} V Vᵀ D^{1/2} (rank ``factor_dim``), weighted by
    ``idl_beta``; sharpening integrates dy/dt = −yP over ``sharpen_time`` in ``sharpen_steps``
    steps of ``solver`` (``euler`` or ``rk4``). ``early_merge`` (the authors' EM,
    ``final_sharpening=True``) adds the ideal part before sharpening, else after it (LM).

    Defaults: the authors' Gowalla script (RK4, one sharpening step, T_s = 2.5, β_idl = 0.2,
    448 singular vectors, EM; blurring and the ideal part at their defaults: one Euler step
    over T = 1, which is exactly r P and r D^{-1/2} V Vᵀ D^{1/2}).

    Where we differ from the authors' code: blurring and the ideal ODE are integrated with Euler
    only (their default and every published script); ``t_point_combination`` (their Yelp2018
    option), ``sharpening_off`` and the ideal ODE's own T and K (each published run uses one step
    over T = 1, the ideal filter itself) are not offered. Their RK4 is torchdiffeq's, Kutta's
    3/8 rule, which we follow: on this linear ODE every 4-stage 4th-order step is the same
    polynomial, Σ_{j ≤ 4} (−hP)^j / j!. The sharpening polynomial's coefficients enter before its
    products with P, so, unlike GF-CF and ChebyCF, no basis is reused across a search (only V).
    """

    name: ClassVar[str] = "bspm"
    rank_param: ClassVar[str] = "factor_dim"
    factor_dim: int = 448
    idl_beta: float = 0.2
    blur_time: float = 1.0
    blur_steps: int = 1
    sharpen_time: float = 2.5
    sharpen_steps: int = 1
    solver: str = "rk4"
    early_merge: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "factor_dim", minimum=1)
        check_real(self, "idl_beta", low=0.0)
        check_real(self, "blur_time", low=0.0)
        check_int(self, "blur_steps", minimum=1)
        check_real(self, "sharpen_time", low=0.0)
        check_int(self, "sharpen_steps", minimum=1)
        check_choice(self, "solver", SOLVERS)
        if not isinstance(self.early_merge, bool):
            raise RecvaeError(f"{self.name}: early_merge must be true or false, got {self.early_merge!r}")

    @property
    def _rank(self) -> int:
        return self.factor_dim if self.idl_beta > 0 else 0

    def _filter(self, x: sp.csr_matrix) -> np.ndarray:
        assert self.graph_ is not None
        propagate = self.graph_.propagate
        y: np.ndarray | sp.csr_matrix = x
        tau = self.blur_time / self.blur_steps
        for _ in range(self.blur_steps):  # Euler: y ← y + τ(P y − y)
            py = propagate(y)
            y = (1.0 - tau) * (y.toarray() if sp.issparse(y) else y) + tau * py
        assert isinstance(y, np.ndarray)
        ideal = self.idl_beta * self._ideal(x, 0.5) if self._rank else 0.0
        if self.early_merge:
            return self._sharpen(y + ideal)
        return self._sharpen(y) + ideal

    def _sharpen(self, y: np.ndarray) -> np.ndarray:
        """``sharpen_steps`` steps of dy/dt = −P y over ``sharpen_time``."""
        assert self.graph_ is not None
        propagate = self.graph_.propagate
        h = self.sharpen_time / self.sharpen_steps
        for _ in range(self.sharpen_steps):
            if self.solver == "euler":
                y = y - h * propagate(y)
                continue
            # Kutta's 3/8 rule, as torchdiffeq's "rk4" (the authors' solver), with f(y) = −P y
            k1 = -propagate(y)
            k2 = -propagate(y + (h / 3) * k1)
            k3 = -propagate(y + h * (k2 - k1 / 3))
            k4 = -propagate(y + h * (k1 - k2 + k3))
            y = y + (h / 8) * (k1 + 3 * (k2 + k3) + k4)
        return y


@dataclass(eq=False)
class ChebyCF(LinearGraphFilter):
    """ChebyCF (Kim et al., SIGIR 2025): a Chebyshev interpolant of a plateau low-pass filter of
    P, an ideal pass and degree normalisation.

        s = [ Σ_{k ≤ K} c_k T_k(L̃)(r D^{-β}) + α · r D^{-β} V Vᵀ ] D^{β},   L̃ = I − 2P

    ``order`` (K) is the polynomial's degree (K products with P per batch), ``phi`` (φ > 0) the
    plateau's flatness (:func:`plateau_coefficients`), ``eta`` (η) the ideal pass's rank and
    ``alpha`` (α ≥ 0) its weight, ``beta`` (β ≥ 0) the degree normalisation's power. Defaults:
    the authors' Gowalla configuration (K = 8, φ = 1.5, η = 512, α = 0.2, β = 0.4).

    Where we differ from the authors' code: with β = 0 they skip the normalisation and an item
    without training interactions passes its own input through (weight T_k(1) summed, ≈ h(1));
    here it scores 0 like every degree-0 item. The bases T_k(L̃)(r D^{-β}) and the ideal part
    depend on K, β and η only: a search over φ and α re-weights cached bases (see ``cache.py``).
    """

    name: ClassVar[str] = "chebycf"
    rank_param: ClassVar[str] = "eta"
    order: int = 8
    phi: float = 1.5
    eta: int = 512
    alpha: float = 0.2
    beta: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "order", minimum=1)
        check_real(self, "phi", low=0.0, low_open=True)
        check_int(self, "eta", minimum=1)
        check_real(self, "alpha", low=0.0)
        check_real(self, "beta", low=0.0)

    @property
    def _rank(self) -> int:
        return self.eta if self.alpha > 0 else 0

    def _basis_key(self) -> tuple:
        return (self.order, self.beta, self._rank)

    def _coefficients(self) -> np.ndarray:
        c = plateau_coefficients(self.order, self.phi)
        return np.append(c, self.alpha).astype(np.float32) if self._rank else c.astype(np.float32)

    def _bases(self, x: sp.csr_matrix) -> Iterator[np.ndarray]:
        """T_0 … T_K of L̃ applied to D^{-β} x (by the three-term recurrence), then V Vᵀ D^{-β} x."""
        assert self.graph_ is not None and self.ideal_ is not None
        g = self.graph_
        normalized = x.multiply(g.degree_power(-self.beta)).tocsr()
        previous = normalized.toarray()
        yield previous
        current = previous - 2 * g.propagate(normalized)  # T_1 = L̃ T_0
        yield current
        for _ in range(2, self.order + 1):  # T_{k+1} = 2 L̃ T_k − T_{k−1} = 2 T_k − 4 P T_k − T_{k−1}
            following = g.propagate(current)
            following *= -4.0
            following += current
            following += current
            following -= previous
            previous, current = current, following
            yield current
        if self._rank:
            v = self.ideal_
            yield v @ np.asarray(normalized.T @ v).T

    def _post(self, combined: np.ndarray) -> np.ndarray:
        assert self.graph_ is not None
        combined *= self.graph_.degree_power(self.beta)
        return combined


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask: 1 under ``taskset -c 0``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def plateau_coefficients(order: int, phi: float) -> np.ndarray:
    """c_0 … c_K (float64) of ChebyCF's filter: the degree-K Chebyshev interpolant of a plateau.

    On L̃'s spectrum x ∈ [−1, 1] (x = 1 − 2λ for an eigenvalue λ of P), the plateau is
    h_φ(x) = 1/2 − sign(x)|x|^φ / 2: 1 at the lowest frequency (x = −1, λ = 1), 0 at the highest,
    λ itself (the linear filter P) at φ = 1, and for φ > 1 a plateau at 1/2 across the middle of
    the spectrum that widens as φ grows. As in the authors' code (which we follow, because the published
    numbers come from it): h_φ is sampled at the Chebyshev extrema cos((K − j)π/K), both the
    points and the values rounded to 3 decimals, and the samples are assigned to the K + 1
    Chebyshev nodes cos((K + ½ − j)π/(K + 1)), j = 0 … K, where the interpolant matches them:
    c_k = 2/(K+1) Σ_j h_j T_k(node_j), c_0 halved. (Sampling h_φ at the nodes themselves would
    be the textbook interpolant; the code's pairing warps the spectrum slightly.)
    """
    j = np.arange(order + 1)
    points = np.round(np.cos((order - j) / order * np.pi), 3)
    target = np.round(0.5 - 0.5 * np.sign(points) * np.abs(points) ** phi, 3)
    nodes = np.cos((order + 0.5 - j) / (order + 1) * np.pi)
    chebyshev = np.cos(np.outer(j, np.arccos(nodes)))  # T_k(node_j), k along rows
    coefficients = 2.0 / (order + 1) * chebyshev @ target
    coefficients[0] /= 2
    return coefficients
