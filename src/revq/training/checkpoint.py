"""Full-state training checkpoints: safetensors for every tensor, JSON for the rest, no pickle.

One checkpoint = one file ``RUN_DIR/checkpoints/ckpt-<global step>.safetensors``, written
atomically (temp file + rename).  Tensors are stored under prefixes:

- ``model/<state-dict key>``  model parameters and buffers (activation counts included)
- ``optim/<param index>/<key>``  optimiser state tensors (AdamW ``exp_avg``, ``exp_avg_sq``, ``step``)
- ``rng/torch``, ``rng/cuda/<i>``, ``rng/numpy``  random generator states

and the header metadata holds one JSON document (``revq_state``) with the training counters
(epoch, position in epoch, global step, ...), the optimiser's param groups and non-tensor state,
the scheduler state, the python/numpy RNG scalars and the training config.  The newest
``keep_last`` files are kept.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from revq.errors import RevqError
from revq.io_utils import save_safetensors_atomic

FORMAT = "revq-train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.safetensors$")


@dataclass
class TrainState:
    """Counters that say where a run is.  ``step_in_epoch`` batches of ``epoch`` are done;
    ``step_in_epoch == steps_per_epoch`` means the epoch-end work (reset, validation) is due."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    samples_seen: int = 0
    finished: bool = False
    initialized: bool = False  # codebooks initialised from data
    last_val: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        return cls(**data)


# ---------------------------------------------------------------------------- optimiser
def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (tensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim/{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = []
    for group in state_dict["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()})
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim/"):
            continue
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entry in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------- RNG
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py = random.getstate()
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [py[0], list(py[1]), py[2]],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    n = meta["numpy"]
    np.random.set_state((n["kind"], tensors["rng/numpy"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------- files
def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    config: dict[str, Any],
    scheduler_state: dict[str, Any] | None = None,
) -> Path:
    path = Path(path)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = flatten_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    rng_tensors, rng_meta = capture_rng()
    tensors.update(rng_tensors)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "state": state.to_dict(),
        "optimizer": optim_meta,
        "scheduler": scheduler_state or {},
        "rng": rng_meta,
        "config": config,
    }
    save_safetensors_atomic(tensors, path, metadata={"format": FORMAT, "revq_state": json.dumps(doc)})
    return path


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainState
    config: dict[str, Any]
    scheduler: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    doc: dict[str, Any]

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *, rng: bool = True) -> None:
        model_state = {k[len("model/"):]: v for k, v in self.tensors.items() if k.startswith("model/")}
        model.load_state_dict(model_state, strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(unflatten_optimizer(self.tensors, self.doc["optimizer"]))
        if rng:
            restore_rng(self.tensors, self.doc["rng"])


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path), device=str(device))
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise RevqError(f"checkpoint {path} is unreadable ({error})") from error
    if metadata.get("format") != FORMAT or "revq_state" not in metadata:
        raise RevqError(f"{path} is not a revq training checkpoint")
    doc = json.loads(metadata["revq_state"])
    # RNG states must stay on the CPU whatever the device
    for key in list(tensors):
        if key.startswith("rng/"):
            tensors[key] = tensors[key].cpu()
    return LoadedCheckpoint(
        path=path, state=TrainState.from_dict(doc["state"]), config=doc["config"],
        scheduler=doc.get("scheduler", {}), tensors=tensors, doc=doc,
    )


class CheckpointManager:
    """Numbered checkpoints in one folder; keeps the newest ``keep_last``."""

    def __init__(self, folder: str | Path, keep_last: int = 3) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last

    def list(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        paths = self.list()
        return paths[-1] if paths else None

    def path_for(self, global_step: int, finished: bool = False) -> Path:
        return self.folder / f"ckpt-{global_step:09d}.safetensors"

    def clean_temporaries(self) -> None:
        """Remove temp files left by a writer that was killed mid-write."""
        if self.folder.is_dir():
            for p in self.folder.glob(".ckpt-*.tmp"):
                p.unlink(missing_ok=True)

    def save(self, **kwargs: Any) -> Path:
        state: TrainState = kwargs["state"]
        path = save_checkpoint(self.path_for(state.global_step), **kwargs)
        for old in self.list()[: -self.keep_last]:
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def load_latest(self, *, device: str | torch.device = "cpu") -> LoadedCheckpoint | None:
        """Newest readable checkpoint (an unreadable newest one is skipped with a warning)."""
        import logging

        for path in reversed(self.list()):
            try:
                return load_checkpoint(path, device=device)
            except RevqError as error:
                logging.getLogger(__name__).warning("skipping %s", error)
        return None
