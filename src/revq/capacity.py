"""Capacity planner (paper Appendix D.1, Fig. 10, Eq. 9): how many codes per codebook does a
token length need to keep the quantizer-only latent MSE under a threshold?

For each (token count T, codebook size N) of a grid, a channel multi-group quantizer (the one
:class:`~revq.quantizer.MultiGroupQuantizer` trains) is fitted to a sample of normalised latents
with k-means (``init_from_data(method="kmeans")``: random-sample init + Lloyd iterations, exact
search) and its MSE is measured on **held-out** latents of the same cache, in normalised units
(the units of ``revq train``'s ``val_quant_mse``; the paper's threshold is 0.1).  k-means is the
fixed point quantizer-only training moves towards (the decoupled loss' codebook term *is* the
k-means objective), so the grid costs seconds to minutes instead of one training run per cell.

Then, per T, the smallest N with MSE <= threshold is found by log-log interpolation between the
grid's bracketing sizes, and the paper's exponential relation is fitted by least squares:

    log N_min(T) = a + b * T          (b < 0: fewer tokens need exponentially more codes)

``CapacityPlan.recommend(T)`` returns the fitted N and the next power of two.  Codebook sizes
that reach the fit sample's size are not measurable (a codebook cannot be larger than its
data; the MSE on held-out data stops improving long before), so the plan says "more than the
largest measured" instead of extrapolating past the grid.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from revq.errors import ConfigError
from revq.io_utils import save_figure

DEFAULT_TOKENS = (1024, 512, 256, 128)
DEFAULT_SIZES = (16, 64, 256, 1024, 4096)
PAPER_THRESHOLD = 0.1


@dataclass
class GridPoint:
    tokens: int
    codebook_size: int
    mse: float  # held-out quantizer-only latent MSE (normalised units)
    fit_mse: float  # on the fitting sample
    seconds: float


@dataclass
class CapacityPlan:
    threshold: float
    points: list[GridPoint]
    n_min: dict[int, float | None]  # tokens -> smallest N (interpolated); None = above the grid
    below_grid: dict[int, bool]  # tokens -> already under the threshold at the smallest N
    fit: tuple[float, float] | None  # (a, b) of log N = a + b T, or None (< 2 usable points)
    fit_samples: int = 0
    held_out: int = 0
    extra: dict = field(default_factory=dict)

    def recommend(self, tokens: int) -> dict:
        """Codebook size for ``tokens`` tokens: measured (interpolated) when on the grid, else the fit."""
        out: dict = {"tokens": int(tokens)}
        if tokens in self.n_min and self.n_min[tokens] is not None:
            n = float(self.n_min[tokens])
            out["source"] = "grid (below the smallest size)" if self.below_grid.get(tokens) else "grid"
        elif self.fit is not None:
            n = math.exp(self.fit[0] + self.fit[1] * tokens)
            out["source"] = "fit"
        else:
            out.update({"codebook_size": None, "power_of_two": None, "source": "unavailable"})
            return out
        out["codebook_size"] = n
        out["power_of_two"] = 2 ** max(0, math.ceil(math.log2(max(n, 1.0)) - 1e-9))
        largest = max((p.codebook_size for p in self.points), default=0)
        if self.fit_samples and out["power_of_two"] > self.fit_samples:
            out["warning"] = (f"needs more codes than the {self.fit_samples} fit latents: encode more "
                              "images or accept a higher MSE")
        elif out["source"] == "fit" and n > largest:
            out["warning"] = f"extrapolated beyond the largest measured size {largest}"
        return out

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "fit_samples": self.fit_samples, "held_out": self.held_out,
            "points": [vars(p) for p in self.points],
            "n_min": {str(k): v for k, v in self.n_min.items()},
            "below_grid": {str(k): v for k, v in self.below_grid.items()},
            "fit": None if self.fit is None else {"a": self.fit[0], "b": self.fit[1],
                                                  "formula": "N_min = exp(a + b * tokens)"},
            "recommendations": [self.recommend(t) for t in sorted({p.tokens for p in self.points}, reverse=True)],
            **self.extra,
        }

    def table(self) -> str:
        tokens = sorted({p.tokens for p in self.points}, reverse=True)
        sizes = sorted({p.codebook_size for p in self.points})
        mse = {(p.tokens, p.codebook_size): p.mse for p in self.points}
        head = f"{'tokens':>7} | " + " ".join(f"{'N=' + str(n):>9}" for n in sizes) + f" | {'N_min':>9} {'rec.':>7}"
        lines = [f"held-out quantizer-only latent MSE (normalised), threshold {self.threshold:g}", head]
        for t in tokens:
            cells = " ".join(f"{mse[(t, n)]:>9.4f}" if (t, n) in mse else f"{'-':>9}" for n in sizes)
            rec = self.recommend(t)
            nm = self.n_min.get(t)
            nm_s = (f"<={sizes[0]}" if self.below_grid.get(t) else f"{nm:.0f}") if nm is not None else f">{sizes[-1]}"
            p2 = rec.get("power_of_two")
            lines.append(f"{t:>7} | {cells} | {nm_s:>9} {p2 if p2 is not None else '-':>7}")
        if self.fit is not None:
            a, b = self.fit
            lines.append(f"fit: N_min(T) = exp({a:.3f} {'-' if b < 0 else '+'} {abs(b):.5f} T)")
        return "\n".join(lines)


def quantizer_mse(fit: torch.Tensor, held: torch.Tensor, tokens: int, codebook_size: int, *,
                  split: str = "channel", tokens_per_codebook: int = 1, kmeans_iters: int = 10,
                  seed: int = 0) -> tuple[float, float]:
    """(held-out MSE, fit MSE) of a k-means-fitted multi-group quantizer on normalised latents."""
    from revq.quantizer import MultiGroupQuantizer

    q = MultiGroupQuantizer(latent_shape=tuple(fit.shape[1:]), num_tokens=tokens, codebook_size=codebook_size,
                            split=split, tokens_per_codebook=tokens_per_codebook)
    q.eval()
    gen = torch.Generator().manual_seed(seed)
    q.init_from_data(fit, method="kmeans", generator=gen, kmeans_iters=kmeans_iters)

    def mse(z: torch.Tensor) -> float:
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(z), 4096):
                part = z[i:i + 4096]
                zq, _ = q.quantize(part, update_counts=False)
                total += float((zq - part).double().pow(2).sum())
        return total / z.numel()

    return mse(held), mse(fit)


def min_codebook(sizes: Sequence[int], mses: Sequence[float], threshold: float) -> tuple[float | None, bool]:
    """Smallest N with MSE <= threshold, interpolated linearly in (log N, log MSE) between the
    bracketing grid sizes.  Returns (N or None if never reached, reached at the smallest size)."""
    pairs = sorted(zip(sizes, mses))
    if not pairs:
        return None, False
    if pairs[0][1] <= threshold:
        return float(pairs[0][0]), True
    for (n0, m0), (n1, m1) in zip(pairs, pairs[1:]):
        if m1 <= threshold < m0:
            if m1 <= 0:
                return float(n1), False
            t = (math.log(threshold) - math.log(m0)) / (math.log(m1) - math.log(m0))
            return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))), False
    return None, False


def fit_exponential(tokens: Sequence[int], n_min: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares fit of log N = a + b T; None with fewer than 2 distinct token counts."""
    pts = [(float(t), math.log(n)) for t, n in zip(tokens, n_min) if n is not None and n > 0]
    if len({t for t, _ in pts}) < 2:
        return None
    k = len(pts)
    mt = sum(t for t, _ in pts) / k
    my = sum(y for _, y in pts) / k
    sxx = sum((t - mt) ** 2 for t, _ in pts)
    b = sum((t - mt) * (y - my) for t, y in pts) / sxx
    return my - b * mt, b


