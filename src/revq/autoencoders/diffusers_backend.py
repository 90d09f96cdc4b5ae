"""Autoencoders from diffusers, by hub id or local folder (DC-AE, AutoencoderKL, FLUX.2 VAE).

A hub id and a local folder take exactly the same path: ``ConfigMixin.load_config`` finds
``config.json`` (at the root or in a ``vae/`` subfolder of a pipeline), its ``_class_name``
picks the class, and ``from_pretrained`` loads it.  diffusers is imported only here, lazily,
so TAEF2 users never pay for it.

Latent conventions (what ``encode`` returns):

- ``AutoencoderDC`` (the paper's DC-AE): ``latent * scaling_factor``.
- ``AutoencoderKL`` (SD, SDXL, FLUX.1): posterior *mean* (deterministic, as ReVQ needs a
  fixed target), then ``(z - shift_factor) * scaling_factor``.
- ``AutoencoderKLFlux2``: posterior mean, unscaled: the 32-channel f8 FLUX.2 latent (the
  space TAEF2 imitates).  The pipeline's 2x2 patchify + BatchNorm is left out; revq's own
  latent normaliser standardises the latents.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from revq.autoencoders.base import Autoencoder
from revq.errors import MissingResourceError, RevqError

logger = logging.getLogger(__name__)

SUPPORTED = ("AutoencoderDC", "AutoencoderKL", "AutoencoderKLFlux2")


def _import_diffusers():
    try:
        import diffusers
    except ImportError as error:  # pragma: no cover - diffusers is a dependency today
        raise MissingResourceError(
            "diffusers autoencoders need the diffusers package: pip install 'revq[diffusers]' "
            f"(or pip install diffusers) ({error})"
        ) from error
    return diffusers


def _load_config(name_or_path: str) -> tuple[dict, str | None]:
    """(config, subfolder): the model's config.json at the root or under ``vae/``."""
    diffusers = _import_diffusers()
    errors = []
    for subfolder in (None, "vae"):
        try:
            config = diffusers.AutoencoderKL.load_config(name_or_path, subfolder=subfolder)  # any ModelMixin reads config.json
            if isinstance(config, tuple):
                config = config[0]
            return dict(config), subfolder
        except Exception as error:  # noqa: BLE001 - EnvironmentError, HTTP errors, offline
            errors.append(f"{'<root>' if subfolder is None else subfolder}/config.json: {error}")
    where = "local folder" if Path(name_or_path).exists() else "Hugging Face hub id"
    raise MissingResourceError(
        f"could not load an autoencoder config from {name_or_path!r} ({where}). Tried:\n  - "
        + "\n  - ".join(errors)
        + "\nFix: check the id or path; offline, download the model first "
        "(huggingface-cli download ID) or pass a local folder holding config.json + weights."
    )


class DiffusersAutoencoder(Autoencoder):
    """Wraps a diffusers VAE; maps [0,1] <-> [-1,1] and applies the model's latent scaling."""

    def __init__(self, model, *, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.kind = type(model).__name__
        config = model.config
        self.latent_channels = int(config.latent_channels)
        if self.kind == "AutoencoderDC":
            self.downsample = 2 ** (len(config.encoder_block_out_channels) - 1)
            self.scale, self.shift = float(getattr(config, "scaling_factor", 1.0) or 1.0), 0.0
        elif self.kind == "AutoencoderKLFlux2":
            self.downsample = 2 ** (len(config.block_out_channels) - 1)
            self.scale, self.shift = 1.0, 0.0
        else:  # AutoencoderKL
            self.downsample = 2 ** (len(config.block_out_channels) - 1)
            self.scale = float(getattr(config, "scaling_factor", 1.0) or 1.0)
            self.shift = float(getattr(config, "shift_factor", 0.0) or 0.0)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        x = images * 2 - 1  # diffusers VAEs take [-1, 1]
        if self.kind == "AutoencoderDC":
            z = self.model.encode(x).latent
        else:
            z = self.model.encode(x).latent_dist.mean  # deterministic target for ReVQ
        return (z - self.shift) * self.scale

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents / self.scale + self.shift
        x = self.model.decode(z).sample
        return (x + 1) / 2


def load_diffusers_autoencoder(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DiffusersAutoencoder:
    """Load a diffusers autoencoder by hub id or local folder (same code path for both)."""
    diffusers = _import_diffusers()
    source = str(name_or_path)
    local = Path(source).expanduser()
    if local.exists():
        source = str(local.resolve())
    config, subfolder = _load_config(source)
    class_name = config.get("_class_name")
    if class_name not in SUPPORTED:
        raise RevqError(
            f"{name_or_path!r} is a {class_name or 'model without _class_name'}; "
            f"supported autoencoders: {', '.join(SUPPORTED)} (or 'taef2')"
        )
    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise RevqError(f"this diffusers ({diffusers.__version__}) has no {class_name}; upgrade diffusers")
    kwargs = {"subfolder": subfolder} if subfolder else {}
    model = cls.from_pretrained(source, torch_dtype=dtype, **kwargs)
    wrapper = DiffusersAutoencoder(model, name=source)
    return wrapper.to(device=device, dtype=dtype).freeze()
