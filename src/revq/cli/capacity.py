"""``revq capacity``: codebook size per token length for an autoencoder's latents (paper App. D.1)."""

from __future__ import annotations

import json
import sys

from revq.errors import RevqError

HELP = "Capacity planner: codebook size per token count (paper App. D.1)."


def add_arguments(parser) -> None:
    from revq.capacity import DEFAULT_SIZES, DEFAULT_TOKENS, PAPER_THRESHOLD

    parser.add_argument("--latents", required=True, help="latent cache of the autoencoder (made by `revq encode`)")
    parser.add_argument("--limit", type=int, default=5000, help="latents sampled from the cache (default 5000)")
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS), help="token counts to measure")
    parser.add_argument("--codebook-sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        help="codes per codebook to measure")
    parser.add_argument("--threshold", type=float, default=None,
                        help=f"latent MSE to stay under (normalised units; default {PAPER_THRESHOLD}, the paper's, "
                             "or the tolerance of --probe)")
    parser.add_argument("--probe", default=None, help="probe.json from `revq probe --out`: use its tolerance MSE as threshold")
    parser.add_argument("--held-out", type=float, default=0.2, help="fraction of the sample held out for the MSE")
    parser.add_argument("--kmeans-iters", type=int, default=10)
    parser.add_argument("--split", choices=("channel", "spatial", "single"), default="channel")
    parser.add_argument("--share-channels", action="store_true",
                        help="one codebook per latent channel, shared by its positions (as the CPU presets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for capacity.json and capacity.png")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no per-cell progress lines")


def run(args) -> int:
    import numpy as np

    from revq.capacity import PAPER_THRESHOLD, plan_capacity, plot_capacity
    from revq.data.latent_cache import LatentCache
    from revq.io_utils import write_result_folder

    if args.limit is not None and args.limit < 3:
        raise RevqError("--limit must be >= 3")
    threshold = args.threshold
    source = "--threshold"
    if args.probe:
        from pathlib import Path

        try:
            probe = json.loads(Path(args.probe).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise RevqError(f"cannot read --probe {args.probe}: {error}") from error
        if threshold is None:
            threshold = probe.get("tolerance_mse")
            if threshold is None:
                raise RevqError(f"{args.probe} has no tolerance (no probed scale was within its margin)")
            source = f"probe tolerance ({args.probe})"
    if threshold is None:
        threshold, source = PAPER_THRESHOLD, "paper default"
    cache = LatentCache(args.latents)
    n = len(cache)
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(n, size=min(n, args.limit), replace=False))
    z = cache.get(idx)
    stats = cache.stats
    z = (z - stats["mean"]) / stats["std"].clamp_min(1e-6)
    log = None if (args.quiet or args.json) else (lambda s: print(s, file=sys.stderr, flush=True))
    plan = plan_capacity(z, token_counts=args.tokens, codebook_sizes=args.codebook_sizes, threshold=threshold,
                         held_out_fraction=args.held_out, kmeans_iters=args.kmeans_iters, split=args.split,
                         share_channels=args.share_channels, seed=args.seed, log=log)
    data = plan.to_dict()
    data["threshold_source"] = source
    data["latents"] = str(args.latents)
    data["autoencoder"] = cache.manifest.get("autoencoder")
    if args.out:
        write_result_folder(args.out, "capacity", data, lambda path: plot_capacity(plan, path))
    if args.json:
        print(json.dumps(data))
    else:
        print(f"threshold {threshold:g} ({source}); {plan.fit_samples} fit + {plan.held_out} held-out latents")
        print(plan.table())
        for rec in data["recommendations"]:
            if rec.get("warning"):
                print(f"  {rec['tokens']} tokens: {rec['warning']}")
    return 0
