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


def wrap_model(model: torch.nn.Module, info: DistInfo, *, sparse_params: tuple[str, ...] = ()) -> torch.nn.Module:
    """DDP over the whole model (codebooks + rectifier).  Buffers (activation counts) are
    *not* broadcast: each rank counts its own shard and the reset sums them.

    ``sparse_params`` (e.g. ``("quantizer.codebooks",)`` with the row-sparse optimizer) get sparse
    COO gradients, which DDP's dense buckets cannot hold: DDP ignores them and the caller averages
    their gradients with :func:`average_sparse_grad_` after ``backward()``.
    """
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if sparse_params:
        DDP._set_params_and_buffers_to_ignore_for_model(model, list(sparse_params))
    kwargs = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
    return DDP(model, broadcast_buffers=False, **kwargs)


def average_sparse_grad_(param: torch.nn.Parameter) -> None:
    """Average a sparse COO gradient over all ranks, in place (what DDP does for dense ones).

    Every rank all-gathers the others' (indices, values), padded to the longest, and sums them:
    traffic is the touched rows only, and it works on NCCL, which has no sparse all-reduce.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or param.grad is None:
        return
    world = dist.get_world_size()
    g = param.grad.coalesce()
    idx, val = g.indices(), g.values()  # (sparse_dim, k), (k, *dense_shape)
    k = torch.tensor([idx.shape[1]], device=idx.device)
    sizes = [torch.zeros_like(k) for _ in range(world)]
    dist.all_gather(sizes, k)
    sizes = [int(n) for n in sizes]
    m = max(sizes)
    idx_pad = idx.new_zeros(idx.shape[0], m)
    idx_pad[:, : idx.shape[1]] = idx
    val_pad = val.new_zeros(m, *val.shape[1:])
    val_pad[: val.shape[0]] = val
    all_idx = [torch.empty_like(idx_pad) for _ in range(world)]
    all_val = [torch.empty_like(val_pad) for _ in range(world)]
    dist.all_gather(all_idx, idx_pad)
    dist.all_gather(all_val, val_pad)
    idx_cat = torch.cat([t[:, :n] for t, n in zip(all_idx, sizes)], 1)
    val_cat = torch.cat([t[:n] for t, n in zip(all_val, sizes)], 0) / world
    param.grad = torch.sparse_coo_tensor(idx_cat, val_cat, g.shape).coalesce()


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
