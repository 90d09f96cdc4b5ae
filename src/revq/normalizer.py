"""Latent normaliser: z_n = (z - mean) / std, stored in the model as buffers.

The authors normalise per element (2048 means and stds for a 32x8x8 latent, computed over the
training latents); the quantizer and rectifier work on normalised latents, and the rectified
output is de-normalised before the VAE decoder.  Modes:

* ``"element"``: one mean/std per (c, h, w) (the authors' choice, default);
* ``"channel"``: one per channel, shared over positions;
* ``"global"``: one scalar pair;
* ``"none"``: identity.

The buffers are always full (C, H, W) tensors so that every mode has the same state-dict layout;
coarser modes store their statistics broadcast.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from revq.errors import ConfigError

MODES = ("element", "channel", "global", "none")
MIN_STD = 1e-6  # floor for constant elements (a zero std would blow up the normalised latent)


class LatentNormalizer(nn.Module):
    def __init__(self, latent_shape: tuple[int, int, int], *, mode: str = "element") -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"normalization {mode!r} unknown; choose from {MODES}")
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.mode = mode
        self.register_buffer("mean", torch.zeros(self.latent_shape))
        self.register_buffer("std", torch.ones(self.latent_shape))

    def extra_repr(self) -> str:
        return f"latent_shape={self.latent_shape}, mode={self.mode!r}"

    @torch.no_grad()
    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        """Install statistics.

        ``mean``/``std`` may be per element (C, H, W) (they are then reduced to the mode's
        granularity exactly: a pooled mean/variance over equally sized elements), per channel
        (C,), or scalars.  Mode "none" ignores them.
        """
        if self.mode == "none":
            return
        C, H, W = self.latent_shape
        mean = torch.as_tensor(mean, dtype=torch.float64)
        std = torch.as_tensor(std, dtype=torch.float64)
        if mean.shape != std.shape:
            raise ConfigError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} differ in shape")
        if tuple(mean.shape) == self.latent_shape:
            if self.mode == "element":
                m, s = mean, std
            else:
                dims = (1, 2) if self.mode == "channel" else (0, 1, 2)
                m = mean.mean(dims, keepdim=True)
                var = (std**2 + mean**2).mean(dims, keepdim=True) - m**2
                s = var.clamp_min(0).sqrt()
        elif tuple(mean.shape) == (C,) and self.mode in ("channel", "global"):
            if self.mode == "channel":
                m, s = mean[:, None, None], std[:, None, None]
            else:
                m = mean.mean()
                s = ((std**2 + mean**2).mean() - m**2).clamp_min(0).sqrt()
        elif mean.numel() == 1 and self.mode == "global":
            m, s = mean.reshape(()), std.reshape(())
        else:
            raise ConfigError(
                f"normalization {self.mode!r} needs statistics of shape {self.latent_shape}"
                f"{' or (C,)' if self.mode != 'element' else ''}{' or ()' if self.mode == 'global' else ''}; "
                f"got {tuple(mean.shape)}"
            )
        self.mean.copy_(m.expand(self.latent_shape).float())
        self.std.copy_(s.expand(self.latent_shape).float().clamp_min(MIN_STD))

    def set_stats_from_cache(self, stats: dict) -> None:
        """Install statistics from a latent cache's ``stats`` dict (keys mean/std, channel_*, global_*)."""
        if self.mode == "channel" and "channel_mean" in stats:
            self.set_stats(stats["channel_mean"], stats["channel_std"])
        elif self.mode == "global" and "global_mean" in stats:
            self.set_stats(stats["global_mean"], stats["global_std"])
        else:
            self.set_stats(stats["mean"], stats["std"])

    def normalize(self, z: Tensor) -> Tensor:
        """(B, C, H, W) raw latents -> normalised."""
        if self.mode == "none":
            return z
        return (z - self.mean) / self.std

    def denormalize(self, z: Tensor) -> Tensor:
        """Normalised -> raw latents (ready for the VAE decoder)."""
        if self.mode == "none":
            return z
        return z * self.std + self.mean

    forward = normalize
