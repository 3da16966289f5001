"""Distributed training: torchrun (or SLURM's srun) starts one process per device and
describes the group in environment variables; without them this is one process, and every
function here does what one process needs (rank 0 of 1)."""

from __future__ import annotations

import builtins
import os
from typing import Any

import torch
import torch.distributed as dist

from utils import UserError


def distributed_env(environ: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's or SLURM's variables; None for a plain process.

    Under SLURM, each task that srun starts has SLURM_PROCID / SLURM_LOCALID and the
    step's SLURM_STEP_NUM_TASKS (not SLURM_NTASKS: a batch script that runs python once
    has SLURM_NTASKS too, and would wait forever for the other tasks). srun sets no
    rendezvous address: on one node it defaults to this host, on several the job script
    must export MASTER_ADDR (the first node's name) and may set MASTER_PORT (default 29500).
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", 1)) > 1:
        if "MASTER_ADDR" not in env:
            if int(env.get("SLURM_NNODES", 1)) > 1:
                raise UserError(
                    "SLURM job on several nodes: export MASTER_ADDR=$(scontrol show hostnames "
                    '"$SLURM_JOB_NODELIST" | head -n 1) in the job script, or start with torchrun'
                )
            env["MASTER_ADDR"] = "127.0.0.1"
        env.setdefault("MASTER_PORT", "29500")
        return int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0))
    return None


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 for a plain process): known before the process group exists."""
    ranks = distributed_env()
    return 0 if ranks is None else ranks[0]


def init_distributed(device: str) -> torch.device:
    """Join the process group the environment describes and return this process's device.

    The backend follows the device: nccl for CUDA (one GPU per process, cuda:LOCAL_RANK),
    gloo for the CPU. Only rank 0 prints from here on.
    """
    ranks = distributed_env()
    if ranks is None:
        return torch.device(device)
    rank, world_size, local_rank = ranks
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"process {local_rank} of this node has no GPU ({torch.cuda.device_count()} here); "
                "start at most one process per GPU (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        this_device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        this_device, backend = torch.device(device), "gloo"
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)  # MASTER_ADDR/PORT
    _print_on_rank_0_only(rank == 0)
    return this_device


def _print_on_rank_0_only(is_main: bool) -> None:
    """Silence print() on every rank but 0, as torchvision's references do; print(..., force=True) still prints."""
    builtin_print = builtins.print

    def print(*args: Any, force: bool = False, **kwargs: Any) -> None:  # shadows print on purpose
        if is_main or force:
            builtin_print(*args, **kwargs)

    builtins.print = print


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_distributed() -> bool:
    """True in a process that torchrun (or SLURM) started, even as the only one."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    return get_rank() == 0


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank ([obj] for one process)."""
    if get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def copy_buffers_from_rank_0(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), which each rank updates from its own batches."""
    if get_world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in one process)."""
    if is_distributed():
        dist.barrier()


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean of each scalar tensor across ranks (one all_reduce), as floats."""
    stacked = torch.stack([value.detach().float() for value in values.values()])
    if get_world_size() > 1:
        dist.all_reduce(stacked)
        stacked /= get_world_size()
    return dict(zip(values, stacked.tolist(), strict=True))


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is true on any rank (one all_reduce): every rank takes the same turn."""
    if get_world_size() == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()
