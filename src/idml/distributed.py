"""PyTorch DDP set-up for runs launched by ``torchrun`` (which sets RANK, WORLD_SIZE, ...)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from idml.runtime import Runtime


def init_distributed(rt: Runtime) -> None:
    """Join the process group torchrun prepared: NCCL on GPUs, Gloo on CPUs."""
    if rt.distributed and not dist.is_initialized():
        if rt.device.type == "cuda":
            torch.cuda.set_device(rt.device)
        dist.init_process_group(backend="nccl" if rt.device.type == "cuda" else "gloo")


def wrap_ddp(model: nn.Module, rt: Runtime) -> nn.Module:
    if not rt.distributed:
        return model
    device_ids = [rt.device.index] if rt.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
