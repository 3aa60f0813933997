"""Ingestion: raw logs → tidy interactions → preprocessing → splits → a Dataset on disk."""

from recvae.data.dataset import Dataset, Part

__all__ = ["Dataset", "Part"]
