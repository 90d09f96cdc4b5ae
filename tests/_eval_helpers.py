"""Tiny models and images for the evaluation / tokenizer / token-export tests (fast on CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from revq.autoencoders.base import Autoencoder
from revq.config import AutoencoderInfo, RectifierConfig, ReVQConfig

RES = 16  # image side; latents are (48, 4, 4)
FACTOR = 4


class UnshuffleAE(Autoencoder):
    """A lossless stand-in VAE: pixel (un)shuffle by 4, latents centred at 0."""

    name = "test-unshuffle"
    latent_channels = 3 * FACTOR * FACTOR
    downsample = FACTOR

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))

    @property
    def dtype(self):
        return self.anchor.dtype

    def _encode(self, images):
        return F.pixel_unshuffle(images, FACTOR) - 0.5

    def _decode(self, latents):
        return F.pixel_shuffle(latents + 0.5, FACTOR)

    @classmethod
    def load(cls, *, device="cpu", dtype=torch.float32, weights_path=None):
        return cls().to(device=device, dtype=dtype).freeze()


def register_fake_autoencoder() -> None:
    from revq.autoencoders import REGISTRY

    REGISTRY[UnshuffleAE.name] = "_eval_helpers:UnshuffleAE.load"


def images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images (so codes and SSIM mean something), 8-bit levels."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = F.interpolate(low, size=(RES, RES), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.rand(n, 3, RES, RES, generator=g)
    return torch.round(x.clamp(0, 1) * 255) / 255


def source(n: int, seed: int = 0, *, labelled: bool = True):
    """A list of (key, image, label) like revq.data.images sources."""
    ims = images(n, seed)
    return [(f"img{i:04d}", ims[i], (i % 3) if labelled else -1) for i in range(n)]


def tiny_model(*, codebook_size: int = 16, num_tokens: int = 48, split: str = "channel", seed: int = 0, rectifier="cnn"):
    from revq.model import ReVQ

    torch.manual_seed(seed)
    cfg = ReVQConfig(
        latent_shape=(48, 4, 4),
        num_tokens=num_tokens,
        codebook_size=codebook_size,
        split=split,
        rectifier=RectifierConfig(kind=rectifier, width=16, depth=1),
        autoencoder=AutoencoderInfo(name=UnshuffleAE.name, resolution=RES, latent_shape=(48, 4, 4)),
    )
    model = ReVQ(cfg)
    ae = UnshuffleAE()
    lat = ae.encode(images(64, seed=100 + seed))
    model.normalizer.set_stats(lat.mean(0), lat.std(0) + 1e-3)
    model.quantizer.init_from_data(model.normalizer.normalize(lat), generator=torch.Generator().manual_seed(seed))
    return model.eval()


def tiny_tokenizer(**kwargs):
    from revq.tokenizer import Tokenizer

    return Tokenizer(UnshuffleAE().freeze(), tiny_model(**kwargs))
