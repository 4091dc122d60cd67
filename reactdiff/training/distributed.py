"""DistributedDataParallel under ``torchrun``: who this process is, and the process group's lifetime."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# --------------------------------------------------------------------------------------------------
# Distributed context
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank and world size from the initialised process group, else from torchrun's environment."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), local_rank, dist.get_world_size())
    return DistInfo(int(os.environ.get("RANK", "0")), local_rank, int(os.environ.get("WORLD_SIZE", "1")))


@contextlib.contextmanager
def ddp_context(device: torch.device | None = None) -> Iterator[DistInfo]:
    """Initialise the default process group when ``WORLD_SIZE > 1`` (torchrun) and tear it down after.

    The backend is nccl for a CUDA ``device`` and gloo otherwise; rendezvous is torchrun's ``env://``
    (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``). A group that is already initialised
    is used as is and left alone. Single process: yields ``DistInfo()`` and does nothing.
    """
    info = dist_info()
    created = False
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **kwargs)
        created = True
        info = dist_info()
    try:
        yield info
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _barrier(info: DistInfo, device: torch.device) -> None:
    if not info.distributed:
        return
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model
