"""revq.probe: the noise-tolerance probe (paper Sec. 3.2) on a lossless stand-in autoencoder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _eval_helpers import UnshuffleAE, images, register_fake_autoencoder
from revq.errors import ConfigError
from revq.probe import latent_stats, noise_probe, plot_probe, tolerance_scale


def test_tolerance_scale_is_the_last_scale_within_the_margin():
    assert tolerance_scale([0, 0.1, 0.2, 0.4], [30.0, 29.8, 29.6, 25.0], 0.5) == 0.2
    # a later scale recovering above the line does not count: tolerance is a contiguous range
    assert tolerance_scale([0, 0.1, 0.2, 0.4], [30.0, 29.0, 29.9, 29.9], 0.5) is None
    assert tolerance_scale([0.4, 0, 0.1], [1.0, 30.0, 30.0], 0.5) == 0.1  # order-free
    with pytest.raises(ConfigError):
        tolerance_scale([0.1, 0.2], [30.0, 29.0], 0.5)


def test_probe_clean_round_trip_is_exact_and_noise_lowers_psnr(tmp_path):
    ae = UnshuffleAE.load()
    ims = images(6)
    res = noise_probe(ae, ims, scales=[0.3, 0.05, 1.0], margin_db=3.0, batch_size=5, seed=1)
    assert res.scales == [0.0, 0.05, 0.3, 1.0]  # sorted, 0 added
    assert res.num_images == 6
    assert math.isinf(res.psnr[0]) or res.psnr[0] > 80  # lossless stand-in: clean round trip is exact
    assert res.psnr[1] > res.psnr[2] > res.psnr[3]  # more noise, lower PSNR
    assert res.ssim[0] == pytest.approx(1.0, abs=1e-6) and res.ssim[3] < res.ssim[1]
    assert res.tolerance_mse is None or res.tolerance_mse == pytest.approx(res.tolerance_scale ** 2)
    data = res.to_dict()
    json.dumps(data, allow_nan=True)
    assert plot_probe(res, tmp_path / "p.png").stat().st_size > 1000


def test_noise_is_in_normalised_units():
    """Noise of std s in normalised units = s * std in raw units: with std 2 the raw noise doubles."""
    ae = UnshuffleAE.load()
    ims = images(8)
    z = ae.encode(ims)
    mean, std = latent_stats(z)
    r1 = noise_probe(ae, ims, scales=[0.02], mean=mean, std=torch.ones_like(std), compute_ssim=False)
    r2 = noise_probe(ae, ims, scales=[0.02], mean=mean, std=2 * torch.ones_like(std), compute_ssim=False)
    r3 = noise_probe(ae, ims, scales=[0.04], mean=mean, std=torch.ones_like(std), compute_ssim=False)
    assert r2.psnr[1] == pytest.approx(r3.psnr[1], abs=1e-6)  # same seeded draw
    assert r1.psnr[1] > r2.psnr[1] + 3  # doubling the noise costs ~6 dB (less where clamping/rounding bite)


def test_probe_cli(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from revq.cli import main

    register_fake_autoencoder()
    folder = tmp_path / "ims"
    folder.mkdir()
    for i, im in enumerate(images(6)):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "probe"
    rc = main(["probe", "--vae", "test-unshuffle", "--data", str(folder), "--resolution", "16", "--limit", "4",
               "--scales", "0.01", "0.5", "--margin", "1", "--out", str(out), "--no-ssim"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "4 images" in text and "within 1 dB" in text
    data = json.loads((out / "probe.json").read_text())
    assert data["scales"] == [0.0, 0.01, 0.5] and data["num_images"] == 4
    assert (out / "probe.png").exists()
    assert main(["probe", "--vae", "test-unshuffle", "--data", str(folder), "--resolution", "16",
                 "--margin", "-1"]) == 2
