"""``revq plan``: parameter counts and training memory of a config, before anyone launches a
2 GB-codebook run.  Nothing large is allocated: models are built on the ``meta`` device and the
rectifier's activation memory is measured from the tensors autograd saves for backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from revq.training.config import TrainConfig

SEARCH_BUDGET = 256 * 2**20  # the quantizer's default nearest-code search chunk budget


@dataclass
class Plan:
    name: str
    batch_size: int
    world_size: int
    params: dict[str, int] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)  # bytes per process
    notes: list[str] = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    @property
    def total_memory(self) -> int:
        return sum(self.memory.values())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "batch_size": self.batch_size, "world_size": self.world_size,
                "params": self.params, "total_params": self.total_params, "memory_bytes": self.memory,
                "total_memory_bytes": self.total_memory, "notes": self.notes}

    def format(self) -> str:
        lines = [f"plan for {self.name or 'config'}: global batch {self.batch_size}"
                 + (f" over {self.world_size} processes" if self.world_size > 1 else "")]
        lines.append("parameters:")
        for key, value in self.params.items():
            lines.append(f"  {key:<28} {value:>15,}  ({value / 1e6:.2f} M)")
        lines.append(f"  {'total':<28} {self.total_params:>15,}  ({self.total_params / 1e6:.2f} M)")
        lines.append("memory per process (training):")
        for key, value in self.memory.items():
            lines.append(f"  {key:<28} {human_bytes(value):>15}")
        lines.append(f"  {'total':<28} {human_bytes(self.total_memory):>15}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def count_rectifier_params(cfg: TrainConfig) -> int:
    from revq.rectifier import build_rectifier

    with torch.device("meta"):
        net = build_rectifier(cfg.model.rectifier, cfg.model.latent_shape[0])
    return sum(p.numel() for p in net.parameters())


def _activation_bytes(cfg: TrainConfig, batch: int) -> tuple[int, str]:
    """Bytes autograd keeps for one rectifier forward at ``batch`` (meta device, nothing allocated)."""
    from revq.rectifier import build_rectifier

    C, H, W = cfg.model.latent_shape
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    try:
        with torch.device("meta"):
            net = build_rectifier(cfg.model.rectifier, C)
            x = torch.zeros(batch, C, H, W, requires_grad=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.bf16 else torch.autocast("cpu", enabled=False)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
            net(x)
        return total, "measured on the meta device"
    except Exception:  # noqa: BLE001 - fall back to a real forward at batch 2, scaled
        net = build_rectifier(cfg.model.rectifier, C)
        x = torch.zeros(2, C, H, W, requires_grad=True)
        total = 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(x)
        return total * batch // 2, "measured at batch 2 on the CPU and scaled"


def plan(cfg: TrainConfig, *, batch_size: int | None = None, world_size: int = 1) -> Plan:
    m = cfg.model
    batch = batch_size or cfg.batch_size
    local = max(1, batch // max(1, world_size))
    G, N, d = m.num_codebooks, m.codebook_size, m.token_dim
    p = Plan(name=cfg.preset, batch_size=batch, world_size=world_size)
    p.params["codebooks"] = G * N * d
    rect = count_rectifier_params(cfg) if m.rectifier.kind != "none" else 0
    p.params["rectifier"] = rect
    if m.pre_encoder:
        p.params["pre-encoder"] = rect
    trainable = p.total_params
    p.memory["parameters (fp32)"] = 4 * trainable
    p.memory["gradients (fp32)"] = 4 * trainable
    p.memory["AdamW moments (2 x fp32)"] = 8 * trainable
    p.memory["activation counts (int64)"] = 8 * G * N
    act, how = (0, "") if rect == 0 else _activation_bytes(cfg, local)
    if m.pre_encoder:
        act *= 2
    latent = local * math.prod(m.latent_shape) * 4
    p.memory["activations (one step)"] = act + 6 * latent  # rectifier + z, z_q, z_rect, grads
    p.memory["nearest-code search"] = min(SEARCH_BUDGET, local * G * N * 4)
    if world_size > 1:
        p.memory["DDP gradient buckets"] = 4 * trainable
    if how:
        p.notes.append(f"rectifier activations {how}")
    p.notes.append(f"{m.num_tokens} tokens x {N:,} codes/group = {m.bits_per_image:.0f} bits per image; "
                   f"checkpoint ~{human_bytes(16 * trainable + 8 * G * N)}")
    return p
