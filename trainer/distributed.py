"""DDP set-up under torchrun, and the cheap cross-rank agreement the training loop needs.

Stop and checkpoint decisions are taken per rank (a signal may reach one rank; clocks differ), but
every rank must act on the same step or a collective hangs. They agree through one all-reduce(MAX)
of two small ints per step on a gloo group: CPU only, so it never waits for the GPU queue.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    enabled: bool
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    control: Any = None  # gloo process group for CPU-side agreement

    @property
    def master(self) -> bool:
        return self.rank == 0


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if requested == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(requested)


class NoGPUForRank(RuntimeError):
    """A rank asks for a GPU this machine does not have; the message is one line with the fix."""


def check_gpu_for_rank(device: torch.device, local_rank: int) -> None:
    """cuda:N needs N < the GPUs torch sees: else one line, not CUDA's "invalid device ordinal"."""
    count = torch.cuda.device_count()
    index = local_rank if device.index is None else device.index
    if index >= count:
        raise NoGPUForRank(f"local rank {local_rank} would use cuda:{index}, but this machine has {count} GPU(s):"
                           f" start at most {count} rank(s) per node (--nproc-per-node), or pass --device cpu")


def setup(requested_device: str) -> DistInfo:
    """Join the process group when launched by torchrun (RANK set); otherwise a single process."""
    if "RANK" not in os.environ:
        return DistInfo(False, 0, 0, 1, pick_device(requested_device, 0))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        check_gpu_for_rank(device, local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
        control = dist.new_group(backend="gloo")
    else:
        dist.init_process_group(backend="gloo")
        control = dist.group.WORLD
    return DistInfo(True, rank, local_rank, world_size, device, control)


def agree(info: DistInfo, flags: list[int]) -> list[int]:
    """Element-wise max of small int flags over all ranks (identity for a single process)."""
    if not info.enabled:
        return flags
    t = torch.tensor(flags, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.control)
    return [int(v) for v in t.tolist()]


def mean(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    """Mean of a scalar tensor over ranks, on the main (device) group."""
    if not info.enabled:
        return value
    t = value.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / info.world_size


def total(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    """Sum of a scalar tensor over ranks, on the main (device) group."""
    if not info.enabled:
        return value
    t = value.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj, group=info.control)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier(group=info.control)


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=info.control)
    return box[0]


def first_error(info: DistInfo, error: str | None) -> str | None:
    """The first rank's error (None: none failed), known to every rank: a rank that failed alone
    must not leave the others waiting in the next collective forever."""
    if not info.enabled:
        return error
    errors: list[str | None] = [None] * info.world_size
    dist.all_gather_object(errors, error, group=info.control)
    return next((e for e in errors if e), None)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
