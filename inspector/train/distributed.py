"""Multi-GPU and multi-node training through `torchrun` (DistributedDataParallel).

`torchrun --nproc_per_node G [--nnodes N --node_rank R --rdzv-endpoint HOST:PORT] -m inspector.train.cli
train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; `setup()` reads them. Without them (a plain
`inspector-train train`) everything here degrades to one process with no process group.

- Backend: nccl on CUDA, gloo on the CPU (what the tests use: two CPU processes).
- Each process owns one device (cuda:LOCAL_RANK) and `batch` pairs per step; the effective batch is
  batch * WORLD_SIZE. DistributedSampler gives each rank a disjoint, equally long shard of the epoch.
- Rank 0 alone logs, validates, plots and writes checkpoints; the others wait at a barrier.
- `replica_divergence()` checks, once per epoch, that the replicas still hold the same weights (DDP keeps them
  equal only if every rank runs the same optimizer steps; a bug or a non-deterministic kernel that breaks this
  is otherwise silent). Its result is recorded in the training history.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(preference)


def setup(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment, or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, dev)


def teardown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext, sync_bn: bool = True) -> nn.Module:
    """DDP around the model when there is more than one process.

    On GPUs the batch norms are converted to SyncBatchNorm (statistics over the global batch, which matters
    with the few large images per GPU segmentation training affords); PyTorch supports that on CUDA only.
    """
    if not ctx.distributed:
        return model
    if sync_bn and ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # 1x1 convolutions' gradients can come back with strides that differ from the bucket's but describe the
    # same memory order; PyTorch warns on every step about it. Harmless here, and it buries the log.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def make_sampler(dataset: Dataset, ctx: DistContext, seed: int, epoch: int, shuffle: bool) -> Sampler:
    """The epoch's order: a function of (seed, epoch) only, so a resumed run sees the same order."""
    if ctx.distributed:
        sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=shuffle, seed=seed)
        sampler.set_epoch(epoch)
        return sampler
    if not shuffle:
        return SequentialSampler(dataset)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return RandomSampler(dataset, generator=generator)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def mean_over_ranks(value: float, ctx: DistContext) -> float:
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def replica_divergence(model: nn.Module, ctx: DistContext) -> float:
    """Largest difference between ranks of per-parameter checksums (sum and sum of squares, float64); 0 = equal.

    Parameters only: batch-norm running statistics legitimately differ after each rank's last forward (DDP
    broadcasts rank 0's buffers at the start of the next one, and rank 0's are the ones saved).
    """
    if not ctx.distributed:
        return 0.0
    with torch.no_grad():
        sums = [torch.stack([p.double().sum(), p.double().square().sum()]) for p in unwrap(model).parameters()]
        local = torch.cat(sums).to(ctx.device)
    gathered = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, local)
    return float(max((g - gathered[0]).abs().max().item() for g in gathered))
