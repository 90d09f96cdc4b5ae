"""Evaluate trained tokenizers on the shared val set (issue #10 targets), cheaply and exactly as
``revq eval`` except that the val images' TAEF2 latents come from the latent cache (the same
encodings) instead of being re-encoded:

    python experiments/final_eval.py RUN_DIR/model [MORE_MODELS...] [--limit 10000] [--out JSONL]

Per model: PSNR / SSIM on the first ``--limit`` images (8-bit rounded, RGB, mean over images), the continuous TAEF2 round trip on
the same images (cached), the cost, normalised latent MSE and code usage on the first ``--latent-limit`` val latents (codes used at
least once by the set's tokens) and the least-used group's usage.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipe_ab  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--val", default=recipe_ab.DEFAULT_VAL)
    p.add_argument("--limit", type=int, default=10000, help="images for PSNR / SSIM (first N)")
    p.add_argument("--latent-limit", type=int, default=10000, help="val latents for latent MSE and usage (first N)")
    p.add_argument("--out", default=str(recipe_ab.ROOT / "experiments/results/final_eval.jsonl"))
    args = p.parse_args()
    from revq.data.latent_cache import LatentCache
    from revq.evaluation import metrics as M
    from revq.model import ReVQ

    val = LatentCache(args.val)
    originals = recipe_ab.val_images(args.limit, val)
    n_img = len(originals)
    n = min(args.latent_limit, len(val))
    base = recipe_ab.baseline_psnr(val, originals, ssim=True)
    for path in args.models:
        t0 = time.perf_counter()
        model = ReVQ.from_pretrained(path).eval()
        cfg = model.config
        lat, toks, sq = [], [], 0.0
        with torch.inference_mode():
            for i in range(0, n, 500):
                z = val.get(np.arange(i, min(n, i + 500)))
                t = model.tokenize(z)
                r = model.detokenize(t)
                sq += float((model.normalizer.normalize(z).double() - model.normalizer.normalize(r).double()).pow(2).sum())
                lat.append(r)
                toks.append(t)
        toks = torch.cat(toks)
        counts = M.count_codes(toks, cfg.num_codebooks, cfg.codebook_size)
        usage = M.usage_stats(counts)
        res = recipe_ab.psnr_of_latents(torch.cat(lat)[:n_img], originals, ssim=True)
        rec = {"model": str(path), "tokens": cfg.num_tokens, "codebook_size": cfg.codebook_size,
               "rectifier": cfg.rectifier.kind, "images": n_img, "latents": n, "psnr": res["psnr"], "ssim": res["ssim"],
               "baseline_psnr": base["psnr"], "baseline_ssim": base["ssim"], "psnr_cost_db": base["psnr"] - res["psnr"],
               "latent_mse": sq / (n * 2048), "usage": usage["usage"], "usage_min_group": usage["usage_min_group"],
               "perplexity": usage["perplexity"], "eval_wall_s": round(time.perf_counter() - t0, 1),
               "machine": recipe_ab.machine(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        print(json.dumps(rec), flush=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
