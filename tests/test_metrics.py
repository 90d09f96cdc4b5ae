"""Metrics against independent NumPy/SciPy implementations."""

import numpy as np
import pytest
import torch
from scipy import linalg, ndimage

from revq.evaluation import metrics as M


def _images(seed=0, b=3, h=32, w=40):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g)
    y = (x + 0.1 * torch.randn(b, 3, h, w, generator=g)).clamp(0, 1)
    return M.to_8bit(x), M.to_8bit(y)


def test_to_8bit_levels_and_idempotent():
    x = torch.tensor([-0.5, 0.0, 0.5, 0.999, 1.7])
    q = M.to_8bit(x)
    assert torch.allclose(q * 255, torch.round(q * 255))
    assert q.min() == 0 and q.max() == 1
    assert torch.equal(M.to_8bit(q), q)


def test_psnr_matches_numpy():
    x, y = _images()
    ours = M.psnr(x, y).numpy()
    xn, yn = x.double().numpy(), y.double().numpy()
    ref = [10 * np.log10(1.0 / np.mean((a - b) ** 2)) for a, b in zip(xn, yn)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert M.psnr(x, x).max() == pytest.approx(M.PSNR_CAP)


def test_psnr_y_bt601():
    white = torch.ones(1, 3, 4, 4)
    black = torch.zeros(1, 3, 4, 4)
    assert M.rgb_to_y(white).max().item() == pytest.approx(235 / 255)
    assert M.rgb_to_y(black).max().item() == pytest.approx(16 / 255)
    x, y = _images(1)
    xn, yn = x.double().numpy(), y.double().numpy()
    ref = []
    for a, b in zip(xn, yn):
        ya = (16 + 65.481 * a[0] + 128.553 * a[1] + 24.966 * a[2]) / 255
        yb = (16 + 65.481 * b[0] + 128.553 * b[1] + 24.966 * b[2]) / 255
        ref.append(10 * np.log10(1.0 / np.mean((ya - yb) ** 2)))
    np.testing.assert_allclose(M.psnr_y(x, y).numpy(), ref, rtol=1e-10)


def _ssim_reference(a, b, data_range=1.0):
    """Wang et al. SSIM with scipy.ndimage (Gaussian sigma 1.5, 11 taps), valid region."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    f = lambda t: ndimage.gaussian_filter(t, sigma=1.5, truncate=5 / 1.5, mode="reflect")
    mu_a, mu_b = f(a), f(b)
    saa = f(a * a) - mu_a**2
    sbb = f(b * b) - mu_b**2
    sab = f(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return s[5:-5, 5:-5].mean()


def test_ssim_matches_scipy_reference():
    x, y = _images(2)
    ours = M.ssim(x, y).numpy()
    xn, yn = x.double().numpy(), y.double().numpy()
    ref = [np.mean([_ssim_reference(a[c], b[c]) for c in range(3)]) for a, b in zip(xn, yn)]
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    assert M.ssim(x, x).numpy() == pytest.approx(np.ones(3))
    assert (M.ssim(x, y) < 1).all()


def test_ssim_rejects_small_images():
    with pytest.raises(ValueError):
        M.ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_frechet_distance_matches_scipy_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 16))
    b = rng.normal(loc=0.3, size=(250, 16)) @ rng.normal(size=(16, 16)) * 0.5
    ours = M.fid_from_features(a, b)
    # independent formula: tr(sqrtm(sqrt(S1) S2 sqrt(S1))) (symmetric form)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    r1 = linalg.sqrtm(s1).real
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(r1 @ s2 @ r1).real)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert M.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_1d_closed_form():
    assert M.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_usage_stats_and_counts():
    tokens = torch.tensor([[0, 1], [0, 3], [0, 3]])
    counts = M.count_codes(tokens, num_groups=2, codebook_size=4)
    assert counts.tolist() == [[3, 0, 0, 0], [0, 1, 0, 2]]
    stats = M.usage_stats(counts)
    assert stats["usage"] == pytest.approx(3 / 8)
    assert stats["usage_min_group"] == pytest.approx(1 / 4)
    p = np.array([1 / 3, 2 / 3])
    assert stats["perplexity"] == pytest.approx((1 + np.exp(-(p * np.log(p)).sum())) / 2)
    shared = M.count_codes(tokens, num_groups=1, codebook_size=4)
    assert shared.tolist() == [[3, 1, 0, 2]]
    four = torch.tensor([[0, 1, 2, 2], [3, 3, 0, 1]])  # two positions per codebook
    assert M.count_codes(four, num_groups=2, codebook_size=4).tolist() == [[1, 1, 0, 2], [1, 1, 2, 0]]
    with pytest.raises(ValueError):
        M.count_codes(four, num_groups=3, codebook_size=4)


def test_optional_metrics_say_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for factory, name in ((M.lpips_metric, "LPIPS"), (M.inception_feature_extractor, "rFID")):
        with pytest.raises(M.MetricUnavailable) as info:
            factory()
        text = str(info.value)
        assert name in text and "pip install" in text and "http" in text