def plan_capacity(
    latents: torch.Tensor,
    *,
    token_counts: Sequence[int] = DEFAULT_TOKENS,
    codebook_sizes: Sequence[int] = DEFAULT_SIZES,
    threshold: float = PAPER_THRESHOLD,
    held_out_fraction: float = 0.2,
    kmeans_iters: int = 10,
    split: str = "channel",
    share_channels: bool = False,
    seed: int = 0,
    log=None,
) -> CapacityPlan:
    """Measure the grid on normalised ``latents`` (S, C, H, W) and fit the relation.

    ``share_channels``: one codebook per latent channel (``tokens_per_codebook = T / C`` when C
    divides T, as the CPU presets do), so each codebook is fitted on T / C times more sub-vectors.
    """
    if latents.dim() != 4:
        raise ConfigError(f"latents must be (S, C, H, W); got {tuple(latents.shape)}")
    if not 0 < held_out_fraction < 1:
        raise ConfigError("held_out_fraction must be in (0, 1)")
    if threshold <= 0:
        raise ConfigError("threshold must be > 0")
    numel = math.prod(latents.shape[1:])
    bad = [t for t in token_counts if t <= 0 or numel % t]
    if bad:
        raise ConfigError(f"token counts {bad} do not divide the latent size {numel}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(latents), generator=gen)
    n_held = max(1, int(round(len(latents) * held_out_fraction)))
    held, fit = latents[perm[:n_held]].float(), latents[perm[n_held:]].float()
    if len(fit) < 2:
        raise ConfigError("need at least 3 latents for the capacity planner")
    channels = int(latents.shape[1])

    def sharing(t: int) -> int:
        return t // channels if share_channels and t >= channels and t % channels == 0 else 1

    most = max(sharing(int(t)) for t in token_counts) if token_counts else 1
    sizes = sorted({int(n) for n in codebook_sizes if 0 < int(n) <= len(fit) * most})
    skipped = sorted({int(n) for n in codebook_sizes} - set(sizes))
    if not sizes:
        raise ConfigError(f"every codebook size exceeds the {len(fit)} fit latents")
    points: list[GridPoint] = []
    for t in sorted(set(int(x) for x in token_counts), reverse=True):
        k = sharing(t)
        for n in sizes:
            if n > len(fit) * k:  # more codes than this token count's codebooks have sub-vectors
                continue
            t0 = time.perf_counter()
            mse, fit_mse = quantizer_mse(fit, held, t, n, split=split, tokens_per_codebook=k,
                                         kmeans_iters=kmeans_iters, seed=seed)
            points.append(GridPoint(t, n, mse, fit_mse, time.perf_counter() - t0))
            if log:
                log(f"tokens {t:5d}  N {n:6d}  held-out MSE {mse:.4f}  fit MSE {fit_mse:.4f}  ({points[-1].seconds:.1f}s)")
    n_min, below = {}, {}
    for t in sorted({p.tokens for p in points}, reverse=True):
        ps = [p for p in points if p.tokens == t]
        n_min[t], below[t] = min_codebook([p.codebook_size for p in ps], [p.mse for p in ps], threshold)
    usable = [(t, n) for t, n in n_min.items() if n is not None and not below[t]]
    fit_ab = fit_exponential([t for t, _ in usable], [n for _, n in usable])
    extra = {"skipped_sizes": skipped} if skipped else {}
    extra["method"] = (f"k-means ({kmeans_iters} Lloyd iterations) per codebook, {split} split, "
                       f"{'one codebook per channel' if share_channels else 'one codebook per token'}, held-out MSE")
    return CapacityPlan(threshold=threshold, points=points, n_min=n_min, below_grid=below, fit=fit_ab,
                        fit_samples=len(fit), held_out=len(held), extra=extra)


def plot_capacity(plan: CapacityPlan, path: str | Path) -> Path:
    """Left: MSE vs codebook size per token count (threshold dashed).  Right: N_min vs tokens and the fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for t in sorted({p.tokens for p in plan.points}, reverse=True):
        ps = sorted((p for p in plan.points if p.tokens == t), key=lambda p: p.codebook_size)
        ax1.plot([p.codebook_size for p in ps], [p.mse for p in ps], "o-", ms=3, label=f"{t} tokens")
    ax1.axhline(plan.threshold, color="gray", ls="--", lw=1)
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("codes per codebook N")
    ax1.set_ylabel("held-out latent MSE")
    ax1.legend(fontsize=7)
    pts = [(t, n) for t, n in plan.n_min.items() if n is not None]
    if pts:
        ax2.plot([t for t, _ in pts], [n for _, n in pts], "o", label="measured N_min")
    if plan.fit is not None:
        ts = sorted(plan.n_min)
        lo, hi = min(ts), max(ts)
        xs = [lo + (hi - lo) * i / 50 for i in range(51)]
        ax2.plot(xs, [math.exp(plan.fit[0] + plan.fit[1] * x) for x in xs], "-", lw=1, label="exp fit")
    ax2.set_yscale("log", base=2)
    ax2.set_xlabel("tokens T")
    ax2.set_ylabel(f"smallest N with MSE <= {plan.threshold:g}")
    if pts or plan.fit is not None:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
