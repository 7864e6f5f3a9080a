"""The ranks of a run (one process, or torchrun's) and the few collectives the trainer uses outside DDP."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the output folder."""
        return self.rank == 0


def init_ranks() -> Ranks:
    """This process's place in the run: torchrun's process group joined (NCCL on GPU, gloo on CPU) when its
    variables are set, and this rank's device made current."""
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world, local_rank = 0, 1, 0
    if dist.is_initialized():
        rank, world, local_rank = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL object collectives (all_gather_object) use the current device
    return Ranks(rank, world, local_rank, device)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks."""
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's obj, in rank order."""
    if world_size() == 1:
        return [obj]
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
