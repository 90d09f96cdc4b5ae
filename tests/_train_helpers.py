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


def write_cache(folder: Path, data: np.ndarray, autoencoder: str = "synthetic", shard_size: int = 200) -> Path:
    """A real on-disk latent cache in revq.data.latent_cache's format (read back by LatentCache).

    Written directly (not through encode_to_cache, which needs images and an autoencoder) so
    that tests can use synthetic latents."""
    from revq.data.latent_cache import FORMAT, VERSION
    from revq.io_utils import save_safetensors_atomic, write_json_atomic

    folder = Path(folder)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(data, dtype=np.float32)
    shards = []
    for i, start in enumerate(range(0, len(data), shard_size)):
        name = f"shards/latents-{i:05d}.npy"
        np.save(folder / name, data[start:start + shard_size])
        shards.append({"file": name, "count": int(len(data[start:start + shard_size]))})
    np.save(folder / "labels.npy", np.full(len(data), -1, dtype=np.int64))
    write_json_atomic(folder / "keys.json", [f"s{i:06d}" for i in range(len(data))])
    stats = ArrayCache(data).stats
    save_safetensors_atomic({**stats, "count": torch.tensor(len(data))}, folder / "stats.safetensors")
    write_json_atomic(folder / "manifest.json", {
        "format": FORMAT, "version": VERSION, "autoencoder": autoencoder, "resolution": 32,
        "latent_shape": list(data.shape[1:]), "dtype": "float32", "count": len(data),
        "shard_size": shard_size, "shards": shards,
        "labels": {"file": "labels.npy", "labeled": 0, "num_classes": 0, "class_names": None},
        "keys_file": "keys.json", "stats_file": "stats.safetensors",
    })
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
