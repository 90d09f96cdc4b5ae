"""Our CPU recipe against the authors' recipe at the same compute budget (issue #10).

    python experiments/ours_vs_authors.py [--tokens 512 256] [--budget-cpu-s 300] [--psnr-limit 1000]

Per token count, two arms of experiments/recipe_ab.py with the same data (the 30,000 TAEF2 train
latents), the same seed and the same budget in process-CPU seconds (codebook initialisation
included, validation excluded):

* ``authors-T``: the authors' recipe expressed as a config of our code (`recipe_ab.authors_config`:
  per-position codebooks of 4,096 codes, non-residual EfficientViT w128 d2, decoupled loss, AdamW
  lr 1e-2 / 5e-4, per-epoch exponential decay, clip 1, batch 128, reset capped at 20 %);
* ``ours-T``: the ``cpu-Tt`` preset as shipped.

One JSON line per arm in experiments/results/ours_vs_authors.jsonl; the table between the
``ours-vs-authors`` markers of docs/results.md is rewritten after every arm.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recipe_ab  # noqa: E402

GROUP = "ours-vs-authors"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[512, 256], choices=[512, 256])
    p.add_argument("--budget-cpu-s", type=float, default=300.0)
    p.add_argument("--psnr-limit", type=int, default=1000)
    p.add_argument("--val-limit", type=int, default=2000)
    p.add_argument("--only", choices=["authors", "ours"], default=None, help="run one recipe only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    jsonl = recipe_ab.ROOT / "experiments/results/ours_vs_authors.jsonl"
    for tokens in args.tokens:
        for recipe in ("authors", "ours"):
            if args.only and recipe != args.only:
                continue
            base = "authors" if recipe == "authors" else f"cpu-{tokens}t"
            recipe_ab.main(["--name", f"{recipe}-{tokens}", "--tokens", str(tokens), "--base", base,
                            "--budget-cpu-s", str(args.budget_cpu_s), "--psnr-limit", str(args.psnr_limit),
                            "--val-limit", str(args.val_limit), "--group", GROUP, "--jsonl", str(jsonl),
                            "--set", f"seed={args.seed}"], group_default=GROUP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
