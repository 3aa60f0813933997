"""recvae: collaborative filtering with autoencoders (Mult-VAE, Mult-DAE) and strong baselines."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recvae")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from recvae.errors import RecvaeError

__all__ = ["RecvaeError", "__version__"]
