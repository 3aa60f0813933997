"""The autoencoder family: networks (``nets``), the one training loop (``training``) and the
Recommender wrappers (``models``). Imports run one way: models → training → nets → base."""

from recvae.models.autoencoders.models import (
    Autoencoder,
    MultDAE,
    MultVAE,
    RecVAE,
    resolve_device,
)
from recvae.models.autoencoders.nets import SparseRows

__all__ = ["Autoencoder", "MultDAE", "MultVAE", "RecVAE", "SparseRows", "resolve_device"]
