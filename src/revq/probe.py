"""Noise-tolerance probe (paper Sec. 3.2): how much latent noise can an autoencoder's decoder take?

Images are encoded once; the latents are normalised per element (dataset mean/std, as the
quantizer sees them), Gaussian noise of std ``scale`` is added **in normalised units** (so the
noise's mean squared value is ``scale**2``, directly comparable to a quantizer's normalised latent
MSE), the result is de-normalised and decoded.  Each scale's images are clamped, rounded to 8 bit
and compared with the originals (PSNR RGB, data range 1, mean over images; SSIM optional).
Scale 0 is the clean round trip.  The *tolerance* is the largest probed scale whose PSNR stays
within ``margin_db`` of the clean round trip; its square is the latent MSE budget a quantizer
may spend (what :mod:`revq.capacity` plans codebooks against).

The same noise draw (seeded) is used for every image batch size, so results are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from revq.errors import ConfigError
from revq.io_utils import save_figure

DEFAULT_SCALES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)


@dataclass
class ProbeResult:
    scales: list[float]
    psnr: list[float]
    ssim: list[float] | None
    num_images: int
    margin_db: float
    tolerance_scale: float | None  # largest probed scale within the margin (None: not even the smallest > 0)
    autoencoder: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def clean_psnr(self) -> float:
        return self.psnr[self.scales.index(0.0)] if 0.0 in self.scales else math.nan

    @property
    def tolerance_mse(self) -> float | None:
        """Normalised latent MSE allowed by the tolerance (scale squared)."""
        return None if self.tolerance_scale is None else self.tolerance_scale**2

    def to_dict(self) -> dict:
        return {
            "autoencoder": self.autoencoder, "num_images": self.num_images, "margin_db": self.margin_db,
            "scales": self.scales, "psnr": self.psnr, "ssim": self.ssim, "clean_psnr": self.clean_psnr,
            "psnr_drop": [self.clean_psnr - p for p in self.psnr],
            "tolerance_scale": self.tolerance_scale, "tolerance_mse": self.tolerance_mse,
            "noise": "Gaussian, std = scale in per-element normalised latent units (dataset mean/std)",
            **self.extra,
        }

    def table(self) -> str:
        lines = [f"{'scale':>6} {'MSE':>7} {'PSNR dB':>8} {'drop dB':>8}" + (f" {'SSIM':>7}" if self.ssim else "")]
        for i, s in enumerate(self.scales):
            row = f"{s:>6.3f} {s * s:>7.4f} {self.psnr[i]:>8.3f} {self.clean_psnr - self.psnr[i]:>8.3f}"
            if self.ssim:
                row += f" {self.ssim[i]:>7.4f}"
            mark = "  <- tolerance" if self.tolerance_scale is not None and s == self.tolerance_scale else ""
            lines.append(row + mark)
        return "\n".join(lines)


def tolerance_scale(scales: Sequence[float], psnr: Sequence[float], margin_db: float) -> float | None:
    """Largest scale such that it and every smaller probed scale keep PSNR >= clean - margin."""
    pairs = sorted(zip(scales, psnr))
    if not pairs or pairs[0][0] != 0.0:
        raise ConfigError("the probe needs scale 0 (the clean round trip) among the scales")
    clean = pairs[0][1]
    best = None
    for s, p in pairs[1:]:
        if p >= clean - margin_db:
            best = s
        else:
            break
    return best


def latent_stats(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element mean/std (C,H,W) of a latent sample (std floored to avoid division by 0)."""
    x = latents.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=x.shape[0] > 1) if x.shape[0] > 1 else torch.ones_like(mean)
    return mean.float(), std.clamp_min(1e-6).float()


@torch.inference_mode()
def noise_probe(
    autoencoder,
    images: torch.Tensor | Iterable[torch.Tensor],
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    margin_db: float = 0.5,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
    compute_ssim: bool = True,
) -> ProbeResult:
    """Run the probe on ``images`` ((n,3,R,R) in [0,1], or an iterable of such batches).

    ``mean``/``std`` (C,H,W): normalisation statistics; default: those of the probed sample.
    """
    from revq.evaluation import metrics as M

    scales = sorted({float(s) for s in scales} | {0.0})
    if any(s < 0 or not math.isfinite(s) for s in scales):
        raise ConfigError(f"noise scales must be finite and >= 0, got {scales}")
    if isinstance(images, torch.Tensor):
        batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    else:
        batches = list(images)
    originals, latents = [], []
    for b in batches:
        o = M.to_8bit(torch.as_tensor(b).float())
        originals.append(o)
        latents.append(autoencoder.encode(o).float().cpu())
    if not originals:
        raise ConfigError("the probe got no images")
    lat = torch.cat(latents)
    if mean is None or std is None:
        mean, std = latent_stats(lat)
    mean, std = mean.float().expand(lat.shape[1:]), std.float().expand(lat.shape[1:])
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(lat.shape, generator=gen)  # one draw, scaled per scale
    psnr_sums = {s: 0.0 for s in scales}
    ssim_sums = {s: 0.0 for s in scales}
    start = 0
    for o in originals:
        n = len(o)
        z = lat[start:start + n]
        eps = noise[start:start + n]
        start += n
        for s in scales:
            noisy = z + s * eps * std  # = denormalise(normalise(z) + s * eps)
            rec = M.to_8bit(autoencoder.decode(noisy).float().cpu())
            psnr_sums[s] += float(M.psnr(rec, o).double().sum())
            if compute_ssim:
                ssim_sums[s] += float(M.ssim(rec, o).double().sum())
    count = len(lat)
    psnr = [psnr_sums[s] / count for s in scales]
    ssim = [ssim_sums[s] / count for s in scales] if compute_ssim else None
    return ProbeResult(
        scales=scales, psnr=psnr, ssim=ssim, num_images=count, margin_db=float(margin_db),
        tolerance_scale=tolerance_scale(scales, psnr, margin_db),
        autoencoder=str(getattr(autoencoder, "name", "")),
    )


def plot_probe(result: ProbeResult, path: str | Path) -> Path:
    """PSNR (and SSIM) against the noise scale, with the margin line and tolerance marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(result.scales, result.psnr, "o-", label="PSNR (RGB)")
    ax.axhline(result.clean_psnr - result.margin_db, color="gray", ls="--", lw=1,
               label=f"clean - {result.margin_db:g} dB")
    if result.tolerance_scale is not None:
        ax.axvline(result.tolerance_scale, color="green", ls=":", lw=1.2,
                   label=f"tolerance {result.tolerance_scale:g} (MSE {result.tolerance_mse:.3g})")
    ax.set_xlabel("noise std (normalised latent units)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"noise tolerance: {result.autoencoder or 'autoencoder'}, {result.num_images} images")
    if result.ssim:
        ax2 = ax.twinx()
        ax2.plot(result.scales, result.ssim, "s--", color="tab:orange", ms=3, label="SSIM")
        ax2.set_ylabel("SSIM")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
