"""One figure for the CPU-scale ablations and the shared-codebook A/B (docs/figures/ablations.png).

    python experiments/plot_ablations.py [--out docs/figures/ablations.png]

Reads only the committed JSON lines (experiments/results/ablations.jsonl, shared_codebooks.jsonl):
no training.  Panels: (a) split axis (val MSE, 512 / 256 tokens), (b) non-activation reset vs none
(val MSE and usage as the codebook grows), (c) rectifier kinds (gain over the arm's own quantizer,
512 / 128 tokens), (d) per-position vs shared codebooks (val MSE against codebook size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def records(path: Path, group: str | None = None) -> dict[str, dict]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if group is None or r.get("group") == group:
                out[r["name"]] = r  # a re-run arm replaces the earlier line
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs/figures/ablations.png"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from revq.io_utils import save_figure

    abl = ROOT / "experiments/results/ablations.jsonl"
    split, reset = records(abl, "ablation-split"), records(abl, "ablation-reset")
    rect = records(abl, "ablation-rectifier")
    share = records(ROOT / "experiments/results/shared_codebooks.jsonl")
    mse = "final_val_latent_mse"

    fig, ax = plt.subplots(1, 4, figsize=(16, 3.6), dpi=110)
    # (a) split axis
    kinds = ("channel", "spatial", "single")
    for i, t in enumerate((512, 256)):
        vals = [split[f"{k}-{t}"][mse] for k in kinds]
        ax[0].bar([j + 4 * i for j in range(3)], vals, color=["#4472c4", "#ed7d31", "#a5a5a5"])
    ax[0].set_xticks([j + 4 * i for i in range(2) for j in range(3)],
                     [f"{k}\n{t}" for t in (512, 256) for k in kinds], fontsize=7)
    ax[0].set_yscale("log")
    ax[0].set_ylabel("val latent MSE")
    ax[0].set_title("(a) split axis (Table 4)")
    # (b) reset vs none
    sizes = sorted({r["codebook_size"] for r in reset.values()})
    for name, style in (("reset", "o-"), ("no-reset", "s--")):
        ax[1].plot(sizes, [reset[f"{name}-N{n}"][mse] for n in sizes], style, label=f"{name}: MSE")
    ax1b = ax[1].twinx()
    for name, style in (("reset", "o:"), ("no-reset", "s:")):
        ax1b.plot(sizes, [reset[f"{name}-N{n}"]["final_val_usage"] for n in sizes], style, color="gray", alpha=0.7)
    ax1b.set_ylabel("val usage (grey)")
    ax1b.set_ylim(0, 1.05)
    ax[1].set_xscale("log", base=2)
    ax[1].set_xlabel("codes per codebook")
    ax[1].legend(fontsize=7)
    ax[1].set_title("(b) non-activation reset (Fig. 8)")
    # (c) rectifier kinds: gain over the arm's own quantizer
    rkinds = ("efficientvit", "cnn", "mlp")
    for i, t in enumerate((512, 128)):
        gains = [100 * (1 - rect[f"{k}-{t}"][mse] / rect[f"{k}-{t}"]["final_val_quant_mse"]) for k in rkinds]
        ax[2].bar([j + 4 * i for j in range(3)], gains, color=["#4472c4", "#70ad47", "#ffc000"])
    ax[2].set_xticks([j + 4 * i for i in range(2) for j in range(3)],
                     [f"{k}\n{t}" for t in (512, 128) for k in rkinds], fontsize=7)
    ax[2].set_ylabel("val MSE reduction by the rectifier (%)")
    ax[2].set_title("(c) rectifier kinds (Table 5, Fig. 9)")
    # (d) per-position vs shared codebooks
    for t, color in ((512, "#4472c4"), (256, "#ed7d31")):
        for label, style, pick in (("per position", "s--", lambda r: "model.tokens_per_codebook" not in " ".join(r["overrides"])),
                                   ("shared", "o-", lambda r: "model.tokens_per_codebook" in " ".join(r["overrides"]))):
            pts = sorted((r["codebook_size"], r[mse]) for r in share.values() if r["tokens"] == t and pick(r)
                         and r.get("val_limit", 2000) == 2000)
            if pts:
                ax[3].plot(*zip(*pts), style, color=color, label=f"{t} tokens, {label}")
    ax[3].set_xscale("log", base=2)
    ax[3].set_yscale("log")
    ax[3].set_xlabel("codes per codebook")
    ax[3].set_ylabel("val latent MSE (quantizer only)")
    ax[3].legend(fontsize=7)
    ax[3].set_title("(d) shared codebooks (ours, 100 CPU s)")
    fig.tight_layout()
    print(save_figure(fig, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
