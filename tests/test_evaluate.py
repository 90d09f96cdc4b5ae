"""evaluate(): exact counting, the metrics against a direct computation, the CLI commands."""

import json
import math

import pytest
import torch
from PIL import Image

import _eval_helpers as H
from revq.cli import main
from revq.evaluation import evaluate, make_grid
from revq.evaluation import metrics as M

KEYS = ["num_images", "psnr", "psnr_y", "ssim", "latent_mse", "usage", "usage_min_group", "perplexity",
        "bits_per_image", "baseline_psnr", "baseline_ssim", "protocol"]


@pytest.fixture
def fake_registry(monkeypatch):
    from revq.autoencoders import REGISTRY

    monkeypatch.setitem(REGISTRY, H.UnshuffleAE.name, "_eval_helpers:UnshuffleAE.load")


@pytest.fixture(autouse=True)
def no_torch_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_evaluate_counts_every_image_and_matches_direct_computation():
    tok = H.tiny_tokenizer()
    tok.model.quantizer.counts.fill_(7)
    before = tok.model.quantizer.counts.clone()
    items = H.source(13)
    result = evaluate(tok, items, batch_size=5)
    json.dumps(result)  # JSON-ready
    assert all(k in result for k in KEYS)
    assert result["num_images"] == 13 and result["protocol"]["count"] == 13
    assert torch.equal(tok.model.quantizer.counts, before)  # eval never touches training counts

    x = torch.stack([im for _, im, _ in items])
    tokens = tok.encode(x)
    recon = M.to_8bit(tok.decode(tokens))
    assert result["psnr"] == pytest.approx(float(M.psnr(recon, x).mean()), rel=1e-9)
    assert result["psnr_y"] == pytest.approx(float(M.psnr_y(recon, x).mean()), rel=1e-9)
    assert result["ssim"] == pytest.approx(float(M.ssim(recon, x).mean()), rel=1e-9)
    lat = tok.autoencoder.encode(x)
    norm = tok.model.normalizer
    direct_mse = float((norm.normalize(lat) - norm.normalize(tok.model.detokenize(tokens))).double().pow(2).mean())
    assert result["latent_mse"] == pytest.approx(direct_mse, rel=1e-6)
    usage = M.usage_stats(M.count_codes(tokens, 48, 16))
    assert result["usage"] == pytest.approx(usage["usage"])
    assert result["usage_min_group"] == pytest.approx(usage["usage_min_group"])
    assert result["perplexity"] == pytest.approx(usage["perplexity"])
    assert len(result["usage_per_group"]) == 48
    assert result["bits_per_image"] == 48 * 4
    # the stand-in VAE is lossless: the baseline is exact, quantization costs PSNR
    assert result["baseline_psnr"] == pytest.approx(M.PSNR_CAP) and result["baseline_ssim"] == pytest.approx(1.0)
    assert result["psnr"] < result["baseline_psnr"]
    # no LPIPS / Inception weights here: None plus a message saying what to get
    assert result["lpips"] is None and result["rfid"] is None
    assert "pip install" in result["unavailable"]["lpips"] and "http" in result["unavailable"]["rfid"]


def test_limit_and_batch_size_do_not_change_results():
    tok = H.tiny_tokenizer()
    items = H.source(11, seed=4)
    a = evaluate(tok, items, batch_size=4, limit=9, extra_metrics=())
    b = evaluate(tok, items[:9], batch_size=9, extra_metrics=())
    assert a["num_images"] == b["num_images"] == 9
    for key in ("psnr", "ssim", "latent_mse", "usage", "perplexity"):
        assert a[key] == pytest.approx(b[key], rel=1e-9)
    assert "unavailable" not in a


def test_make_grid_layout():
    cols = [torch.zeros(2, 3, 16, 16), torch.ones(2, 3, 16, 16), torch.full((2, 3, 16, 16), 0.5)]
    grid = make_grid(cols, pad=2, scale=2)
    assert grid.size == ((3 * 18 + 2) * 2, (2 * 18 + 2) * 2)


