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
