"""``revq eval``: reconstruction quality of a trained tokenizer on every image of a set."""

from __future__ import annotations

import json
import math
import sys

from revq.cli._tokenizer_args import add_model_arguments, tokenizer_and_images

HELP = "Measure reconstruction quality of a trained tokenizer."


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, nargs="+", help="images: folder, tar shards, files or a .txt list")
    parser.add_argument("--resolution", type=int, default=None, help="image side (default: the model's)")
    parser.add_argument("--limit", type=int, default=None, help="first N images only (in the source's order)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file (e.g. RUN_DIR/eval.json)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the VAE-only baseline")
    parser.add_argument("--no-extra", action="store_true", help="do not try LPIPS / rFID")
    parser.add_argument("--no-progress", action="store_true")


ROWS = [
    ("num_images", "images", "{:d}"),
    ("psnr", "PSNR RGB (dB)", "{:.3f}"),
    ("psnr_y", "PSNR Y (dB)", "{:.3f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("lpips", "LPIPS", "{:.4f}"),
    ("rfid", "rFID", "{:.3f}"),
    ("latent_mse", "latent MSE (normalised)", "{:.5f}"),
    ("baseline_psnr", "VAE-only PSNR RGB (dB)", "{:.3f}"),
    ("baseline_psnr_y", "VAE-only PSNR Y (dB)", "{:.3f}"),
    ("baseline_ssim", "VAE-only SSIM", "{:.4f}"),
    ("usage", "code usage", "{:.4f}"),
    ("usage_min_group", "usage, least-used group", "{:.4f}"),
    ("perplexity", "perplexity (mean/group)", "{:.1f}"),
    ("bits_per_image", "bits per image", "{:.0f}"),
]


def format_table(result: dict) -> str:
    lines = []
    for key, label, fmt in ROWS:
        value = result.get(key)
        text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)
        lines.append(f"{label:<28} {text}")
    return "\n".join(lines)


def run(args) -> int:
    from revq.errors import RevqError
    from revq.evaluation import evaluate
    from revq.io_utils import write_json_atomic

    tokenizer, source = tokenizer_and_images(args, args.data)
    result = evaluate(
        tokenizer,
        source,
        batch_size=args.batch_size,
        extra_metrics=() if args.no_extra else ("lpips", "rfid"),
        baseline=not args.no_baseline,
        progress=not args.no_progress,
        total=source.estimated_count(),
        protocol={"data": [str(p) for p in source.inputs], "model": str(args.model)},
    )
    if result["num_images"] == 0:
        raise RevqError(f"no readable images in {' '.join(args.data)} ({source.summary()})")
    for name, why in (result.get("unavailable") or {}).items():
        print(f"revq eval: {name} skipped: {why}", file=sys.stderr)
    if source.skipped:
        print(f"revq eval: inputs: {source.summary()}", file=sys.stderr)
    if args.out:
        write_json_atomic(args.out, result)
    if args.json:
        print(json.dumps(result, allow_nan=True))
    else:
        print(format_table(result))
    return 0
