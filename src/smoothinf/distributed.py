"""Data-parallel helpers: the same command under ``torchrun --nproc_per_node N`` runs N ranks.

Rank, world size and the backend come from torchrun's environment (RANK, WORLD_SIZE, ...); gloo on
the CPU, NCCL on CUDA. Without torchrun everything degrades to one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (idempotent); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a list of numbers over ranks (float64)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather_json(items: list, info: DistInfo) -> list:
    """Concatenate every rank's list of JSON-serialisable items (exchanged as JSON text)."""
    import json

    if not info.enabled:
        return list(items)
    texts: list[str | None] = [None] * info.world_size
    dist.all_gather_object(texts, json.dumps(items))
    return [item for text in texts for item in json.loads(text)]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown_distributed(wait: bool = True) -> None:
    """Leave the process group, if joined; with ``wait``, only once every rank got here (a rank that
    exits while its peers still talk to it makes gloo abort them with SIGABRT)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def shard_indices(n: int, rank: int, world_size: int) -> slice:
    """Contiguous shard of ``range(n)`` for ``rank`` (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))
