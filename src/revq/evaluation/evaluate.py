"""Reconstruction evaluation of a tokenizer, as the paper's protocol (see metrics.py).

images -> VAE encode -> normalise -> quantize -> rectify -> de-normalise -> VAE decode ->
clamp -> round to 8-bit, against the originals (also rounded to 8-bit), on **every** image of
the source.  The same images through the VAE alone give the baseline, so the cost of
quantization is visible.  Code usage is counted from the tokens of this set, never from (or
into) the model's training counts.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Iterable, Sequence

import torch

from revq.evaluation import metrics as M

log = logging.getLogger(__name__)

OPTIONAL_METRICS = ("lpips", "rfid")


class _Sum:
    """Exact running sum (float64) and count of per-image values."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, values: torch.Tensor) -> None:
        v = values.double()
        self.total += float(v.sum())
        self.count += int(v.numel())

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


def _batches(source: Iterable, batch_size: int, limit: int | None):
    items = iter(source)
    if limit is not None:
        items = itertools.islice(items, limit)
    while True:
        batch = list(itertools.islice(items, batch_size))
        if not batch:
            return
        yield batch


@torch.inference_mode()
def evaluate(
    tokenizer,
    source: Iterable,
    *,
    batch_size: int = 64,
    limit: int | None = None,
    extra_metrics: Sequence[str] = OPTIONAL_METRICS,
    baseline: bool = True,
    progress: bool = False,
    total: int | None = None,
    protocol: dict | None = None,
) -> dict:
    """Measure ``tokenizer`` (a :class:`revq.tokenizer.Tokenizer`) on ``(key, image, label)`` items.

    Returns a JSON-ready dict: ``num_images``, ``psnr``, ``psnr_y``, ``ssim``, ``latent_mse``
    (normalised latent space), ``usage``, ``usage_min_group``, ``usage_per_group`` (list),
    ``perplexity``, ``bits_per_image``, ``baseline_psnr``, ``baseline_psnr_y``,
    ``baseline_ssim``, ``lpips``/``rfid`` (None with a reason in ``unavailable`` when their
    weights are missing), and ``protocol``.
    """
    from tqdm import tqdm

    model = tokenizer.model
    ae = tokenizer.autoencoder
    cfg = model.config
    device = tokenizer.device
    groups = int(getattr(cfg, "num_codebooks", cfg.num_tokens))
    counts = torch.zeros(groups, int(cfg.codebook_size), dtype=torch.long)
    sums = {k: _Sum() for k in ("psnr", "psnr_y", "ssim", "baseline_psnr", "baseline_psnr_y", "baseline_ssim", "lpips")}
    sq_err, n_latent = 0.0, 0

    unavailable: dict[str, str] = {}
    lpips_fn = None
    inception = None
    if "lpips" in extra_metrics:
        try:
            lpips_fn = M.lpips_metric(device)
        except M.MetricUnavailable as error:
            unavailable["lpips"] = str(error)
    if "rfid" in extra_metrics:
        try:
            inception = M.inception_feature_extractor(device)
        except M.MetricUnavailable as error:
            unavailable["rfid"] = str(error)
    feats_real, feats_fake = [], []

    expected = total if limit is None or total is None else min(total, limit)
    bar = tqdm(total=expected, unit="img", desc="eval", disable=not progress, dynamic_ncols=True)
    count = 0
    for batch in _batches(source, batch_size, limit):
        originals = M.to_8bit(torch.stack([torch.as_tensor(im) for _, im, _ in batch]))
        latents = ae.encode(originals).to(device, torch.float32)
        tokens = model.tokenize(latents)
        rect = model.detokenize(tokens).float()
        recon = M.to_8bit(ae.decode(rect).cpu())

        norm = model.normalizer
        diff = norm.normalize(latents).double() - norm.normalize(rect).double()
        sq_err += float(diff.pow(2).sum())
        n_latent += diff.numel()
        counts += M.count_codes(tokens.cpu(), groups, int(cfg.codebook_size))

        sums["psnr"].add(M.psnr(recon, originals))
        sums["psnr_y"].add(M.psnr_y(recon, originals))
        sums["ssim"].add(M.ssim(recon, originals))
        if baseline:
            vae = M.to_8bit(ae.decode(latents).cpu())
            sums["baseline_psnr"].add(M.psnr(vae, originals))
            sums["baseline_psnr_y"].add(M.psnr_y(vae, originals))
            sums["baseline_ssim"].add(M.ssim(vae, originals))
        if lpips_fn is not None:
            sums["lpips"].add(lpips_fn(recon, originals))
        if inception is not None:
            feats_real.append(inception(originals))
            feats_fake.append(inception(recon))
        count += len(batch)
        bar.update(len(batch))
    bar.close()

    stats = M.usage_stats(counts)
    result = {
        "num_images": count,
        "psnr": sums["psnr"].mean,
        "psnr_y": sums["psnr_y"].mean,
        "ssim": sums["ssim"].mean,
        "latent_mse": sq_err / n_latent if n_latent else math.nan,
        "usage": stats["usage"],
        "usage_min_group": stats["usage_min_group"],
        "usage_per_group": [round(float(v), 6) for v in stats["usage_per_group"]],
        "perplexity": stats["perplexity"],
        "bits_per_image": float(cfg.num_tokens * math.log2(cfg.codebook_size)),
        "num_tokens": int(cfg.num_tokens),
        "codebook_size": int(cfg.codebook_size),
        "baseline_psnr": sums["baseline_psnr"].mean if baseline else None,
        "baseline_psnr_y": sums["baseline_psnr_y"].mean if baseline else None,
        "baseline_ssim": sums["baseline_ssim"].mean if baseline else None,
        "lpips": sums["lpips"].mean if lpips_fn is not None else None,
        "rfid": None,
    }
    if inception is not None and count >= 2:
        result["rfid"] = M.fid_from_features(torch.cat(feats_real).numpy(), torch.cat(feats_fake).numpy())
    if unavailable:
        result["unavailable"] = unavailable
    skipped = getattr(source, "skipped", None)
    result["protocol"] = {
        "resolution": int(cfg.autoencoder.resolution),
        "crop": "resize short side (antialiased), centre crop",
        "count": count,
        "skipped_inputs": len(skipped) if skipped is not None else 0,
        "limit": limit,
        "autoencoder": str(getattr(ae, "name", cfg.autoencoder.name)),
        "pixels": "clamped to [0,1] and rounded to 8-bit levels (originals too)",
        "psnr": "mean over images, RGB, data range 1",
        "psnr_y": "mean over images, BT.601 Y (MATLAB rgb2ycbcr), data range 1",
        "ssim": "Gaussian 11x11 sigma 1.5, K1 0.01 K2 0.03, valid window, RGB channel mean",
        "usage": "codes used at least once by this set, counted from its tokens",
        "perplexity": "mean over codebooks of exp(entropy of code frequencies on this set)",
        **(protocol or {}),
    }
    return result


