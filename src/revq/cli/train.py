"""``revq train``: train codebooks and rectifier on a latent cache.

    revq train --preset cpu-512t --latents cache/train --val-latents cache/val --out runs/a
    torchrun --nproc_per_node 4 -m revq train --preset paper-512t --latents ... --out ...

A run directory that already holds checkpoints is resumed (``--resume`` insists on it); the
finished model is written to RUN_DIR/model (``ReVQ.from_pretrained``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Train codebooks and rectifier on a latent cache."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from revq.training.presets import list_presets

    presets = ", ".join(list_presets())
    parser.add_argument("--preset", help=f"named preset: {presets}")
    parser.add_argument("--config", help="a train_config.json to start from instead of a preset")
    parser.add_argument("--latents", help="training latent cache (made by `revq encode`)")
    parser.add_argument("--val-latents", help="held-out latent cache for validation each epoch")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, metrics, model/)")
    parser.add_argument("--epochs", type=int, help="number of epochs")
    parser.add_argument("--batch-size", type=int, help="global batch size (all processes together)")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (default auto)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, e.g. --set lr=5e-3 --set model.codebook_size=4096 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out (required to exist); runs with checkpoints resume anyway")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_config(args: argparse.Namespace):
    """The TrainConfig for these arguments (a preset / config file / the run dir's saved one)."""
    from revq.config import apply_overrides
    from revq.errors import ConfigError
    from revq.training.checkpoint import CheckpointManager
    from revq.training.config import TrainConfig
    from revq.training.presets import get_preset, list_presets

    out = Path(args.out)
    saved = out / "train_config.json"
    has_ckpt = CheckpointManager(out / "checkpoints").latest() is not None
    if args.resume and not has_ckpt:
        raise ConfigError(f"--resume: {out} has no checkpoint to resume from")
    if args.preset and args.config:
        raise ConfigError("give --preset or --config, not both")
    if args.preset:
        cfg = get_preset(args.preset)
    elif args.config:
        cfg = TrainConfig.from_json(args.config)
    elif saved.exists() and has_ckpt:
        cfg = TrainConfig.from_json(saved)
    else:
        raise ConfigError(f"choose a preset with --preset NAME ({', '.join(list_presets())}) or give --config FILE")
    flags = []
    if args.epochs is not None:
        flags.append(f"epochs={args.epochs}")
    if args.batch_size is not None:
        flags.append(f"batch_size={args.batch_size}")
    if args.seed is not None:
        flags.append(f"seed={args.seed}")
    if args.device is not None:
        flags.append(f"device={args.device}")
    overrides = flags + list(args.overrides)
    apply_overrides(cfg, overrides)
    if args.latents:
        cfg.latents = str(args.latents)
    if args.val_latents:
        cfg.val_latents = str(args.val_latents)
    cfg.out = str(out)
    if args.no_progress:
        cfg.progress = False
    if args.preset or args.config:
        cfg.overrides = overrides
    else:
        cfg.overrides = list(cfg.overrides) + overrides
    if not cfg.latents:
        raise ConfigError("no training latents: give --latents DIR (a cache made by `revq encode`)")
    return cfg


def run(args: argparse.Namespace) -> int:
    from revq.training.trainer import train

    cfg = build_config(args)
    result = train(cfg)
    if result.model_dir is not None and result.state.finished:
        last = result.history[-1] if result.history else result.state.last_val
        extra = ""
        if last and "val_latent_mse" in last:
            extra = f" (val latent MSE {last['val_latent_mse']:.5f}, val usage {last['val_usage']:.3f})"
        from revq.training.distributed import env_world

        if env_world()[0] == 0:
            print(f"trained model written to {result.model_dir}{extra}")
    return 0
