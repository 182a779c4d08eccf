"""Data-parallel training helpers (``torch.distributed``): one process per rank, no-ops alone.

``torchrun --nproc_per_node N -m training.train ...`` starts N processes and tells each its place
through environment variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT``). :func:`init` reads them and joins the process group (gloo on
the CPU, NCCL on CUDA); without them (plain ``python -m training.train``, or an experiment
calling :func:`training.train.run` in-process) the world is one process, no group is created and
every helper here returns at once, so single-process training is untouched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

#: How long a collective (barrier, broadcast, all-reduce) waits for the other ranks before it
#: raises: a rank that died outside torchrun (which stops the others itself) cannot hang the
#: rest forever. Rank 0 validates and writes checkpoints while the others wait, well within it;
#: a cold pseudo-label cache (rank 0 labels it first) may not be: fill it beforehand
#: (``python -m training.pseudolabel``).
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a data-parallel run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # ranks on this machine (they share its cores)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # init created the process group, so teardown destroys it

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files, prints and validates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def env_world(environ: Mapping[str, str] | None = None) -> tuple[int, int, int, int]:
    """``(rank, size, local_rank, local_size)`` from torchrun's variables; ``(0, 1, 0, 1)``
    without them."""
    env = os.environ if environ is None else environ
    size = int(env.get("WORLD_SIZE", 1))
    rank = int(env.get("RANK", 0))
    local_rank = int(env.get("LOCAL_RANK", rank))
    local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    if size < 1 or not 0 <= rank < size or not 0 <= local_rank < local_size <= size:
        raise ValueError(
            f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={size} "
            f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_size}"
        )
    return rank, size, local_rank, local_size


def init(device: str = "cpu", timeout: timedelta = TIMEOUT) -> World:
    """This process's :class:`World`, joining the process group when torchrun started several.

    ``device``: ``"cpu"`` (backend gloo) or ``"cuda"`` (rank ``r`` uses GPU ``LOCAL_RANK``,
    backend NCCL). A group that already exists (made by the caller) is used, not re-created.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch.cuda.is_available() is False")
    rank, size, local_rank, local_size = env_world()
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timeout, rank=rank, world_size=size)
        owns = True
    return World(rank, size, local_rank, local_size, dev, owns)


def teardown(world: World) -> None:
    """Destroy the process group if :func:`init` made it."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Wait until every rank got here."""
    if world.distributed:
        dist.barrier()


def broadcast(obj: Any, world: World, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (any picklable Python object; others pass None)."""
    if not world.distributed:
        return obj
    box = [obj if world.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=world.device)
    return box[0]


def all_reduce_mean(value: float, world: World) -> float:
    """The mean of ``value`` over the ranks (e.g. each rank's training loss)."""
    if not world.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / world.size


def threads_per_rank(threads: int, world: World) -> int:
    """Intra-op threads of one rank: the ``threads`` budget of a machine split among the CPU
    ranks on it (a CUDA rank keeps all: its CPU threads only feed the GPU)."""
    if world.distributed and world.device.type == "cpu":
        return max(1, threads // world.local_size)
    return threads
