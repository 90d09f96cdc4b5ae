"""Arguments and loading shared by the commands that use a trained tokenizer."""

from __future__ import annotations

import argparse
import re

import torch

from revq.errors import RevqError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (RUN_DIR/model) or Hugging Face Hub id")
    parser.add_argument("--vae-weights", default=None, help="explicit autoencoder weights path (else the usual search)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--vae-dtype", default="float32", choices=sorted(DTYPES), help="autoencoder compute dtype")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RevqError(f"--device {name}: no CUDA device is available")
    return name


def load_tokenizer(args, *, batch_size: int | None = None):
    from revq.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(
        args.model,
        device=resolve_device(args.device),
        dtype=DTYPES[args.vae_dtype],
        weights_path=args.vae_weights,
        batch_size=batch_size,
    )


def check_resolution(tokenizer, resolution: int | None) -> int:
    if resolution is None:
        return tokenizer.resolution
    if int(resolution) != tokenizer.resolution:
        raise RevqError(
            f"--resolution {resolution} differs from the {tokenizer.resolution} px this model was trained "
            f"at (its latent shape is {tuple(tokenizer.config.latent_shape)}); leave --resolution out"
        )
    return int(resolution)


def tokenizer_and_images(args, images):
    """The model of ``--model`` and an image source over ``images`` at the model's resolution
    (``--resolution`` must agree with it), limited to ``--limit`` images."""
    from revq.data.images import open_image_source

    tokenizer = load_tokenizer(args)
    resolution = check_resolution(tokenizer, args.resolution)
    return tokenizer, open_image_source(images, resolution=resolution, limit=args.limit)


def safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") or "image"
