"""Training-free graph filters: GF-CF, BSPM and ChebyCF over one normalized item graph.

``graph.py`` holds what they share (R̃ = D_u^{-1/2} R D_i^{-1/2}, P = R̃ᵀR̃ applied to batches,
the truncated SVD behind the ideal low-pass part), ``models.py`` the three filters and their
batched scorer, ``cache.py`` the bounded in-process cache that lets the trials of a search reuse
SVDs and polynomial bases.
"""

from recvae.models.filters.models import BSPM, GFCF, ChebyCF, GraphFilter

__all__ = ["BSPM", "GFCF", "ChebyCF", "GraphFilter"]
