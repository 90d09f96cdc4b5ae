"""Multi-process training through torch.distributed (launched by ``torchrun``).

``torchrun --nproc_per_node N -m revq train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; :func:`setup` reads them and joins the process group (NCCL on GPU,
gloo on CPU).  The model is wrapped in DistributedDataParallel, so rectifier *and* codebook
gradients are averaged across ranks; activation counts are summed across ranks by the
quantizer's reset; only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from revq.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False  # this module initialised the process group (and will destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment, (0, 1, 0) without it."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda requested but no CUDA GPU is available (use --set device=cpu)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device_preference: str = "auto") -> DistInfo:
    rank, world, local_rank = env_world()
    device = pick_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        owns = True
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    device=device, backend=backend, owns_group=owns)


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DDP over the whole model (codebooks + rectifier).  Buffers (activation counts) are
    *not* broadcast: each rank counts its own shard and the reset sums them."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    kwargs = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
    return DDP(model, broadcast_buffers=False, **kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(obj, src: int = 0):
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
