"""revq.capacity: the capacity planner (paper App. D.1) on synthetic latents."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from revq.capacity import fit_exponential, min_codebook, plan_capacity, plot_capacity
from revq.errors import ConfigError


def test_min_codebook_interpolates_in_log_log():
    n, below = min_codebook([16, 64, 256], [0.4, 0.2, 0.05], 0.1)
    # between 64 (0.2) and 256 (0.05): log-linear, threshold 0.1 is half-way in log MSE
    assert n == pytest.approx(128.0, rel=1e-9) and not below
    assert min_codebook([16, 64], [0.05, 0.01], 0.1) == (16.0, True)
    assert min_codebook([16, 64], [0.5, 0.3], 0.1) == (None, False)


def test_fit_exponential_recovers_the_relation():
    a, b = 12.0, -0.01
    ts = [128, 256, 512]
    a_hat, b_hat = fit_exponential(ts, [math.exp(a + b * t) for t in ts])
    assert a_hat == pytest.approx(a) and b_hat == pytest.approx(b)
    assert fit_exponential([256], [100.0]) is None
    assert fit_exponential([256, 512], [None, 10.0]) is None


def test_plan_on_latents_fewer_tokens_need_more_codes(tmp_path):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(600, 4, 4, 4, generator=g)  # 64 values, i.i.d.: MSE falls as N grows
    plan = plan_capacity(z, token_counts=[32, 16, 8], codebook_sizes=[2, 8, 32, 128], threshold=0.35,
                         kmeans_iters=4, held_out_fraction=0.25)
    mse = {(p.tokens, p.codebook_size): p.mse for p in plan.points}
    for t in (32, 16, 8):
        assert mse[(t, 2)] > mse[(t, 8)] > mse[(t, 32)]  # more codes, lower held-out MSE
    for n in (8, 32):
        assert mse[(32, n)] < mse[(16, n)] < mse[(8, n)]  # fewer tokens (longer vectors), higher MSE
    assert all(p.fit_mse <= p.mse + 0.05 for p in plan.points)  # held-out is the harder number
    nm = plan.n_min
    assert nm[32] is not None and (nm[16] is None or nm[16] > nm[32])
    rec = plan.recommend(32)
    assert rec["power_of_two"] >= rec["codebook_size"] and rec["power_of_two"] & (rec["power_of_two"] - 1) == 0
    json.dumps(plan.to_dict())
    assert "threshold" in plan.table()
    assert plot_capacity(plan, tmp_path / "c.png").stat().st_size > 1000
    with pytest.raises(ConfigError):
        plan_capacity(z, token_counts=[3])
    with pytest.raises(ConfigError):
        plan_capacity(z, codebook_sizes=[10_000])


def test_share_channels_fits_one_codebook_per_channel():
    """With share_channels every grid cell is the quantizer with tokens_per_codebook = T / C, and
    codebook sizes up to (fit latents x T / C) become measurable."""
    from revq.capacity import quantizer_mse

    g = torch.Generator().manual_seed(1)
    z = torch.randn(50, 4, 4, 4, generator=g)
    plan = plan_capacity(z, token_counts=[32, 16], codebook_sizes=[8, 200], threshold=0.3, kmeans_iters=2,
                         held_out_fraction=0.2, share_channels=True)
    cells = {(p.tokens, p.codebook_size): p.mse for p in plan.points}
    assert (32, 200) in cells  # 40 fit latents x 8 positions per codebook = 320 sub-vectors >= 200 codes
    assert (16, 200) not in cells  # 40 x 4 = 160 < 200: skipped
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    held, fit = z[perm[:10]], z[perm[10:]]
    ref, _ = quantizer_mse(fit, held, 32, 8, tokens_per_codebook=8, kmeans_iters=2, seed=0)
    assert cells[(32, 8)] == pytest.approx(ref)
    assert "one codebook per channel" in plan.extra["method"]
    # without sharing 200 codes exceed the 40 fit latents and the size is skipped
    plain = plan_capacity(z, token_counts=[32], codebook_sizes=[8, 200], threshold=0.3, kmeans_iters=2)
    assert {p.codebook_size for p in plain.points} == {8}


def test_capacity_cli(tmp_path, capsys):
    from revq.cli import main

    cache = _tiny_cache(tmp_path / "cache")
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"tolerance_mse": 0.5}))
    out = tmp_path / "cap"
    rc = main(["capacity", "--latents", str(cache), "--limit", "300", "--tokens", "48", "24",
               "--codebook-sizes", "4", "16", "64", "--probe", str(probe), "--kmeans-iters", "3",
               "--out", str(out), "--quiet"])
    assert rc == 0
    assert "threshold 0.5 (probe tolerance" in capsys.readouterr().out
    data = json.loads((out / "capacity.json").read_text())
    assert data["threshold"] == 0.5 and len(data["points"]) == 6
    assert (out / "capacity.png").exists()
    assert main(["capacity", "--latents", str(cache), "--limit", "2"]) == 2


def _tiny_cache(path):
    """A real on-disk latent cache from the lossless stand-in autoencoder (via `revq encode`)."""
    import numpy as np
    from PIL import Image

    from _eval_helpers import images, register_fake_autoencoder
    from revq.cli import main

    register_fake_autoencoder()
    folder = path.parent / "ims"
    folder.mkdir()
    for i, im in enumerate(images(300)):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    assert main(["encode", "--vae", "test-unshuffle", "--data", str(folder), "--resolution", "16",
                 "--out", str(path), "--workers", "0", "--no-progress"]) == 0
    return path
