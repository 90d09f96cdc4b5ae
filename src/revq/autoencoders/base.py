"""The one interface every frozen autoencoder backend implements.

ReVQ never trains the VAE, so a backend is a frozen module behind two batched calls:
``encode`` takes images in [0, 1] and returns float32 latents, ``decode`` goes back.  Each
backend maps [0, 1] to its own input range and applies its own latent scaling, so callers
(the latent cache, the tokenizer, evaluation) never need to know which VAE they hold.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import nn


class Autoencoder(nn.Module, abc.ABC):
    """A frozen image autoencoder.  Subclasses implement ``_encode`` / ``_decode``.

    ``_encode`` receives images already on the module's device and dtype, in [0, 1]
    (subclasses rescale if they need [-1, 1]); ``_decode`` returns images in roughly [0, 1].
    """

    name: str = "autoencoder"  # identity recorded in latent caches and models
    latent_channels: int = 0
    downsample: int = 1  # spatial reduction factor f: latents are (C, R/f, R/f)

    def __init__(self) -> None:
        super().__init__()
        self.channels_last = False

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for tensor in self.parameters():
            return tensor.dtype
        return torch.float32

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """(C, H, W) of the latent of an R x R image."""
        side = math.ceil(int(resolution) / self.downsample)
        return (int(self.latent_channels), side, side)

    def freeze(self) -> "Autoencoder":
        """Eval mode, no gradients: the VAE is never trained in ReVQ."""
        self.eval()
        for param in self.parameters():
            param.requires_grad_(False)
        return self

    def use_channels_last(self, enabled: bool = True) -> "Autoencoder":
        """Switch weights and inputs to NHWC; oneDNN convolutions on CPU are faster that way."""
        self.channels_last = bool(enabled)
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        return self

    # ------------------------------------------------------------------ public API
    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,R,R) float in [0,1] -> latents (B,C,R/f,R/f) float32 (no grad)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B,3,H,W), got {tuple(images.shape)}")
        x = self._prepare(images)
        z = self._encode(x)
        return z.float().contiguous()

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w) latents -> images (B,3,h*f,w*f) float32 in [0,1], clamped."""
        if latents.ndim != 4:
            raise ValueError(f"expected latents of shape (B,C,H,W), got {tuple(latents.shape)}")
        z = self._prepare(latents)
        x = self._decode(z)
        return x.float().clamp_(0.0, 1.0).contiguous()

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.device, dtype=self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # ------------------------------------------------------------------ backend hooks
    @abc.abstractmethod
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """images in [0,1] on device/dtype -> latents (scaled as the backend defines)."""

    @abc.abstractmethod
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents -> images approximately in [0,1] (clamped by the caller)."""

    def extra_repr(self) -> str:
        return f"name={self.name!r}, latent_channels={self.latent_channels}, downsample={self.downsample}"
