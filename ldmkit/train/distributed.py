"""Data parallelism with torch.distributed, launched by torchrun (nothing home-made).

    torchrun --nproc_per_node=N -m ldmkit.cli train ...      (gloo on CPU, nccl on GPUs)

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; every process then draws the same global batch
from the step's generator and takes its own contiguous share of the rows, DDP averages the
gradients, and only rank 0 logs, samples and writes checkpoints. With equal shares the average
of the shares' mean losses is the global batch's mean loss, so N processes train as one with
the same global batch, up to float rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world

    def rows(self, global_batch: int) -> slice:
        """This process's rows of a global batch."""
        share = global_batch // self.world
        return slice(self.rank * share, (self.rank + 1) * share)


def start(device: str | torch.device, global_batch: int) -> tuple[Rank, torch.device]:
    """Join the process group torchrun describes (or run alone), with torch's backend for the
    device type (gloo on CPU, nccl on CUDA); on an accelerator each process takes the one of
    its local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Rank(), torch.device(device)
    if global_batch % world:
        raise ValueError(f"batch_size {global_batch} does not split over {world} processes: make it a multiple of {world}")
    device = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group(dist.get_default_backend_for_device(device))
    rank = Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type != "cpu":
        device = torch.device(device.type, rank.local_rank)
        torch.accelerator.set_device_index(rank.local_rank)
    return rank, device


def data_parallel(module: torch.nn.Module, rank: Rank, device: torch.device) -> torch.nn.Module:
    """The module itself alone, else wrapped in DistributedDataParallel (gradients averaged)."""
    if rank.world == 1:
        return module
    return DistributedDataParallel(module, device_ids=None if device.type == "cpu" else [device])


def mean_over_processes(value: torch.Tensor, rank: Rank) -> torch.Tensor:
    """The average of a scalar over all processes (for the log)."""
    if rank.world == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / rank.world


def barrier(rank: Rank) -> None:
    if rank.world > 1:
        dist.barrier()


def finish(rank: Rank) -> None:
    if rank.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
