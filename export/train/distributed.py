"""Several training processes started by torch's own launcher: who this process is, and the few collectives a run needs.

    torchrun --nproc_per_node 2 -m export.train --data photos/ --out runs/photos.pt

    world = World.from_env()                  # RANK, WORLD_SIZE, LOCAL_RANK as torchrun sets them
    device = world.start(device)              # init_process_group (gloo on CPU, nccl on CUDA) when size > 1
    loss_sum, correct, seen = world.sum([loss_sum, correct, seen], device)
    world.stop()

Without torchrun (or with one process) ``World`` is rank 0 of 1 and nothing here talks to anyone: the
same command runs unchanged. Validation shards the val set with ``ShardSampler`` (no padding, so every
image counts once) and adds up the correct counts and totals across ranks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator, List, Sequence

import torch
import torch.distributed as dist

from ..errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def from_env(cls) -> "World":
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
            local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
        except ValueError:
            raise UsageError("RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be whole numbers "
                             "(start several processes with torchrun)") from None
        if not (size >= 1 and 0 <= rank < size and 0 <= local_rank < max(local_size, 1)):
            raise UsageError(f"RANK {rank}, LOCAL_RANK {local_rank}, WORLD_SIZE {size}: not a valid place "
                             "among the processes (start them with torchrun)")
        return cls(rank, size, local_rank, max(local_size, 1))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (several processes only); this process's device (its own GPU on CUDA)."""
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise UsageError(f"LOCAL_RANK {self.local_rank}: torch sees {torch.cuda.device_count()} GPU(s); "
                                 "start at most that many processes per node")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, rank=self.rank, world_size=self.size,
                                    **({"device_id": device} if device.type == "cuda" else {}))
            log.info("rank %d of %d joined the %s process group on %s", self.rank, self.size, backend, device)
        return device

    def stop(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def sum(self, values: Sequence[float], device: torch.device) -> List[float]:
        """``values`` added up across all processes (themselves with one process)."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + size, ...`` of a dataset, without padding: together the shards hold each index once."""

    def __init__(self, length: int, world: World) -> None:
        self.indices = list(range(world.rank, length, world.size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def default_workers(world: World) -> int:
    """Data-loading processes per training process: the node's CPUs shared among its processes, at most 8."""
    return max(min(8, (os.cpu_count() or 1) // world.local_size), 0)
