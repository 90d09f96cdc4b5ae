"""Encode throughput: a plain fp32 loop vs revq's encode path, measured in the same run.

    python benchmarks/bench_encode.py [--images 512] [--batch-size 64] [--workers 1] [--repeats 2]

The plain loop is what one would write first: decode images one by one in the main process,
``torch.no_grad()``, NCHW fp32.  revq's path is ``encode_to_cache`` (which also writes the
shards and statistics): decoding in worker processes, ``inference_mode``, channels_last, and
optionally bf16 autocast.  Variants are interleaved over ``--repeats`` rounds and the best
round of each is reported, because the CPU may be shared.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from revq import paths
from revq.autoencoders import load_autoencoder
from revq.data.images import open_image_source
from revq.data.latent_cache import encode_to_cache


def machine_info() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()),
    }
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), None)
        flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
        info["cpu_flags"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    except OSError:
        pass
    return info


def plain_loop(data: Path, *, images: int, batch_size: int, ae) -> tuple[float, torch.Tensor]:
    """The baseline: serial decoding, no_grad, NCHW fp32."""
    start = time.perf_counter()
    out, batch = [], []
    with torch.no_grad():
        for _, image, _ in open_image_source(data, resolution=64, limit=images):
            batch.append(image)
            if len(batch) == batch_size:
                out.append(ae.encoder(torch.stack(batch)))
                batch = []
        if batch:
            out.append(ae.encoder(torch.stack(batch)))
    latents = torch.cat(out)
    return len(latents) / (time.perf_counter() - start), latents


def revq_path(data: Path, *, images: int, batch_size: int, workers: int, bf16: bool, ae, tmp: Path) -> tuple[float, torch.Tensor]:
    out = tmp / f"cache-{'bf16' if bf16 else 'fp32'}"
    shutil.rmtree(out, ignore_errors=True)
    source = open_image_source(data, resolution=64, limit=images)
    start = time.perf_counter()
    cache = encode_to_cache(source, ae, out, batch_size=batch_size, shard_size=4096, workers=workers, bf16=bf16, progress=False)
    rate = len(cache) / (time.perf_counter() - start)
    return rate, cache.all()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((-10 * torch.log10((a - b).pow(2).flatten(1).mean(1))).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default=None, help="tar shard (default: shared Tiny-ImageNet val-000000)")
    args = parser.parse_args()

    data = Path(args.data) if args.data else (paths.tiny_imagenet_dir() or Path("missing")) / "val-000000.tar.gz"
    if not data.exists():
        print(f"benchmark data {data} not found: pass --data or provide ../shared", file=sys.stderr)
        return 2
    machine = machine_info()  # load average before the run
    plain_ae = load_autoencoder("taef2")
    fast_ae = load_autoencoder("taef2").use_channels_last()
    rates: dict[str, list[float]] = {"plain_fp32_loop": [], "revq_fp32": [], "revq_bf16": []}
    latents = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            rate, latents["plain"] = plain_loop(data, images=args.images, batch_size=args.batch_size, ae=plain_ae)
            rates["plain_fp32_loop"].append(rate)
            for bf16 in (False, True):
                rate, latents[bf16] = revq_path(
                    data, images=args.images, batch_size=args.batch_size, workers=args.workers,
                    bf16=bf16, ae=fast_ae, tmp=Path(tmp),
                )
                rates["revq_bf16" if bf16 else "revq_fp32"].append(rate)
    best = {k: max(v) for k, v in rates.items()}
    # quality impact of bf16: latent error and round-trip PSNR against the fp32 path
    images = torch.stack([im for _, im, _ in open_image_source(data, resolution=64, limit=args.images)])
    ref, low = latents[False], latents[True]
    quality = {
        "fp32_path_vs_plain_max_abs_diff": float((ref - latents["plain"]).abs().max()),
        "bf16_latent_relative_rmse": float((low - ref).norm() / ref.norm()),
        "round_trip_psnr_fp32_db": psnr(plain_ae.decode(ref), images),
        "round_trip_psnr_bf16_db": psnr(plain_ae.decode(low), images),
    }
    machine["loadavg_end"] = list(os.getloadavg())
    result = {
        "benchmark": "encode TAEF2 64px images -> latents",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "images": args.images,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "repeats": args.repeats,
        "images_per_s_best": {k: round(v, 2) for k, v in best.items()},
        "images_per_s_all": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "speedup_vs_plain": {
            "revq_fp32": round(best["revq_fp32"] / best["plain_fp32_loop"], 2),
            "revq_bf16": round(best["revq_bf16"] / best["plain_fp32_loop"], 2),
        },
        "quality": {k: round(v, 5) for k, v in quality.items()},
        "machine": machine,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
