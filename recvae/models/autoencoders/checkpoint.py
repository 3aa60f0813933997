"""Checkpoint I/O of the training loop: one file, written atomically after each epoch.

A checkpoint holds the network's weights, the step's optimizers by name, the loop's state
(``TrainState`` as a dict) and the fingerprint that must match to resume (the model's config
and the data's shape). Files are read with ``torch.load(weights_only=True)``: tensors and
plain containers only, never other pickled objects.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recvae.errors import RecvaeError
from recvae.io import atomic_file, binary_sink

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 2


@dataclass
class Checkpointing:
    """Where to checkpoint, whether to resume, and what must match to resume.

    ``fingerprint`` (the model's config and data shape) must equal the checkpoint's.
    """

    directory: str | os.PathLike
    resume: bool = False
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.directory) / CHECKPOINT_FILE


_TORCH_ZIP = b"PK\x03\x04"  # torch.save has written zip archives since PyTorch 1.6


def save_tensors(obj: Any, path: Path) -> None:
    """``torch.save`` whose write errors keep their errno (a full disk is one line, not
    torch's "unexpected pos")."""
    with binary_sink(path) as f:
        torch.save(obj, f)


def load_tensors(path: Path, device: torch.device | str, expected: str) -> Any:
    """``torch.load`` of a file :func:`save_tensors` wrote, tensors and plain containers only.

    A missing, truncated or foreign file, or one holding other pickled objects (refused, never
    run), is a RecvaeError naming ``path`` and what was ``expected``.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(_TORCH_ZIP))
    except FileNotFoundError:
        raise RecvaeError(f"{path}: no such file; expected {expected}") from None
    if head != _TORCH_ZIP:
        # Older torch files and plain pickles: refused before torch looks at them.
        raise RecvaeError(
            f"{path}: not a PyTorch zip archive (it starts with {head!r}); expected {expected}"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # weights_only met something other than tensors
        raise RecvaeError(
            f"{path}: refused: it holds pickled Python objects beyond tensors, which recvae never "
            f"loads; expected {expected}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # torch's damaged-archive errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecvaeError(f"{path}: cannot read ({first[:160]}); expected {expected}") from None


def save_checkpoint(
    checkpoint: Checkpointing,
    net: torch.nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    state: dict[str, Any],
) -> None:
    """Write ``checkpoint.path`` atomically: the format, the fingerprint, the loop's ``state``
    (a dict of plain values and CPU tensors), ``net``'s weights and the ``optimizers`` by name."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": checkpoint.fingerprint,
        "state": state,
        "net": net.state_dict(),
        "optimizers": {k: opt.state_dict() for k, opt in optimizers.items()},
    }
    with atomic_file(checkpoint.path) as tmp:
        save_tensors(payload, tmp)


def load_checkpoint(
    checkpoint: Checkpointing,
    net: torch.nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    device: torch.device,
    name: str,
) -> dict[str, Any]:
    """Load ``checkpoint.path`` into ``net`` and ``optimizers``; return the saved loop state.

    A file of another format, trained on other items, with another fingerprint or other
    optimizers than this run's is a RecvaeError naming the path (``name`` is the model's).
    """
    path = checkpoint.path
    ckpt = load_tensors(path, device, "a recvae training checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RecvaeError(
            f"{path}: not a recvae training checkpoint of format {CHECKPOINT_FORMAT}; "
            "remove it or use another checkpoint directory"
        )
    saved, fingerprint = ckpt["fingerprint"], checkpoint.fingerprint
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
    if set(ckpt["optimizers"]) != set(optimizers):
        raise RecvaeError(f"{path}: checkpoint's optimizers do not match {name}'s")
    net.load_state_dict(ckpt["net"])
    for key, opt in optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][key])
    saved_state = dict(ckpt["state"])
    if "seconds" not in saved_state:  # written before the count existed: the epochs' own times
        saved_state["seconds"] = sum(
            h.get("epoch_seconds", 0.0) + h.get("val_seconds", 0.0) for h in saved_state["history"]
        )
    return saved_state