def _write_images(folder, n, seed=0):
    folder.mkdir(parents=True)
    for i, (key, im, _) in enumerate(H.source(n, seed)):
        arr = (im.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(arr).save(folder / f"{key}.png")
    return folder


def test_cli_eval_json(tmp_path, capsys, fake_registry):
    H.tiny_model().save_pretrained(tmp_path / "model")
    data = _write_images(tmp_path / "imgs", 6)
    out = tmp_path / "eval.json"
    rc = main(["eval", "--model", str(tmp_path / "model"), "--data", str(data), "--resolution", str(H.RES),
               "--json", "--batch-size", "4", "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0
    result = json.loads(captured.out)
    assert all(k in result for k in KEYS) and result["num_images"] == 6
    assert result["protocol"]["resolution"] == H.RES and result["protocol"]["autoencoder"] == H.UnshuffleAE.name
    assert "LPIPS" in captured.err and json.loads(out.read_text())["psnr"] == result["psnr"]
    assert math.isfinite(result["psnr"])
    rc = main(["eval", "--model", str(tmp_path / "model"), "--data", str(data), "--limit", "2", "--no-progress", "--no-extra"])
    assert rc == 0 and "PSNR Y (dB)" in capsys.readouterr().out
    rc = main(["eval", "--model", str(tmp_path / "model"), "--data", str(data), "--resolution", "64", "--json"])
    assert rc == 2 and "resolution" in capsys.readouterr().err


def test_cli_reconstruct_and_report(tmp_path, capsys, fake_registry):
    run = tmp_path / "run"
    H.tiny_model().save_pretrained(run / "model")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5, "usage": 0.4}\n')
    data = _write_images(tmp_path / "imgs", 5)
    rc = main(["reconstruct", "--model", str(run / "model"), str(data), "--out", str(tmp_path / "rec"), "--scale", "1"])
    assert rc == 0
    with Image.open(tmp_path / "rec" / "reconstructions.png") as grid:
        assert grid.size == (3 * 18 + 2, 5 * 18 + 2)
    assert len(list((tmp_path / "rec").glob("0*_img*.png"))) == 5
    rc = main(["report", str(run), "--data", str(data), "--limit", "4", "--grid-images", "3"])
    assert rc == 0
    assert json.loads((run / "eval.json").read_text())["num_images"] == 4
    text = (run / "report.html").read_text()
    assert text.count("<img") == 4 and "PSNR Y" in text


def test_real_taef2_on_tiny_imagenet(tmp_path):
    """Integration on the shared TAEF2 weights and real images (skipped without ../shared)."""
    from revq.paths import tiny_imagenet_dir, weights_dir

    wd, dd = weights_dir(), tiny_imagenet_dir()
    if wd is None or not (wd / "taef2_encoder.pth").is_file() or dd is None:
        pytest.skip("shared TAEF2 weights / Tiny-ImageNet not found")
    from revq.autoencoders import load_autoencoder
    from revq.config import AutoencoderInfo, RectifierConfig, ReVQConfig
    from revq.data.images import open_image_source
    from revq.model import ReVQ
    from revq.tokenizer import Tokenizer

    ae = load_autoencoder("taef2")
    items = list(open_image_source(sorted(dd.glob("val-*.tar*"))[0], resolution=64, limit=8))
    x = torch.stack([im for _, im, _ in items])
    lat = ae.encode(x)
    torch.manual_seed(0)
    cfg = ReVQConfig(latent_shape=(32, 8, 8), num_tokens=256, codebook_size=64,
                     rectifier=RectifierConfig(kind="none"),
                     autoencoder=AutoencoderInfo(name="taef2", resolution=64, latent_shape=(32, 8, 8)))
    model = ReVQ(cfg)
    model.normalizer.set_stats(lat.mean(0), lat.std(0) + 1e-3)
    # codes from stand-in normalised latents (not these images' own sub-vectors)
    model.quantizer.init_from_data(torch.randn(64, 32, 8, 8, generator=torch.Generator().manual_seed(0)))
    model.save_pretrained(tmp_path / "m")
    tok = Tokenizer.from_pretrained(tmp_path / "m", autoencoder=ae)
    result = evaluate(tok, items, batch_size=8, extra_metrics=())
    assert result["num_images"] == 8
    assert 19.0 < result["baseline_psnr"] < 26.0  # TAEF2 round trip is ~22 dB on this data
    assert result["psnr"] < result["baseline_psnr"]
    assert result["psnr_y"] > result["psnr"] - 5
