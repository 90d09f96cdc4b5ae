"""``revq convert-official``: the authors' released checkpoints -> a folder ``from_pretrained`` loads.

Either three local files::

    revq convert-official --checkpoint ckpt.pth --config 512T_NC=16384.yaml \
        --preprocessor preprocessor.pth --out models/revq-512T

or a hub id (downloads through huggingface_hub into the user cache, or uses files already put
in ``<cache>/official/<owner>--<name>/download``)::

    revq convert-official --hub AndyRaoTHU/revq-512T [--out DIR]
"""

from __future__ import annotations

import argparse
import json

HELP = "Convert the authors' released ReVQ checkpoints."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="CKPT.pth", help="the authors' ckpt.pth (quantizer + decoder)")
    parser.add_argument("--config", metavar="CONFIG.yaml", help="the YAML config released with it")
    parser.add_argument("--preprocessor", metavar="PREPROCESSOR.pth", help="normalisation statistics (mean, std)")
    parser.add_argument("--out", metavar="DIR", help="output folder (required with local files)")
    parser.add_argument(
        "--hub",
        metavar="REPO_ID",
        help="instead of local files: AndyRaoTHU/revq-512T, AndyRaoTHU/revq-256T-B or AndyRaoTHU/revq-256T-L",
    )
    parser.add_argument("--force", action="store_true", help="with --hub: convert again even if already converted")
    parser.add_argument(
        "--autoencoder",
        default=None,
        metavar="NAME",
        help="record another autoencoder identity (default: mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers)",
    )
    parser.add_argument(
        "--latent-scale",
        type=float,
        default=None,
        metavar="S",
        help="our latents = S x the authors' raw DC-AE latents (default: DC-AE scaling_factor 0.41407 "
        "for the DC-AE backend, 1 with --autoencoder)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args: argparse.Namespace) -> int:
    from revq import convert
    from revq.errors import RevqError

    local = [args.checkpoint, args.config, args.preprocessor]
    if args.hub:
        if any(local):
            raise RevqError("give either --hub or --checkpoint/--config/--preprocessor, not both")
        out = convert.convert_from_hub(args.hub, out=args.out, force=args.force)
        summary = {"source": args.hub, "out": str(out)}
    else:
        names = ("--checkpoint", "--config", "--preprocessor", "--out")
        missing = [n for n, v in zip(names, [*local, args.out]) if not v]
        if missing:
            raise RevqError(
                f"missing {', '.join(missing)}; usage: revq convert-official --checkpoint ckpt.pth "
                "--config CONFIG.yaml --preprocessor preprocessor.pth --out DIR (or --hub REPO_ID)"
            )
        autoencoder = args.autoencoder or convert.DCAE_ID
        convert.convert_official(
            args.checkpoint,
            args.config,
            args.preprocessor,
            args.out,
            autoencoder=autoencoder,
            latent_scale=args.latent_scale,
        )
        cfg = convert.parse_official_config(args.config)
        summary = {
            "source": args.checkpoint,
            "out": str(args.out),
            "num_tokens": cfg.num_tokens,
            "codebook_size": cfg.codebook_size,
            "rectifier": {"width": cfg.width, "depth": cfg.depth},
            "autoencoder": autoencoder,
        }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"converted {summary['source']} -> {summary['out']}")
        print(f"load it with: Tokenizer.from_pretrained({summary['out']!r})")
    return 0
