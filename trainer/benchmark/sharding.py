"""Who encodes which chunk: one process, the ranks of a torchrun job, or N independent shard jobs.

Every process builds the same work list (the chunks of every pool and every pair's queries, in a fixed order)
and takes work item j when j % world == rank; it skips the items already complete in the cache.

- one process (no torchrun, no shard flags): encodes every missing chunk, then searches and scores;
- torchrun (RANK / WORLD_SIZE in the environment): each rank encodes its share, all meet at a barrier, rank 0
  searches and scores (gloo on CPU, nccl on GPU), then all meet again before the process group is destroyed
  (ENVIRONMENT.md: gloo may abort a process when one rank tears down while another is still in a collective);
- shard jobs (`--num_shards N --shard_index I`, e.g. a Slurm array on a shared filesystem): each encodes its share
  and exits; a final run without shard flags finds those chunks cached, encodes what is missing, and scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from common.errors import ConfigError

# Ranks wait at the barriers while others finish their share or rank 0 searches a 5.6M-candidate pool: hours at
# paper scale, so the collective timeout is a day instead of torch's default 10 (nccl) or 30 (gloo) minutes.
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass
class Sharding:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    kind: str = "one process"  # "one process" | "torchrun" | "shard jobs"
    owns_group: bool = False  # this module created the process group and destroys it

    def mine(self, item: int) -> bool:
        return item % self.world == self.rank

    @property
    def distributed(self) -> bool:
        return self.kind == "torchrun"

    @property
    def scores(self) -> bool:
        """This process searches and scores (shard jobs only encode)."""
        return self.rank == 0 and self.kind != "shard jobs"

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, obj: object) -> list:
        """Every rank's `obj`, in rank order (just [obj] outside torchrun)."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.distributed:
            dist.barrier()
            if self.owns_group:
                dist.destroy_process_group()

    def describe(self) -> dict:
        return {"kind": self.kind, "world_size": self.world,
                "backend": dist.get_backend() if self.distributed else None}


def check_flags(num_shards: int | None, shard_index: int | None) -> None:
    """ConfigError unless the shard flags make sense here (both or neither, the index in range, not torchrun)."""
    if (num_shards is None) != (shard_index is None):
        raise ConfigError("--num_shards and --shard_index go together: give both (e.g. --num_shards 4 "
                          "--shard_index 0 for the first of four jobs), or neither")
    if num_shards is None:
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--num_shards/--shard_index are for independent jobs; under torchrun the ranks already "
                          "share the work: drop the shard flags")
    if not 0 <= shard_index < num_shards:
        raise ConfigError(f"--shard_index {shard_index}: must be in 0..{num_shards - 1} for --num_shards {num_shards}")


def from_environment(num_shards: int | None, shard_index: int | None, device: str) -> Sharding:
    """The sharding this process runs under; under torchrun the process group is created here (or reused)."""
    check_flags(num_shards, shard_index)
    if num_shards is not None:
        return Sharding(shard_index, num_shards, kind="shard jobs")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Sharding()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = not dist.is_initialized()
    if owns:
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=BARRIER_TIMEOUT)
    return Sharding(dist.get_rank(), dist.get_world_size(), local_rank, "torchrun", owns)


def rank_device(device: str, sharding: Sharding) -> str:
    """Under torchrun, a bare "cuda" means this rank's own GPU (cuda:LOCAL_RANK)."""
    return f"cuda:{sharding.local_rank}" if sharding.distributed and device == "cuda" else device
