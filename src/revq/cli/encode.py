"""``revq encode``: images -> sharded, memory-mapped latent cache (resumable)."""

from __future__ import annotations

import argparse
import logging
import os

from revq.errors import RevqError

HELP = "Encode images into a sharded, memory-mapped latent cache."

logger = logging.getLogger("revq.encode")


def default_workers() -> int:
    """Decoding workers: leave one core to the encoder."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae", default="taef2", help="autoencoder: 'taef2' (default), a diffusers hub id or local folder")
    parser.add_argument("--weights", default=None, help="folder with TAEF2 .pth weights (overrides the default search)")
    parser.add_argument("--data", nargs="+", required=True,
                        help="ImageFolder tree, WebDataset .tar/.tar.gz shards (globs ok), image files or a .txt list")
    parser.add_argument("--resolution", type=int, required=True, help="image side R (short side resize + centre crop)")
    parser.add_argument("--out", required=True, help="cache folder (rerun the same command to resume)")
    parser.add_argument("--limit", type=int, default=None, help="encode at most N source images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=4096, help="latents per .npy shard")
    parser.add_argument("--flip", action="store_true", help="also store a horizontally flipped copy of every image")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the encoder (faster on AVX512-BF16/AMX/GPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"image decoding processes (default: cores - 1 = {default_workers()}; 0 = in-process)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--small", choices=("upscale", "skip"), default="upscale",
                        help="images smaller than R: upscale (default) or skip")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from revq.autoencoders import load_autoencoder
    from revq.data.images import open_image_source
    from revq.data.latent_cache import encode_to_cache

    if args.limit is not None and args.limit <= 0:
        raise RevqError("--limit must be positive")
    source = open_image_source(args.data, resolution=args.resolution, flip=args.flip, limit=args.limit, small=args.small)
    autoencoder = load_autoencoder(args.vae, device=args.device, weights_path=args.weights)
    if args.resolution % autoencoder.downsample:
        raise RevqError(f"--resolution {args.resolution} is not a multiple of {autoencoder.name}'s factor {autoencoder.downsample}")
    if autoencoder.device.type == "cpu":
        autoencoder.use_channels_last()
    workers = default_workers() if args.workers is None else max(0, args.workers)
    cache = encode_to_cache(
        source, autoencoder, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
        workers=workers, bf16=args.bf16, progress=not args.no_progress,
    )
    manifest = cache.manifest
    print(
        f"{len(cache)} latents {tuple(cache.latent_shape)} from {manifest['autoencoder']} at "
        f"{manifest['resolution']}px -> {cache.dir}\n"
        f"skipped {manifest['skipped']['count']} inputs {manifest['skipped']['reasons'] or ''}, "
        f"converted {manifest['converted']['count']} {manifest['converted']['reasons'] or ''}"
    )
    return 0
