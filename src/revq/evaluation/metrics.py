"""Image-quality and codebook metrics, written out so that every number is checkable.

Conventions (the ones papers use, stated so results are comparable):

- Images are float tensors (B, 3, H, W) in [0, 1].  :func:`to_8bit` rounds them to the 256
  levels of an 8-bit image, which is what a saved PNG would hold; evaluation applies it to
  both the originals and the reconstructions before measuring.
- :func:`psnr`: per image, ``10 log10(data_range^2 / MSE)`` over all pixels and channels,
  data range 1.  An exact copy (MSE = 0) is capped at :data:`PSNR_CAP` dB so means stay finite.
- :func:`psnr_y`: the same on the luma channel of ITU-R BT.601 as MATLAB's ``rgb2ycbcr``
  computes it (``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255``), as super-resolution
  and tokenizer papers report "PSNR (Y)".
- :func:`ssim`: Wang et al. (2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
  K2 = 0.03, data range 1, statistics over the "valid" window positions only (no padding,
  as the reference MATLAB ``ssim_index``), mean over positions and then over RGB channels.
- :func:`frechet_distance`: the FID formula
  ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))`` with ``scipy.linalg.sqrtm`` (as
  pytorch-fid / torch-fidelity), with the usual epsilon offset when the product is singular.
- LPIPS (AlexNet) and rFID (Inception-v3, 2048-d pool features) need network weights that are
  not part of revq.  :func:`lpips_metric` / :func:`inception_feature_extractor` find them in
  the torch hub cache or raise :class:`MetricUnavailable` naming the file and how to get it;
  they never try the network themselves.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from revq.errors import MissingResourceError

PSNR_CAP = 100.0

# BT.601 luma as MATLAB rgb2ycbcr (inputs in [0, 1], output in [16/255, 235/255]).
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0 / 255.0


class MetricUnavailable(MissingResourceError):
    """An optional metric (LPIPS, rFID) whose library or network weights are missing."""


# ---------------------------------------------------------------------------------- pixels
def to_8bit(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 256 levels of an 8-bit image (float32 result)."""
    return torch.round(images.float().clamp(0.0, 1.0) * 255.0) / 255.0


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma (MATLAB rgb2ycbcr scale)."""
    if images.shape[-3] != 3:
        raise ValueError(f"expected RGB images (..., 3, H, W), got {tuple(images.shape)}")
    r, g, b = images.unbind(-3)
    y = _Y_OFFSET + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b
    return y.unsqueeze(-3)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) images, got {tuple(x.shape)}")


def mse_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    _check_pair(x, y)
    diff = x.double() - y.double()
    return diff.pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (float64, shape (B,)), capped at :data:`PSNR_CAP`."""
    mse = mse_per_image(x, y)
    floor = data_range**2 * 10.0 ** (-PSNR_CAP / 10.0)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(floor))


