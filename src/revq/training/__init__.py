"""Training: the loop (:func:`train`), full-state checkpoints, presets, torchrun support, planner.

    from revq.training import get_preset, train
    cfg = get_preset("cpu-512t"); cfg.latents = "cache/train"; cfg.out = "runs/a"
    result = train(cfg)            # -> runs/a/model (ReVQ.from_pretrained)
"""

from __future__ import annotations

from revq.training.config import TrainConfig
from revq.training.presets import get_preset, list_presets


def train(cfg: TrainConfig, **kwargs):
    from revq.training.trainer import train as _train

    return _train(cfg, **kwargs)


__all__ = ["TrainConfig", "get_preset", "list_presets", "train"]
