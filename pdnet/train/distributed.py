"""Processes of a run: the device and rank of this one, DistributedDataParallel, and the
decisions every rank must take together (stop, skip) agreed with one all-reduce.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is NCCL on GPUs and gloo on
CPUs; a single process runs without one.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from .._device import parse_device
from .errors import TrainError


def resolve_device(spec: str | None) -> torch.device | None:
    """The training device named by ``spec`` (auto, cpu, cuda, cuda:N; None: not chosen).

    Raises:
        TrainError: see :func:`pdnet._device.parse_device`.
    """
    if spec is None:
        return None
    try:
        return parse_device(spec, name="--device")
    except ValueError as exc:
        raise TrainError(str(exc)) from None


def init_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """(world size, rank, device) of this process; joins the process group of a multi-process
    run. The default device is the local rank's GPU when there is one, else the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return world, rank, dev


def data_parallel(module: nn.Module, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    """``module`` under DistributedDataParallel, with SyncBatchNorm on GPUs.

    SyncBatchNorm runs on GPUs only: CPU ranks (gloo) keep per-rank BatchNorm statistics,
    all else (gradients, weights) is synchronised by DDP.
    """
    cuda = device.type == "cuda"
    return nn.parallel.DistributedDataParallel(
        nn.SyncBatchNorm.convert_sync_batchnorm(module) if cuda else module,
        device_ids=[device.index] if cuda else None,
        find_unused_parameters=find_unused_parameters,
    )


def agree(value: int, op: dist.ReduceOp, world: int, device: torch.device) -> int:
    """``value`` reduced over all ranks with ``op`` (MIN: all agree, MAX: any asks); every
    rank must call it at the same point. One process: ``value`` itself."""
    if world == 1:
        return value
    flag = torch.tensor([value], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(flag, op=op)
    return int(flag)
