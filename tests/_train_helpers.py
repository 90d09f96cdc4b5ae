"""Helpers shared by the training tests: tiny synthetic latent caches and configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from revq.config import AutoencoderInfo, RectifierConfig, ReVQConfig
from revq.training.config import TrainConfig

SHAPE = (8, 4, 4)  # 128 values per latent


def synthetic_latents(n: int, seed: int = 0, shape=SHAPE) -> np.ndarray:
    """Clustered latents (so codebooks have something to learn), float32 (n, C, H, W)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(24, *shape)).astype(np.float32)
    pick = rng.integers(0, len(centres), size=n)
    x = centres[pick] + 0.3 * rng.normal(size=(n, *shape)).astype(np.float32)
    return (x * 0.8 + 0.1).astype(np.float32)


class ArrayCache:
    """In-memory stand-in with the LatentCache interface the trainer uses."""

    def __init__(self, data: np.ndarray, autoencoder: str = "synthetic") -> None:
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.latent_shape = tuple(self.data.shape[1:])
        self.manifest = {"autoencoder": autoencoder, "resolution": 32}
        flat = self.data.astype(np.float64)
        self.stats = {
            "mean": torch.from_numpy(flat.mean(0)).float(),
            "std": torch.from_numpy(flat.std(0)).float(),
            "channel_mean": torch.from_numpy(flat.mean((0, 2, 3))).float(),
            "channel_std": torch.from_numpy(flat.std((0, 2, 3))).float(),
            "global_mean": torch.tensor(float(flat.mean())),
            "global_std": torch.tensor(float(flat.std())),
        }

    def __len__(self) -> int:
        return len(self.data)

    def get(self, indices) -> torch.Tensor:
        return torch.from_numpy(self.data[np.asarray(indices)])


def write_cache(folder: Path, data: np.ndarray, autoencoder: str = "synthetic") -> Path:
    """A real on-disk latent cache (through revq.data.latent_cache's writer)."""
    from revq.data import latent_cache as lc

    writer = getattr(lc, "write_latent_cache", None)
    if writer is None:
        raise RuntimeError("revq.data.latent_cache has no write_latent_cache()")
    writer(folder, torch.from_numpy(data), autoencoder=autoencoder, resolution=32)
    return folder


def tiny_config(out: Path | str = "", **overrides) -> TrainConfig:
    model = ReVQConfig(
        latent_shape=SHAPE, num_tokens=32, codebook_size=16,
        rectifier=RectifierConfig(kind="cnn", width=16, depth=1),
        autoencoder=AutoencoderInfo(name="synthetic", resolution=32, latent_shape=SHAPE),
    )
    cfg = TrainConfig(model=model, epochs=3, batch_size=32, lr=1e-2, checkpoint_every_steps=3,
                      log_every_steps=2, progress=False, tensorboard=False, device="cpu",
                      init_samples=64, val_batch_size=64, out=str(out))
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg.validate()
    return cfg


def run_cli(args: list[str], *, env: dict | None = None, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "revq", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, **kwargs)


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
