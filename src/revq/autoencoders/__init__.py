"""Frozen autoencoder backends behind one interface (:class:`Autoencoder`).

``load_autoencoder("taef2")`` is the offline default (our own TAEF2 implementation);
anything else is a diffusers hub id or a local folder (DC-AE, AutoencoderKL, FLUX.2 VAE).
A local folder holding ``taef2_encoder.pth`` / ``taef2_decoder.pth`` loads as TAEF2.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from revq.autoencoders.base import Autoencoder
from revq.errors import RevqError

__all__ = ["Autoencoder", "load_autoencoder", "REGISTRY"]

# registry name -> loader(device=, dtype=, weights_path=)
REGISTRY = {"taef2": "revq.autoencoders.taef2:TAEF2.load"}
DEFAULT = "taef2"


def _registry_loader(name: str):
    import importlib

    module_name, attr = REGISTRY[name].split(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_autoencoder(
    name_or_path: str | os.PathLike = DEFAULT,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    weights_path: str | os.PathLike | None = None,
) -> Autoencoder:
    """A frozen autoencoder (eval mode, no grad) by registry name, hub id or local path."""
    name = str(name_or_path)
    key = name.lower()
    if key in REGISTRY:
        return _registry_loader(key)(device=device, dtype=dtype, weights_path=weights_path)
    local = Path(name).expanduser()
    if local.is_dir() and (local / "taef2_encoder.pth").is_file():
        return _registry_loader("taef2")(device=device, dtype=dtype, weights_path=local)
    if local.exists() or "/" in name:
        from revq.autoencoders.diffusers_backend import load_diffusers_autoencoder

        return load_diffusers_autoencoder(name, device=device, dtype=dtype)
    raise RevqError(
        f"unknown autoencoder {name!r}: use one of {sorted(REGISTRY)}, a Hugging Face hub id "
        "such as mit-han-lab/dc-ae-f32c32-in-1.0-diffusers, or a local diffusers folder"
    )
