"""DistributedDataParallel plumbing: start from ``torchrun``'s environment, rank queries, gathers.

Launched by ``torchrun --nproc_per_node=N -m <entry point>``: the process group uses NCCL when
CUDA is available (one GPU per process, ``cuda:LOCAL_RANK``) and gloo on the CPU. Without
``torchrun`` (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) every helper acts as for one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def start() -> torch.device | None:
    """Join the process group when launched by torchrun with more than one process; returns this
    process's device then (None for a single process: the config's device applies)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return None
    cuda = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def gather(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value across ranks."""
    if not active():
        return values
    gathered = gather(values)
    return {key: sum(g[key] for g in gathered) / len(gathered) for key in values}


def barrier() -> None:
    if active():
        dist.barrier()


def backend() -> str:
    return dist.get_backend() if active() else "none"


def average_gradients(parameters) -> None:
    """Average the gradients of ``parameters`` that DDP does not own (e.g. learned loss
    weights) across the processes; nothing without DDP."""
    if not active():
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size()
