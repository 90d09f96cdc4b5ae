"""``revq reconstruct``: original | VAE | ReVQ comparison grids."""

from __future__ import annotations

from pathlib import Path

from revq.cli._tokenizer_args import (
    add_model_arguments,
    safe_name,
    tokenizer_and_images,
)

HELP = "Write original | VAE | ReVQ comparison grids."


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("images", nargs="+", help="image files, folders, tar shards or a .txt list")
    parser.add_argument("--out", required=True, help="output folder (reconstructions.png + per-image triplets)")
    parser.add_argument("--resolution", type=int, default=None, help="image side (default: the model's)")
    parser.add_argument("--limit", type=int, default=16, help="at most N images (default 16)")
    parser.add_argument("--scale", type=int, default=None, help="pixel zoom of the grid (default: to ~256 px)")
    parser.add_argument("--no-triplets", action="store_true", help="only the combined grid")


def write_reconstructions(tokenizer, source, out: Path, *, scale: int | None = None, triplets: bool = True) -> Path:
    import torch

    from revq.errors import RevqError
    from revq.evaluation import make_grid, reconstruction_triplets
    from revq.report import GRID_FILE

    items = list(source)
    if not items:
        raise RevqError("no readable images to reconstruct")
    keys = [k for k, _, _ in items]
    images = torch.stack([im for _, im, _ in items])
    columns = reconstruction_triplets(tokenizer, images)
    if scale is None:
        scale = max(1, 256 // images.shape[-1])
    out.mkdir(parents=True, exist_ok=True)
    grid_path = out / GRID_FILE
    make_grid(columns, scale=scale).save(grid_path)
    if triplets:
        for i, key in enumerate(keys):
            make_grid([c[i : i + 1] for c in columns], scale=scale).save(out / f"{i:03d}_{safe_name(key)}.png")
    return grid_path


def run(args) -> int:

    tokenizer, source = tokenizer_and_images(args, args.images)
    path = write_reconstructions(tokenizer, source, Path(args.out), scale=args.scale, triplets=not args.no_triplets)
    print(f"grid (original | VAE | ReVQ) written to {path}")
    if source.skipped:
        print(f"inputs: {source.summary()}")
    return 0
