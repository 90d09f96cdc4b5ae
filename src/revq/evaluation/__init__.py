"""Evaluation: image metrics (:mod:`revq.evaluation.metrics`) and the reconstruction protocol."""

from revq.evaluation.evaluate import evaluate, make_grid, reconstruction_triplets
from revq.evaluation.metrics import (
    MetricUnavailable,
    frechet_distance,
    psnr,
    psnr_y,
    ssim,
    to_8bit,
    usage_stats,
)

__all__ = [
    "evaluate",
    "make_grid",
    "reconstruction_triplets",
    "MetricUnavailable",
    "frechet_distance",
    "psnr",
    "psnr_y",
    "ssim",
    "to_8bit",
    "usage_stats",
]
