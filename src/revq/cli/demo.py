"""``revq demo``: the whole pipeline on the offline default, in minutes on a laptop CPU.

TAEF2 + a few thousand Tiny-ImageNet-64 images -> latent caches -> train a CPU preset ->
evaluate on held-out images -> report directory (report.html, reconstructions.png, eval.json,
demo.json).  Re-running with the same options reuses what is already done.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

HELP = "Run the whole pipeline on the offline default (TAEF2 + Tiny-ImageNet-64)."

log = logging.getLogger(__name__)
OFFICIAL_ZIP = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-output", help="output folder (default ./demo-output)")
    parser.add_argument("--data", help="Tiny-ImageNet folder (default: $REVQ_DATA_DIR or ../shared/data/tiny-imagenet-200)")
    parser.add_argument("--preset", default="cpu-512t", help="training preset (default cpu-512t)")
    parser.add_argument("--num-train", type=int, default=3000, help="training images (default 3000)")
    parser.add_argument("--num-val", type=int, default=500, help="held-out images for validation and evaluation (default 500)")
    parser.add_argument("--codebook-size", type=int, default=1024,
                        help="codes per codebook (default 1024, smaller than the preset's, so that the "
                             "demo trains in minutes on a few thousand images)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training config field (repeatable)")
    parser.add_argument("--vae-weights", help="explicit TAEF2 weights (else the usual search / download)")
    parser.add_argument("--no-progress", action="store_true")


def find_tiny_imagenet(explicit: str | None) -> tuple[list[Path], list[Path]]:
    """(train inputs, val inputs): WebDataset shards, or the unzipped official folder."""
    from revq.errors import MissingResourceError
    from revq.paths import DATA_ENV, tiny_imagenet_dir, user_cache_dir

    tried: list[str] = []
    candidates = [Path(explicit)] if explicit else []
    if not explicit:
        found = tiny_imagenet_dir()
        if found is not None:
            candidates.append(found)
        candidates.append(user_cache_dir() / "tiny-imagenet-200")
    for folder in candidates:
        tried.append(str(folder))
        train = sorted(folder.glob("train-*.tar*"))
        val = sorted(folder.glob("val-*.tar*"))
        if train and val:
            return train, val
        if (folder / "train").is_dir() and (folder / "val" / "images").is_dir():  # the official zip, unpacked
            return [folder / "train"], [folder / "val" / "images"]
    raise MissingResourceError(
        "Tiny-ImageNet-64 images not found (tried: " + ", ".join(tried) + "). Give --data DIR or set "
        f"{DATA_ENV} to a folder holding either the WebDataset shards train-*.tar.gz / val-*.tar.gz "
        f"or the unpacked official {OFFICIAL_ZIP} (folders train/ and val/images/)."
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from revq.autoencoders import load_autoencoder
    from revq.config import apply_overrides
    from revq.data.images import open_image_source
    from revq.data.latent_cache import encode_to_cache
    from revq.errors import ConfigError
    from revq.io_utils import write_json_atomic
    from revq.training.presets import get_preset
    from revq.training.trainer import train

    if args.num_train < 1 or args.num_val < 1 or args.epochs < 1:
        raise ConfigError("--num-train, --num-val and --epochs must be >= 1")
    out = Path(args.out)
    progress = not args.no_progress
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # 1. data + frozen autoencoder -------------------------------------------------------
    cfg = get_preset(args.preset)
    resolution = cfg.model.autoencoder.resolution
    train_inputs, val_inputs = find_tiny_imagenet(args.data)
    ae = load_autoencoder(cfg.model.autoencoder.name, device="cpu", weights_path=args.vae_weights)
    log.info("demo: %s, %d train / %d val images at %d px -> %s", ae.name, args.num_train, args.num_val, resolution, out)

    # 2. encode once into latent caches ------------------------------------------------------
    t = time.perf_counter()
    caches = {}
    for split, inputs, limit in (("train", train_inputs, args.num_train), ("val", val_inputs, args.num_val)):
        print(f"[demo] encoding {limit} {split} images with {ae.name} ...", flush=True)
        source = open_image_source(inputs, resolution=resolution, limit=limit)
        caches[split] = encode_to_cache(source, ae, out / "latents" / split, batch_size=64, progress=progress)
    timings["encode_s"] = time.perf_counter() - t

    # 3. train ------------------------------------------------------------------------------------
    t = time.perf_counter()
    demo_overrides = [f"epochs={args.epochs}", f"seed={args.seed}", f"model.codebook_size={args.codebook_size}"]
    apply_overrides(cfg, [*demo_overrides, *args.overrides])
    cfg.overrides = [*demo_overrides, *args.overrides]
    cfg.latents, cfg.val_latents, cfg.out = str(caches["train"].dir), str(caches["val"].dir), str(out / "run")
    cfg.progress = progress
    cfg.val_limit = 0
    print(f"[demo] training preset {args.preset} for {cfg.epochs} epochs ...", flush=True)
    result = train(cfg)
    timings["train_s"] = time.perf_counter() - t

    # 4. evaluate + reconstruction grid + report ----------------------------------------------------
    t = time.perf_counter()
    report_path, eval_result = _evaluate_and_report(ae, result.model_dir, result.run_dir, val_inputs,
                                                    resolution=resolution, limit=args.num_val, progress=progress)
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    summary = {
        "preset": args.preset, "autoencoder": ae.name, "num_train": len(caches["train"]),
        "num_val": len(caches["val"]), "epochs": cfg.epochs, "timings": timings,
        "train": result.history[-1] if result.history else result.state.last_val,
        "eval": {k: v for k, v in (eval_result or {}).items() if not isinstance(v, list)},
        "model": str(result.model_dir), "report": str(report_path) if report_path else None,
        "threads": torch.get_num_threads(),
    }
    write_json_atomic(out / "demo.json", summary)
    e = summary["eval"]
    if e:
        print(f"[demo] {e.get('num_images')} held-out images: PSNR {e.get('psnr', float('nan')):.2f} dB "
              f"(TAEF2 alone {e.get('baseline_psnr', float('nan')):.2f} dB), SSIM {e.get('ssim', float('nan')):.3f}, "
              f"code usage {e.get('usage', float('nan')):.3f}")
    print(f"[demo] done in {timings['total_s']:.0f} s: model {result.model_dir}"
          + (f", report {report_path}" if report_path else "") + f", summary {out / 'demo.json'}")
    return 0


def _evaluate_and_report(ae, model_dir: Path, run_dir: Path, val_inputs, *, resolution: int, limit: int, progress: bool):
    """Issue 5's evaluation and report, when present in this build."""
    try:
        from revq.cli.reconstruct import write_reconstructions
        from revq.data.images import open_image_source
        from revq.evaluation import evaluate
        from revq.model import ReVQ
        from revq.report import EVAL_FILE, write_report
        from revq.tokenizer import Tokenizer
    except ImportError as error:  # pragma: no cover - partial builds only
        log.warning("evaluation/report unavailable in this build (%s); skipping", error)
        return None, None
    from revq.io_utils import write_json_atomic

    tokenizer = Tokenizer(ae, ReVQ.from_pretrained(model_dir))
    print(f"[demo] evaluating on {limit} held-out images ...", flush=True)
    source = open_image_source(val_inputs, resolution=resolution, limit=limit)
    result = evaluate(tokenizer, source, extra_metrics=(), progress=progress, total=limit,
                      protocol={"data": [str(p) for p in val_inputs], "limit": limit, "resolution": resolution})
    write_json_atomic(run_dir / EVAL_FILE, result)
    grid_source = open_image_source(val_inputs, resolution=resolution, limit=8)
    write_reconstructions(tokenizer, grid_source, run_dir, triplets=False)
    return write_report(run_dir, title="revq demo"), result