def psnr_y(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR on the BT.601 Y channel, data range 1."""
    return psnr(rgb_to_y(x.double()), rgb_to_y(y.double()), data_range=1.0)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (the separable SSIM window)."""
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _band(g: torch.Tensor, n: int) -> torch.Tensor:
    """(n - k + 1, n) matrix whose rows are the k-tap filter ``g`` at each valid offset."""
    k = g.numel()
    rows = torch.arange(n - k + 1, device=g.device)[:, None] + torch.arange(k, device=g.device)[None, :]
    band = torch.zeros(n - k + 1, n, dtype=g.dtype, device=g.device)
    band.scatter_(1, rows, g.expand(n - k + 1, k).contiguous())
    return band


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-image SSIM (float64, shape (B,)): Gaussian window, valid positions, channel mean."""
    _check_pair(x, y)
    b, c, h, w = x.shape
    if h < win_size or w < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size}, got {h}x{w}")
    g = gaussian_window(win_size, sigma).to(x.device)
    x = x.double()
    y = y.double()
    # the 2-D Gaussian is separable: filter rows then columns (5 maps in one pass)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1).reshape(b * 5 * c, 1, h, w)
    stack = _band(g, h) @ stack @ _band(g, w).T  # valid filtering as two banded matmuls (BLAS)
    stack = stack.reshape(b, 5, c, h - win_size + 1, w - win_size + 1)
    mu_x, mu_y, exx, eyy, exy = stack.unbind(1)
    sxx = exx - mu_x**2
    syy = eyy - mu_y**2
    sxy = exy - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).flatten(2).mean(2).mean(1)


# ---------------------------------------------------------------------------------- codebook
def usage_stats(counts: torch.Tensor) -> dict:
    """Usage of a (G, N) table of code counts.

    ``usage``: fraction of all G*N codes used at least once; ``usage_per_group`` (G,);
    ``usage_min_group``; ``perplexity``: mean over groups of exp(entropy of the group's code
    distribution) (N when every code is equally used, 1 when one code takes everything).
    """
    counts = torch.as_tensor(counts).double()
    if counts.dim() == 1:
        counts = counts[None]
    used = counts > 0
    per_group = used.double().mean(1)
    totals = counts.sum(1, keepdim=True)
    p = counts / totals.clamp_min(1.0)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(1)
    perplexity = torch.exp(entropy)
    perplexity = torch.where(totals.squeeze(1) > 0, perplexity, torch.zeros_like(perplexity))
    return {
        "usage": float(used.double().mean()),
        "usage_per_group": per_group.float(),
        "usage_min_group": float(per_group.min()) if per_group.numel() else 0.0,
        "perplexity": float(perplexity.mean()) if perplexity.numel() else 0.0,
    }


def count_codes(tokens: torch.Tensor, num_groups: int, codebook_size: int) -> torch.Tensor:
    """(B, T) per-position ids -> (G, N) int64 counts.

    ``num_groups == T``: one codebook per position; ``num_groups == 1``: one shared codebook;
    otherwise ``T / num_groups`` consecutive positions share each codebook.
    """
    tokens = tokens.long().cpu()
    b, t = tokens.shape
    if num_groups < 1 or t % num_groups:
        raise ValueError(f"{num_groups} codebooks for {t} token positions")
    group = torch.arange(t) // (t // num_groups)
    flat = (group[None, :] * codebook_size + tokens).reshape(-1)
    return torch.bincount(flat, minlength=num_groups * codebook_size).view(num_groups, codebook_size)


# ---------------------------------------------------------------------------------- FID math
def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) features -> mean (D,) and unbiased covariance (D, D), float64."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need (n >= 2, D) features, got shape {feats.shape}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID formula)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("mean vectors / covariances have different shapes")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if isinstance(covmean, tuple):  # older SciPy returned (sqrtm, errest) with disp=False
        covmean = covmean[0]
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features_a, features_b) -> float:
    mu1, s1 = feature_statistics(features_a)
    mu2, s2 = feature_statistics(features_b)
    return frechet_distance(mu1, s1, mu2, s2)


# ---------------------------------------------------------------------------------- LPIPS / rFID
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)


def _hub_checkpoint(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _missing(what: str, packages: str, url: str | None, extra: str = "") -> MetricUnavailable:
    lines = [f"{what} is unavailable."]
    lines.append(f"It needs: pip install {packages}")
    if url is not None:
        target = _hub_checkpoint(url)
        lines.append(f"and the network weights at {target}")
        lines.append(f"(download {url} to that path; the torch hub folder is set by TORCH_HOME)")
    if extra:
        lines.append(extra)
    return MetricUnavailable(" ".join(lines))


def lpips_metric(device="cpu") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """LPIPS (AlexNet, as papers) through torchmetrics; returns ``f(x, y) -> (B,)`` for [0,1] images.

    Raises :class:`MetricUnavailable` when torchmetrics / torchvision or the AlexNet weights are
    missing (checked before anything could try to download).
    """
    try:
        import torchvision  # noqa: F401
        from torchmetrics.functional.image.lpips import _NoTrainLpips  # noqa: F401
    except Exception:
        raise _missing("LPIPS", "torchmetrics torchvision", ALEXNET_URL) from None
    if not _hub_checkpoint(ALEXNET_URL).is_file():
        raise _missing("LPIPS", "torchmetrics torchvision", ALEXNET_URL)
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    net = _NoTrainLpips(net="alex").to(device).eval()

    @torch.no_grad()
    def score(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.to(device).float() * 2 - 1
        y = y.to(device).float() * 2 - 1
        return net(x, y).reshape(-1).double().cpu()

    return score


def inception_feature_extractor(device="cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """2048-d Inception-v3 pool features (torch-fidelity's FID network) of [0,1] images.

    Raises :class:`MetricUnavailable` when torch-fidelity or its weights are missing.
    """
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception:
        raise _missing("rFID", "torch-fidelity", INCEPTION_URL) from None
    weights = _hub_checkpoint(INCEPTION_URL)
    if not weights.is_file():
        raise _missing("rFID", "torch-fidelity", INCEPTION_URL)
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
    ).to(device).eval()

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        x8 = torch.round(x.float().clamp(0, 1) * 255).to(torch.uint8).to(device)
        out = net(x8)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.reshape(x.shape[0], -1).double().cpu()

    return features


def metric_summary(values: torch.Tensor) -> float:
    v = values.double()
    return float(v.mean()) if v.numel() else math.nan
