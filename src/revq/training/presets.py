"""Named training presets.  ``get_preset(name)`` returns a fresh :class:`TrainConfig`.

Paper presets follow the paper / the authors' configs (DC-AE f32c32 latents of 256x256
ImageNet, 32x8x8).  CPU presets are sized for TAEF2 latents of 64x64 images (also 32x8x8) and
train to a useful tokenizer in minutes on a laptop CPU; they are a starting point to tune by
measurement.
"""

from __future__ import annotations

from typing import Callable

from revq.config import AutoencoderInfo, RectifierConfig, ReVQConfig
from revq.errors import ConfigError
from revq.training.config import TrainConfig

# The DC-AE the authors trained their released checkpoints on (the paper text says "DC-AE f32c32").
DCAE = AutoencoderInfo(name="mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers", resolution=256, latent_shape=(32, 8, 8))
TAEF2 = AutoencoderInfo(name="taef2", resolution=64, latent_shape=(32, 8, 8))


def _paper(num_tokens: int, codebook_size: int, depth: int, width: int, batch_size: int) -> TrainConfig:
    model = ReVQConfig(
        latent_shape=(32, 8, 8),
        num_tokens=num_tokens,
        codebook_size=codebook_size,
        rectifier=RectifierConfig(kind="efficientvit", width=width, depth=depth),
        autoencoder=AutoencoderInfo(**vars(DCAE)),
    )
    return TrainConfig(
        model=model, epochs=100, batch_size=batch_size, lr=1e-2, schedule="exponential",
        checkpoint_every_steps=2000,
    )


# epochs that take about 15 minutes on one core of the 2-core development machine (docs/results.md)
CPU_EPOCHS = {512: 2, 256: 1}


def _cpu(num_tokens: int, codebook_size: int, tokens_per_codebook: int, epochs: int) -> TrainConfig:
    C = 32
    model = ReVQConfig(
        latent_shape=(C, 8, 8),
        num_tokens=num_tokens,
        codebook_size=codebook_size,
        # Codebooks shared by neighbouring positions of the same channel(s): with 30,000 training
        # images a per-position codebook has ~7 samples per code and over-fits, a shared one
        # learns from tokens_per_codebook times more sub-vectors and affords the paper's codebook
        # sizes (A/B in docs/results.md, issue #10).
        tokens_per_codebook=tokens_per_codebook,
        rectifier=RectifierConfig(kind="efficientvit", width=128, depth=2),  # residual (identity at init)
        autoencoder=AutoencoderInfo(**vars(TAEF2)),
    )
    return TrainConfig(
        model=model, epochs=epochs, batch_size=128, lr=1e-2, schedule="exponential",
        init_samples=16384, checkpoint_every_steps=200, val_limit=2000,
    )


PRESETS: dict[str, tuple[str, Callable[[], TrainConfig]]] = {
    "paper-512t": ("paper: 512 tokens x 16,384 codes/group, EfficientViT depth 3 width 512, batch 128 (DC-AE)",
                   lambda: _paper(512, 16384, 3, 512, 128)),
    "paper-256t-b": ("paper: 256 tokens x 65,536 codes/group, EfficientViT depth 4 width 1024, batch 256 (DC-AE)",
                     lambda: _paper(256, 65536, 4, 1024, 256)),
    "paper-256t-l": ("paper: 256 tokens x 262,144 codes/group, EfficientViT depth 4 width 512, batch 256 (DC-AE)",
                     lambda: _paper(256, 262144, 4, 512, 256)),
    "cpu-512t": ("CPU: 512 tokens x 16,384 codes, one codebook per latent channel, EfficientViT depth 2 width 128, "
                 "batch 128 (TAEF2, 64 px)",
                 lambda: _cpu(512, 16384, 16, epochs=CPU_EPOCHS[512])),
    "cpu-256t": ("CPU: 256 tokens x 65,536 codes, one codebook per 4 latent channels, EfficientViT depth 2 "
                 "width 128, batch 128 (TAEF2, 64 px)",
                 lambda: _cpu(256, 65536, 32, epochs=CPU_EPOCHS[256])),
}


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    return {name: desc for name, (desc, _) in PRESETS.items()}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    cfg = PRESETS[name][1]()
    cfg.preset = name
    return cfg
