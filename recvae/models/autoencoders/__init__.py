"""The autoencoder family: networks (``nets``), the one training loop (``training``) with its
optimizers (``optim``) and checkpoint I/O (``checkpoint``), and the Recommender wrappers
(``models``). Imports run one way: models → training → optim, checkpoint, nets → base."""

from recvae.models.autoencoders.models import (
    Autoencoder,
    MultDAE,
    MultVAE,
    RecVAE,
    resolve_device,
)
from recvae.models.autoencoders.nets import SparseRows

__all__ = ["Autoencoder", "MultDAE", "MultVAE", "RecVAE", "SparseRows", "resolve_device"]
