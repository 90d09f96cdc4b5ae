"""Learning-rate schedules.  Stateless: the factor is a function of (epoch, global step), so a
resumed run gets exactly the same learning rates without any scheduler state to restore.

- ``exponential`` (the authors'): per epoch, ``final_lr_ratio ** (epoch / epochs)``
  (torch's ExponentialLR with gamma = final_lr_ratio ** (1 / epochs), stepped each epoch).
- ``cosine``: per step, from 1 down to ``final_lr_ratio`` over the whole run.
- ``constant``.

Any schedule is multiplied by a linear warm-up over the first ``warmup_steps`` steps.
Register another with :func:`register_schedule`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

# name -> f(epoch, step, steps_per_epoch, epochs, final_ratio) -> factor
SCHEDULE_FNS: dict[str, Callable[[int, int, int, int, float], float]] = {}


def register_schedule(name: str):
    def deco(fn):
        SCHEDULE_FNS[name] = fn
        return fn

    return deco


@register_schedule("exponential")
def _exponential(epoch: int, step: int, steps_per_epoch: int, epochs: int, final: float) -> float:
    return final ** (epoch / epochs)


@register_schedule("cosine")
def _cosine(epoch: int, step: int, steps_per_epoch: int, epochs: int, final: float) -> float:
    total = max(1, steps_per_epoch * epochs)
    t = min(1.0, step / total)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))


@register_schedule("constant")
def _constant(epoch: int, step: int, steps_per_epoch: int, epochs: int, final: float) -> float:
    return 1.0


class LRSchedule:
    """Sets every param group's lr to ``group['base_lr'] * factor(epoch, step)``."""

    def __init__(self, name: str, *, epochs: int, steps_per_epoch: int, final_lr_ratio: float, warmup_steps: int = 0):
        if name not in SCHEDULE_FNS:
            from revq.errors import ConfigError

            raise ConfigError(f"schedule {name!r} unknown; choose from {sorted(SCHEDULE_FNS)}")
        self.name = name
        self.fn = SCHEDULE_FNS[name]
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.final = final_lr_ratio
        self.warmup_steps = warmup_steps

    def factor(self, epoch: int, step: int) -> float:
        f = self.fn(epoch, step, self.steps_per_epoch, self.epochs, self.final)
        if self.warmup_steps > 0 and step < self.warmup_steps:
            f *= (step + 1) / self.warmup_steps
        return f

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> float:
        f = self.factor(epoch, step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * f
        return f

    def state_dict(self) -> dict:
        return {"name": self.name, "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch,
                "final_lr_ratio": self.final, "warmup_steps": self.warmup_steps}
