"""Reproduce the paper's two 2D toy figures (Sec. 6, Fig. 6 and Fig. 7) on synthetic 2D data.

Fig. 6 -- single vs multi-group, 2 tokens per point (each token = one coordinate, d = 1):
  a single shared codebook can only reconstruct points on the grid {c_i} x {c_j}, which is
  symmetric about y = x; one codebook per token (multi-group, Eq. 2) adapts to each axis.
  Paper: quantization error 0.7 (single) vs 0.2 (multi).
Fig. 7 -- no reset vs non-activation reset (Eq. 3), 1 token per point (d = 2): with a poor
  initialisation only a few codes ever win; resetting dead codes onto the most used ones spreads
  them over the data.  Paper: 2.8 with 2 codes used vs 0.4 with all codes used.

The codebooks are trained with Adam on the quantization loss ||z - q(z)||^2 (gradients reach the
selected code rows; no straight-through estimator), one reset at the end of each epoch when
enabled.  Error = mean over points of the squared L2 distance to the reconstruction.

    python experiments/toy_2d.py [--out docs/figures] [--seed 0]

prints the errors as JSON and writes toy_multigroup.png / toy_reset.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from revq.quantizer import MultiGroupQuantizer


def make_data(n: int, gen: torch.Generator) -> torch.Tensor:
    """Blobs whose x and y marginals differ (x around -3..3, y around 1.5..4.5): (n, 2).

    Each axis takes 4 values, so 4 codes per axis (multi-group) can fit both marginals, while a
    shared 4-code codebook (single group) has to cover 8 distinct values.
    """
    xs = torch.tensor([-3.0, -1.0, 1.0, 3.0])
    ys = torch.tensor([1.5, 2.5, 3.5, 4.5])
    centres = torch.stack([xs, ys[torch.tensor([2, 0, 3, 1])]], 1)  # 4 blobs, one per x value
    centres = torch.cat([centres, torch.stack([xs, ys[torch.tensor([1, 3, 0, 2])]], 1)])  # and 4 more
    k = torch.randint(len(centres), (n,), generator=gen)
    return centres[k] + 0.3 * torch.randn(n, 2, generator=gen)


def train(q: MultiGroupQuantizer, data: torch.Tensor, *, epochs: int, reset: bool, gen: torch.Generator, lr: float = 0.05, batch: int = 256):
    """Train codebooks on ||z - q(z)||^2; return the list of reset moves (epoch, old, new positions)."""
    opt = torch.optim.Adam([q.codebooks], lr=lr)
    z_all = data.reshape(-1, *q.latent_shape)
    moves = []
    for epoch in range(epochs):
        q.train()
        perm = torch.randperm(len(z_all), generator=gen)
        for i in range(0, len(z_all), batch):
            z = z_all[perm[i : i + batch]]
            z_q, _ = q.quantize(z)
            loss = ((z_q - z) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if reset and epoch < epochs - 1:
            old = q.codebooks.detach().clone()
            res = q.reset_dead_codes(noise=0.1, generator=gen)
            for g, rows in enumerate(res.reset_rows):
                for row in rows.tolist():
                    moves.append((epoch, g, old[g, row].tolist(), q.codebooks[g, row].tolist()))
                    for state in opt.state.values():  # fresh Adam moments for moved rows
                        for v in state.values():
                            if torch.is_tensor(v) and v.shape == q.codebooks.shape:
                                v[g, row] = 0
        else:
            q.counts.zero_()
    return moves


@torch.no_grad()
def evaluate(q: MultiGroupQuantizer, data: torch.Tensor) -> dict:
    q.eval()
    z = data.reshape(-1, *q.latent_shape)
    z_q, idx = q.quantize(z)
    err = ((z_q - z) ** 2).flatten(1).sum(1).mean().item()
    codes_used = [int(idx[:, t].unique().numel()) for t in range(idx.shape[1])] if q.num_groups > 1 else [int(idx.unique().numel())]
    return {"error": round(err, 4), "codes_used": codes_used, "recon": q.from_tokens(q.to_tokens(z_q)).reshape(-1, 2)}


def multigroup_experiment(data, seed):
    out = {}
    for split in ("single", "channel"):
        gen = torch.Generator().manual_seed(seed)
        # latent (C=2, 1, 1): 2 tokens of d = 1, "channel" = one codebook per coordinate
        q = MultiGroupQuantizer(latent_shape=(2, 1, 1), num_tokens=2, codebook_size=4, split=split)
        q.init_from_data(data.reshape(-1, 2, 1, 1), generator=gen)
        train(q, data, epochs=30, reset=True, gen=gen)
        res = evaluate(q, data)
        res["codebooks"] = q.codebooks.detach().clone()
        out["single" if split == "single" else "multi"] = res
    return out


def reset_experiment(data, seed):
    out = {}
    for reset in (False, True):
        gen = torch.Generator().manual_seed(seed)
        q = MultiGroupQuantizer(latent_shape=(2, 1, 1), num_tokens=1, codebook_size=8)
        with torch.no_grad():  # a poor initialisation: all codes in a small patch off to one side
            q.codebooks.copy_(torch.tensor([-6.0, 7.0]) + 0.8 * torch.randn(1, 8, 2, generator=gen))
        init = q.codebooks.detach().clone()
        moves = train(q, data, epochs=30, reset=reset, gen=gen)
        res = evaluate(q, data)
        res.update(codebooks=q.codebooks.detach().clone(), init=init, moves=moves)
        out["reset" if reset else "no_reset"] = res
    return out


def plot(mg, rs, data, out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib not installed: no figures (pip install matplotlib)")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    d = data.numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharex=True, sharey=True)
    for ax, key, title in [(axes[0], "single", "single group"), (axes[1], "multi", "multi-group (channel)")]:
        r = mg[key]
        ax.scatter(d[:, 0], d[:, 1], s=3, alpha=0.3, color="tab:blue", label="data")
        cb = r["codebooks"][..., 0]  # (G, N)
        xs, ys = (cb[0], cb[0]) if key == "single" else (cb[0], cb[1])
        gx, gy = torch.meshgrid(xs, ys, indexing="ij")
        ax.scatter(gx.flatten(), gy.flatten(), marker="x", s=60, color="tab:red", label="reachable reconstructions")
        if key == "single":
            lim = [d.min() - 0.5, d.max() + 0.5]
            ax.plot(lim, lim, ls=":", color="gray", label="y = x")
        ax.set_title(f"{title}: error {r['error']:.2f}")
        ax.legend(loc="lower right", fontsize=7)
    fig.suptitle("2 tokens per 2D point (paper Fig. 6)")
    fig.tight_layout()
    path = out_dir / "toy_multigroup.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    files.append(str(path))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharex=True, sharey=True)
    for ax, key, title in [(axes[0], "no_reset", "no reset"), (axes[1], "reset", "non-activation reset")]:
        r = rs[key]
        ax.scatter(d[:, 0], d[:, 1], s=3, alpha=0.3, color="tab:blue", label="data")
        ax.scatter(r["init"][0, :, 0], r["init"][0, :, 1], marker="o", facecolors="none", edgecolors="gray", label="initial codes")
        for _, _, (x0, y0), (x1, y1) in r["moves"][:40]:
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", ls="--", color="tab:orange", alpha=0.7))
        ax.scatter(r["codebooks"][0, :, 0], r["codebooks"][0, :, 1], marker="x", s=60, color="tab:red", label="final codes")
        ax.set_title(f"{title}: error {r['error']:.2f}, {r['codes_used'][0]} codes used")
        ax.legend(loc="lower right", fontsize=7)
    fig.suptitle("1 token per 2D point, 8 codes (paper Fig. 7); orange: reset moves")
    fig.tight_layout()
    path = out_dir / "toy_reset.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    files.append(str(path))
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/figures", help="folder for the PNG figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    data = make_data(args.points, torch.Generator().manual_seed(args.seed))
    mg = multigroup_experiment(data, args.seed)
    rs = reset_experiment(data, args.seed)
    files = [] if args.no_plots else plot(mg, rs, data, Path(args.out))
    report = {
        "fig6_two_tokens": {k: {"error": v["error"], "codes_used_per_group": v["codes_used"]} for k, v in mg.items()},
        "fig7_one_token": {k: {"error": v["error"], "codes_used": v["codes_used"][0], "num_reset_moves": len(v["moves"])} for k, v in rs.items()},
        "paper": {"fig6": {"single": 0.7, "multi": 0.2}, "fig7": {"no_reset": 2.8, "reset": 0.4}},
        "figures": files,
    }
    print(json.dumps(report, indent=2))
    ok = mg["multi"]["error"] < mg["single"]["error"] and rs["reset"]["error"] < rs["no_reset"]["error"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
