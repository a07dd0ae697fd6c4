"""torchrun / DDP set-up (NCCL on GPU, Gloo on CPU), rank helpers and per-rank seeding."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None, local_rank_arg: int | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    Single process when WORLD_SIZE is absent or 1. ``device`` is 'cuda', 'cpu' or None (CUDA when available).
    ``local_rank_arg`` is the legacy launcher's ``--local_rank`` (used only when LOCAL_RANK is not set).
    """
    if local_rank_arg is not None and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(local_rank_arg)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or device == "":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for but CUDA is not available here; use --device cpu (or "
                         "omit --device: CUDA when available, else CPU)")
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank if device == "cuda" else torch.device(device).index or 0)
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if local_world > 1 and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        store = _restart_store(rank, world_size)
        where = {"store": store} if store is not None else {"init_method": "env://"}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **where,
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistInfo(rank, world_size, local_rank, dev)


def _restart_store(rank: int, world_size: int):
    """The rendezvous store under a prefix of this torchrun restart attempt, or None outside torchrun.

    torchrun's workers share the agent's store across ``--max-restarts`` attempts, so the keys the dead workers of
    the previous attempt wrote (their Gloo/NCCL addresses) are still there: a restarted rank could read a dead peer's
    address and fail ("Connection refused"; pytorch/pytorch#135712). Every worker of one agent gets the same
    TORCHELASTIC_RESTART_COUNT, so on a single node the prefix isolates each attempt. Across nodes the counts can
    differ (an agent restarted for a peer's failure does not count it); there the default store is kept and
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (set for torchrun) gives every attempt a fresh store instead.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        return None
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://", rank=rank, world_size=world_size))
    return dist.PrefixStore(f"supervit/attempt_{attempt}/", store)


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo):
    if info.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, info: DistInfo):
    """``obj`` of rank 0 on every rank."""
    if not info.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def seed_everything(seed: int):
    """Seed python ``random``, NumPy and torch (all devices)."""
    seed = int(seed) % (2 ** 32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of (run seed, rank, epoch): every epoch starts from a state that depends on these three only, so a
    run resumed from an epoch checkpoint continues exactly as the uninterrupted run."""
    return (int(seed) + int(rank) + 1_000_003 * int(epoch)) % (2 ** 32)
