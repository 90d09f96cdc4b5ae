"""The ReVQ model: latent normaliser + channel multi-group quantizer + rectifier.

Paper Eq. 4: ``Z_e' = g(q(Z_e, C))``.  Training objectives (``config.objective``):

* ``"paper"`` (Eq. 5): ``L = ||z - g(q(z))||^2``; the codebook learns through the rectifier
  (no straight-through estimator: ``q(z)`` is made of code rows, so gradients reach them via g).
* ``"decoupled"`` (what the authors' public code trains):
  ``L = ||z - q(z)||^2 + ||z - g(sg(q(z)))||^2``: the codebook learns from its own quantization
  error and the rectifier on detached quantized latents.

All losses are means over elements (``F.mse_loss``), in normalised latent units.

Table 6 ablation (``config.pre_encoder``): an encoder e of the rectifier's architecture before the
quantizer.  Without an estimator e would get no gradient through the quantizer, so there (and only
there) a straight-through path is used: the rectifier input is ``q + e(z) - sg(e(z))``
(value q, gradient to e), and the quantization term is ``||e(z) - q(e(z))||^2``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from revq.config import ReVQConfig
from revq.errors import ConfigError, MissingResourceError
from revq.normalizer import LatentNormalizer
from revq.quantizer import MultiGroupQuantizer
from revq.rectifier import build_pre_encoder, build_rectifier, num_parameters

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "revq"
FORMAT_VERSION = 1


class ReVQ(nn.Module):
    def __init__(self, config: ReVQConfig) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = ReVQConfig.from_dict(config)
        config.validate()
        self.config = config
        C = config.latent_shape[0]
        self.normalizer = LatentNormalizer(config.latent_shape, mode=config.normalization)
        self.quantizer = MultiGroupQuantizer(
            latent_shape=config.latent_shape,
            num_tokens=config.num_tokens,
            codebook_size=config.codebook_size,
            split=config.split,
            tokens_per_codebook=config.tokens_per_codebook,
        )
        self.rectifier = build_rectifier(config.rectifier, C, latent_shape=config.latent_shape)
        self.pre_encoder = (
            build_pre_encoder(config.rectifier, C, latent_shape=config.latent_shape) if config.pre_encoder else None
        )

    # ------------------------------------------------------------------ pieces
    def encode_normalized(self, latents: Tensor) -> Tensor:
        """Raw latents (B, C, H, W) -> the quantizer's input (normalised, pre-encoded if any)."""
        z = self.normalizer.normalize(latents.float())
        return self.pre_encoder(z) if self.pre_encoder is not None else z

    # ------------------------------------------------------------------ training forward
    def forward(self, latents: Tensor) -> dict:
        """Training/validation step on raw latents (B, C, H, W).

        Returns {"loss", "quant_loss", "rect_loss" (scalars), "indices" (B, T), "z" (normalised
        target), "z_q", "z_rect" (normalised)}.  Codes are counted only in training mode.
        """
        z = self.normalizer.normalize(latents.float())  # (B, C, H, W) target
        h = self.pre_encoder(z) if self.pre_encoder is not None else z
        z_q, indices = self.quantizer.quantize(h)  # z_q: code rows, differentiable w.r.t. codebooks
        z_q = z_q.to(h.dtype)
        quant_loss = F.mse_loss(z_q.float(), h.float())
        if self.config.objective == "decoupled":
            g_in = z_q.detach()
        else:  # "paper": gradients reach the codebook through g
            g_in = z_q
        if self.pre_encoder is not None:
            g_in = g_in + h - h.detach()  # straight-through to the pre-encoder (ablation only)
        z_rect = self.rectifier(g_in)
        rect_loss = F.mse_loss(z_rect.float(), z.float())
        if self.config.objective == "decoupled":
            loss = quant_loss + rect_loss
        else:
            loss = rect_loss
            quant_loss = quant_loss.detach()
        return {
            "loss": loss,
            "quant_loss": quant_loss,
            "rect_loss": rect_loss,
            "indices": indices,
            "z": z,
            "z_q": z_q,
            "z_rect": z_rect,
        }

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def tokenize(self, latents: Tensor) -> Tensor:
        """Raw latents (B, C, H, W) -> tokens (B, T) int64.  Never counts activations."""
        _, indices = self.quantizer.quantize(self.encode_normalized(latents), update_counts=False)
        return indices

    @torch.no_grad()
    def detokenize(self, tokens: Tensor) -> Tensor:
        """Tokens (B, T) -> rectified, de-normalised latents (B, C, H, W) ready for the VAE decoder."""
        z_q = self.quantizer.lookup(tokens)
        return self.normalizer.denormalize(self.rectifier(z_q).float())

    @torch.no_grad()
    def reconstruct(self, latents: Tensor) -> Tensor:
        return self.detokenize(self.tokenize(latents))

    # ------------------------------------------------------------------ bookkeeping
    def num_parameters(self) -> dict:
        """Parameter counts: codebook, rectifier, pre_encoder, total (buffers excluded)."""
        out = {
            "codebook": self.quantizer.codebooks.numel(),
            "rectifier": num_parameters(self.rectifier),
            "pre_encoder": num_parameters(self.pre_encoder),
        }
        out["total"] = sum(out.values())
        return out

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (weights, codebooks, counts, normaliser
        statistics).  The config carries the autoencoder identity.  No pickle."""
        from revq.io_utils import save_safetensors_atomic, write_json_atomic

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / CONFIG_NAME, self.config.to_dict())
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": json.dumps(self.config.to_dict())}
        save_safetensors_atomic(dict(self.state_dict()), directory / WEIGHTS_NAME, metadata=meta)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> "ReVQ":
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        missing = [str(p) for p in (cfg_path, w_path) if not p.is_file()]
        if missing:
            raise MissingResourceError(f"not a saved ReVQ model, missing: {', '.join(missing)}")
        config = ReVQConfig.from_json(cfg_path)
        model = cls(config)
        state = load_file(str(w_path), device=str(device))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"{w_path} does not match {cfg_path}: {exc}") from exc
        return model.to(device)
