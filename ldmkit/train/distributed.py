"""Data parallelism with torch.distributed, launched by torchrun (nothing home-made).

    torchrun --nproc_per_node=N -m ldmkit train ...      (gloo on CPU, nccl on GPUs)

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; every process then draws the same global batch
from the step's generator and takes its own contiguous share of the rows, DDP averages the
gradients, and only rank 0 logs, samples and writes checkpoints. With equal shares the average
of the shares' mean losses is the global batch's mean loss, so N processes train as one with
the same global batch, up to float rounding.

With FSDP (torch's fully_shard) each process holds a shard of the weights, gradients and
optimiser state; checkpoints gather them into the same full layout one process writes, so a run
can be resumed with DDP, FSDP or alone.
"""

from __future__ import annotations

import contextlib
import gc
import os
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

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
        raise ValueError(f"batch_size {global_batch} does not split over {world} processes: "
                         f"make it a multiple of {world}")
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
    # a conv with one input channel gets grads of equivalent but differently written strides
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(module, device_ids=None if device.type == "cpu" else [device])


def fully_sharded(module: torch.nn.Module, rank: Rank, device: torch.device,
                  units: tuple[type, ...]) -> torch.nn.Module:
    """The module sharded in place with FSDP: each submodule of the `units` types is one unit
    (its weights gathered just for its own forward and backward), the rest one more."""
    if rank.world == 1:
        return module
    mesh = init_device_mesh(device.type, (rank.world,))
    for part in list(module.modules())[1:]:
        if isinstance(part, units):
            fully_shard(part, mesh=mesh)
    return fully_shard(module, mesh=mesh)


def gradient_sync(net: torch.nn.Module, enabled: bool):
    """A context in which backward does (or, to accumulate micro-batches, does not) average the
    gradients over the processes."""
    if not enabled and isinstance(net, DistributedDataParallel):
        return net.no_sync()
    if not enabled and isinstance(net, FSDPModule):
        return _fsdp_without_sync(net)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_without_sync(net: FSDPModule):
    net.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        net.set_requires_gradient_sync(True)


def full(value: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (collective: every process calls it), else the tensor."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def full_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: full(value) for key, value in state.items()}


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """The optimiser's state dict with sharded moments gathered: one process's layout."""
    state = opt.state_dict()
    state["state"] = {index: full_state(moments) for index, moments in state["state"].items()}
    return state


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor cut as the sharded `like` is (every process passes the same whole tensor)."""
    if isinstance(like, DTensor) and not isinstance(value, DTensor):
        return distribute_tensor(value.to(like.device), like.device_mesh, like.placements)
    return value


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a full (one-process layout) optimiser state, sharding moments like their parameters."""
    opt.load_state_dict(state)
    for param, moments in opt.state.items():
        for key, value in moments.items():
            if value.shape == param.shape:
                moments[key] = shard_like(value, param)


def synchronised_batch_norm(module: torch.nn.Module, rank: Rank, device: torch.device) -> torch.nn.Module:
    """BatchNorm layers made SyncBatchNorm when several processes share a batch on an accelerator,
    so they normalise with the global batch's statistics; torch has no CPU SyncBatchNorm, so on
    CPU each process keeps normalising its own share."""
    if rank.world == 1 or device.type == "cpu":
        return module
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)


def mean_over_processes(value: torch.Tensor, rank: Rank) -> torch.Tensor:
    """The average of a tensor over all processes (the log's losses; the global batch's gradient)."""
    if rank.world == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / rank.world


def mean_of_each(record: dict[str, torch.Tensor], rank: Rank) -> dict[str, float]:
    """Each scalar of a log record averaged over the processes, in one all-reduce."""
    values = torch.stack([v.detach().float().reshape(()) for v in record.values()])
    return dict(zip(record, mean_over_processes(values, rank).tolist()))


def run(train: Callable[[Rank, torch.device], T], device: str | torch.device, global_batch: int) -> T:
    """`train(rank, device)` inside the process group torchrun describes (or alone), left in the
    one order that cannot hang. A DDP wrapper's reducer holds the group: freed after the group is
    destroyed, its destructor joins gloo's worker threads while holding the GIL a worker may be
    waiting for. So everything `train` built is freed with its frame, and all processes meet,
    before the group goes; every trainer starts through here."""
    rank, device = start(device, global_batch)
    try:
        result = train(rank, device)
    except BaseException as error:
        traceback.clear_frames(error.__traceback__)  # the frames' locals hold the wrappers
        _leave(rank, meet=False)  # the others may never reach a barrier: leave at once
        raise
    _leave(rank, meet=True)
    return result


def _leave(rank: Rank, meet: bool) -> None:
    if rank.world == 1 or not dist.is_initialized():
        return
    gc.collect()  # wrappers caught in reference cycles go now, while the group still exists
    met = None
    if meet:  # no collective of any process is still in flight
        met = dist.barrier(async_op=True)
        met.wait()
    # A gloo worker that drops the last reference to a finished collective frees Python state
    # and needs the GIL; holding the barrier's handle until the group is gone makes that last
    # reference ours, freed here with the GIL, after the workers are joined.
    dist.destroy_process_group()
    del met
