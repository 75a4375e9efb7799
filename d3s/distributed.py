"""Several processes in one job (torchrun / DDP): which rank this is, how work splits, sums across ranks.

A stage started by `torchrun --nproc_per_node N` finds RANK / WORLD_SIZE / LOCAL_RANK in its
environment and joins a process group: NCCL on GPUs (one per rank), gloo on the CPU (the
tests run 2 CPU processes). Every rank sees the same *global* batch (same sampler order, same
random views) and trains on its contiguous share, so a run on N processes follows the
1-process run at the same global batch. With one process every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .errors import D3SError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The rank that logs and writes outputs and checkpoints."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of n items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def loss_scale(self, n_local: int, n_global: int) -> float:
        """Factor on a rank's mean loss so that DDP's gradient average is the global batch mean."""
        return n_local * self.world / n_global


def ranks() -> Ranks:
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: torch.device) -> torch.device:
    """Join the torchrun process group if there is one; returns this rank's device."""
    if launched_world_size() <= 1 or dist.is_initialized():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise D3SError(
                f"rank {os.environ.get('RANK')}: LOCAL_RANK {local} but only {torch.cuda.device_count()} "
                "GPU(s) visible; start as many processes per node as GPUs"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=30))
    if dist.get_rank() == 0:
        import logging

        logging.getLogger("d3s").info(
            "%d processes (%s), one per %s",
            dist.get_world_size(),
            backend,
            "GPU" if device.type == "cuda" else "share of the CPUs",
        )
    return device


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module to train: DDP over all ranks (SyncBatchNorm on GPUs), or the model itself.

    SyncBatchNorm normalises with the global batch's statistics, so N GPUs train like one at
    the same global batch (timm's converter: torch's drops the activation of timm's fused
    BatchNormAct layers). PyTorch has it for GPUs only: on the CPU (gloo) each rank normalises
    with its own share's statistics, as plain DDP does. The converted layers reuse the same
    Parameter objects, so an optimiser made before still holds them.
    """
    r = ranks()
    if r.world == 1:
        return model
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
        # SyncBatchNorm keeps the running statistics equal on every rank: no buffer broadcast per step
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index], broadcast_buffers=False)
    return nn.parallel.DistributedDataParallel(model)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks (in place); `t` itself with one process."""
    if ranks().world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_min(t: torch.Tensor) -> torch.Tensor:
    """Minimum of `t` over ranks (in place); `t` itself with one process."""
    if ranks().world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on every rank when it is true on one (one collective: call it on every rank).

    For decisions that must be the same everywhere, such as "checkpoint now" (each rank has its
    own clock) or "stop" (a signal may reach some ranks only).
    """
    if ranks().world == 1:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def barrier() -> None:
    if ranks().world > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
