"""Data-parallel training across processes with ``torch.distributed``: which process this is,
how its process group starts, and the few collectives the training loop needs.

Processes are started by ``torchrun`` (``python -m torch.distributed.run``), which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and the rendezvous address;
recvae never forks or supervises processes itself. Outside torchrun (or before
:func:`init_from_env`) every function here describes a single process: rank 0 of 1.

Example::

    # torchrun --nproc_per_node 2 -m recvae train ...   (the CLI calls init_from_env)
    init_from_env()
    rank, world_size = world()
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Any

import torch
import torch.distributed as dist

from recvae.errors import RecvaeError

# A rank that dies leaves the others waiting in a collective; torchrun then stops them, but a
# process group started some other way must not hang forever.
TIMEOUT = datetime.timedelta(minutes=30)


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun with more than one process in all."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment (no-op when already in one,
    or when this is the only process). Returns whether this process now trains distributed.

    Backends: gloo for CPU tensors and NCCL for CUDA tensors where this torch build has NCCL, so
    one group serves either device.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if not launched_by_torchrun():
        return False
    if not dist.is_available():
        raise RecvaeError("this torch build has no torch.distributed; run a single process")
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return dist.get_world_size() > 1


def shutdown() -> None:
    """Leave the process group (at the end of a distributed command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes checkpoints, models and MLflow runs."""
    return world()[0] == 0


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_device(device: torch.device) -> torch.device:
    """``device`` for this process: under torchrun, ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU
    per process); an explicit index and the CPU are kept."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank() if launched_by_torchrun() else 0)
    return device


def default_threads() -> int:
    """Intra-op threads for this process: the cores it may use, shared among the processes
    torchrun started on this machine (``LOCAL_WORLD_SIZE``), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the processes (in place; unchanged for a single process)."""
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    """Wait until every process gets here (no-op for a single process)."""
    if world()[1] > 1:
        dist.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (a picklable value; itself for a single process)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def torchrun_command(nproc: int) -> list[str]:
    """The command that starts ``python -m recvae`` in ``nproc`` processes on this machine
    (torchrun's standalone rendezvous picks a free port); append the recvae arguments."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(int(nproc)), "-m", "recvae",
    ]
