"""``revq probe``: the paper's noise-tolerance experiment (Sec. 3.2) for any autoencoder."""

from __future__ import annotations

import json

from revq.errors import RevqError

HELP = "Noise-tolerance probe of an autoencoder (paper Sec. 3.2)."


def add_arguments(parser) -> None:
    from revq.probe import DEFAULT_SCALES

    parser.add_argument("--vae", default="taef2", help="autoencoder: 'taef2' (default), a diffusers hub id or local folder")
    parser.add_argument("--weights", default=None, help="folder with TAEF2 .pth weights (overrides the default search)")
    parser.add_argument("--data", nargs="+", required=True, help="images: folder, tar shards, files or a .txt list")
    parser.add_argument("--resolution", type=int, required=True, help="image side R")
    parser.add_argument("--limit", type=int, default=256, help="first N images (default 256)")
    parser.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES),
                        help="noise std values in normalised latent units (0 = clean round trip is always added)")
    parser.add_argument("--margin", type=float, default=0.5, help="PSNR drop (dB) that still counts as tolerated")
    parser.add_argument("--stats", default=None,
                        help="latent cache whose per-element mean/std normalise the latents (default: the probed sample's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-ssim", action="store_true", help="PSNR only (faster)")
    parser.add_argument("--out", default=None, help="folder for probe.json and probe.png")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--device", default="cpu")


def run(args) -> int:
    import torch

    from revq.autoencoders import load_autoencoder
    from revq.data.images import open_image_source
    from revq.io_utils import write_result_folder
    from revq.probe import noise_probe, plot_probe

    if args.limit is not None and args.limit <= 0:
        raise RevqError("--limit must be positive")
    if args.margin < 0:
        raise RevqError("--margin must be >= 0")
    if any(s < 0 for s in args.scales):
        raise RevqError("--scales must be >= 0")
    ae = load_autoencoder(args.vae, device=args.device, weights_path=args.weights)
    if args.resolution % ae.downsample:
        raise RevqError(f"--resolution {args.resolution} is not a multiple of {ae.name}'s factor {ae.downsample}")
    source = open_image_source(args.data, resolution=args.resolution, limit=args.limit)
    images = [im for _, im, _ in source]
    if not images:
        raise RevqError(f"no readable images in {' '.join(args.data)}")
    mean = std = None
    if args.stats:
        from revq.data.latent_cache import LatentCache

        stats = LatentCache(args.stats).stats
        mean, std = stats["mean"], stats["std"]
        if tuple(mean.shape) != tuple(ae.latent_shape(args.resolution)):
            raise RevqError(f"--stats cache latents {tuple(mean.shape)} do not match {ae.name} at {args.resolution}px")
    batches = [torch.stack(images[i:i + args.batch_size]) for i in range(0, len(images), args.batch_size)]
    result = noise_probe(ae, batches, scales=args.scales, margin_db=args.margin, mean=mean, std=std,
                         seed=args.seed, compute_ssim=not args.no_ssim)
    data = result.to_dict()
    data["protocol"] = {"data": [str(p) for p in source.inputs], "resolution": args.resolution,
                        "limit": args.limit, "stats": args.stats or "probed sample", "seed": args.seed}
    if args.out:
        write_result_folder(args.out, "probe", data, lambda path: plot_probe(result, path))
    if args.json:
        print(json.dumps(data))
    else:
        print(f"{result.autoencoder}: {result.num_images} images, clean round trip {result.clean_psnr:.3f} dB")
        print(result.table())
        if result.tolerance_scale is None:
            print(f"no probed noise scale keeps PSNR within {args.margin:g} dB of the clean round trip")
        else:
            print(f"tolerance: noise std {result.tolerance_scale:g} (latent MSE {result.tolerance_mse:.4g}) "
                  f"keeps PSNR within {args.margin:g} dB")
    return 0