@torch.inference_mode()
def reconstruction_triplets(tokenizer, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(original, VAE-only, ReVQ) images, each (B, 3, R, R) rounded to 8-bit levels."""
    originals = M.to_8bit(images)
    latents = tokenizer.autoencoder.encode(originals)
    vae = M.to_8bit(tokenizer.autoencoder.decode(latents).cpu())
    revq = M.to_8bit(tokenizer.autoencoder.decode(tokenizer.decode_latents(tokenizer.encode_latents(latents))).cpu())
    return originals.cpu(), vae, revq


def make_grid(columns: Sequence[torch.Tensor], *, pad: int = 2, scale: int = 1):
    """A PIL image with one row per sample and one column per tensor (B, 3, R, R) in [0, 1]."""
    from PIL import Image

    b = columns[0].shape[0]
    r_h, r_w = columns[0].shape[-2:]
    cols = len(columns)
    canvas = torch.ones(3, b * (r_h + pad) + pad, cols * (r_w + pad) + pad)
    for j, col in enumerate(columns):
        for i in range(b):
            y, x = pad + i * (r_h + pad), pad + j * (r_w + pad)
            canvas[:, y : y + r_h, x : x + r_w] = col[i].float().clamp(0, 1)
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    image = Image.fromarray(array)
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image
