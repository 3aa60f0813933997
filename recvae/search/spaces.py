"""The built-in search spaces of ``search: default``, one per model, in the YAML's own form.

They cover what mattered on the logs we checked, rather than every knob:
- the autoencoders' shape (Mult-VAE with or without the 600-wide layers: I-200-I won on
  Gowalla), the β cap (with ``total_anneal_steps: auto`` the cap alone sets the schedule),
  lr, input dropout and weight decay; the epoch is selected by validation as always;
- EASE's λ over four decades (ML-20M ≈ 500, Gowalla 80), EDLAE's λ and dropout p (p = 0 is EASE);
- ALS factors, regularization and confidence α; BPR factors, learning rate, regularization;
  item-kNN's neighbourhood size and similarity.

Every study first tries the block's own values and the model's defaults (enqueued trials), so
a search never ends below them. Fixed values (epochs, patience, batch size, seed...) stay in the
block's ``params:``. A space
may name a model that is not registered (yet): it is only parsed when a pipeline uses it.
"""

from __future__ import annotations

from typing import Any

_AUTOENCODER = {
    # from the papers' 1e-3 up: a lower lr does not converge within a CPU budget's epochs (on a
    # 6k-user log, trials at lr ≤ 5.3e-4 all ended at a 60-epoch cap still rising)
    "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
    "dropout": {"low": 0.1, "high": 0.8},
    # the low end is no decay in effect (λ/batch_size per weight)
    "weight_decay": {"low": 1.0e-4, "high": 0.1, "log": True},
}

DEFAULT_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "mult-vae": {
        "hidden_dims": {"choices": [[], [600]]},
        "anneal_cap": {"low": 0.1, "high": 1.0},
        **_AUTOENCODER,
    },
    "mult-dae": {
        "hidden_dims": {"choices": [[200], [600, 200]]},
        **_AUTOENCODER,
    },
    # RecVAE (Shenbin et al. 2020): γ scales the per-user KL weight β = γ·|x_u| (0.005 on ML-20M)
    "recvae": {
        "gamma": {"low": 5.0e-4, "high": 0.05, "log": True},
        "lr": {"low": 5.0e-4, "high": 5.0e-3, "log": True},  # the authors' 5e-4 (50 epochs) up
        "dropout": {"low": 0.1, "high": 0.8},
        "hidden_dim": {"choices": [300, 600]},
        "latent_dim": {"choices": [100, 200]},
    },
    "ease": {
        "l2": {"low": 1.0, "high": 1.0e4, "log": True},
    },
    # EDLAE (Steck 2020): λ and the emphasized dropout p (MSD: λ = 70, p = 0.25)
    "edlae": {
        "l2": {"low": 1.0, "high": 1.0e4, "log": True},
        "dropout": {"low": 0.0, "high": 0.75},
    },
    "als": {
        "factors": {"low": 32, "high": 512, "log": True},
        "regularization": {"low": 1.0e-3, "high": 10.0, "log": True},
        "alpha": {"low": 0.1, "high": 100.0, "log": True},
    },
    "bpr": {
        "factors": {"low": 32, "high": 512, "log": True},
        "learning_rate": {"low": 1.0e-3, "high": 0.1, "log": True},
        "regularization": {"low": 1.0e-5, "high": 0.1, "log": True},
    },
    "item-knn": {
        "k": {"low": 10, "high": 1000, "log": True},
        "similarity": {"choices": ["cosine", "bm25"]},
    },
    # Graph filters (recvae/models/filters): the ideal pass's weight and rank, BSPM's sharpening
    # time, ChebyCF's flatness φ and degree power β (on a grid: trials then repeat the values the
    # caches are keyed by). Their trials share the SVD of each rank, and trials that change only
    # GF-CF's α or ChebyCF's φ and α re-weight cached bases (where they fit). The authors'
    # settings: GF-CF α = 0.3, k = 256; BSPM T_s 1.2–2.5, β_idl 0.2, 384–448 vectors; ChebyCF
    # φ 1.5–15, α 0.1–0.2, β 0–0.4, η 256–512.
    "gf-cf": {
        "alpha": {"low": 0.0, "high": 1.0},
        "k": {"choices": [128, 256, 512]},
    },
    "bspm": {
        "sharpen_time": {"low": 0.5, "high": 5.0},
        "idl_beta": {"low": 0.0, "high": 1.0},
        "factor_dim": {"choices": [256, 448, 512]},
    },
    "chebycf": {
        "phi": {"low": 0.5, "high": 20.0, "log": True},
        "alpha": {"low": 0.0, "high": 0.5},
        "beta": {"low": 0.0, "high": 0.6, "step": 0.1},
        "eta": {"choices": [256, 512]},
    },
}
