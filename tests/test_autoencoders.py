"""Autoencoder backends: TAEF2 round trip on real images, weight resolution and checksums,
diffusers backends built from tiny random configs and loaded like a hub id would be."""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from revq import paths
from revq.autoencoders import load_autoencoder
from revq.autoencoders import taef2 as taef2_module
from revq.errors import MissingResourceError, RevqError

WEIGHTS = paths.weights_dir()
HAVE_WEIGHTS = WEIGHTS is not None and (WEIGHTS / "taef2_encoder.pth").is_file()
DATA = paths.tiny_imagenet_dir()
HAVE_DATA = DATA is not None and (DATA / "val-000000.tar.gz").is_file()
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="TAEF2 weights not found (no ../shared/weights, REVQ_WEIGHTS_DIR unset)")
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="Tiny-ImageNet shards not found (no ../shared/data, REVQ_DATA_DIR unset)")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a - b).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse)


@needs_weights
@needs_data
def test_taef2_round_trip_psnr_on_real_images():
    from revq.data.images import open_image_source

    ae = load_autoencoder("taef2")
    source = open_image_source(DATA / "val-000000.tar.gz", resolution=64, limit=256)
    images = torch.stack([image for _, image, _ in source])  # (256,3,64,64)
    latents = ae.encode(images)
    assert latents.shape == (256, 32, 8, 8) and latents.dtype == torch.float32
    recon = ae.decode(latents)
    assert recon.shape == images.shape and 0 <= recon.min() and recon.max() <= 1
    value = psnr(recon, images).mean().item()
    print(f"TAEF2 round-trip PSNR over {len(images)} val images: {value:.2f} dB")
    assert value >= 21.0


@needs_weights
def test_taef2_interface_and_frozen():
    ae = load_autoencoder("taef2")
    assert ae.name == "taef2" and ae.latent_channels == 32 and ae.downsample == 8
    assert ae.latent_shape(64) == (32, 8, 8) and ae.latent_shape(128) == (32, 16, 16)
    assert not ae.training and not any(p.requires_grad for p in ae.parameters())
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    z = ae.encode(x)
    assert not z.requires_grad
    # channels_last and a local folder path give the same latents
    ae2 = load_autoencoder(str(WEIGHTS)).use_channels_last()
    torch.testing.assert_close(ae2.encode(x.detach()), z, atol=1e-4, rtol=1e-4)


def _isolate(monkeypatch, tmp_path: Path) -> Path:
    """No env weights, no shared folder, a fresh user cache."""
    monkeypatch.delenv(paths.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv(paths.SHARED_ENV, str(tmp_path / "no-shared"))
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_wrong_checksum_in_weights_dir_is_refused(monkeypatch, tmp_path):
    _isolate(monkeypatch, tmp_path)
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "taef2_encoder.pth").write_bytes(b"not the real weights")
    monkeypatch.setenv(paths.WEIGHTS_ENV, str(folder))
    with pytest.raises(taef2_module.ChecksumError) as info:
        taef2_module.resolve_weights("encoder")
    message = str(info.value)
    assert "SHA-256" in message and taef2_module.SHA256["taef2_encoder.pth"] in message
    assert str(folder / "taef2_encoder.pth") in message and "Delete it" in message


def test_downloaded_file_with_wrong_checksum_is_refused_and_not_kept(monkeypatch, tmp_path):
    cache = _isolate(monkeypatch, tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(b"tampered"))
    with pytest.raises(taef2_module.ChecksumError, match="downloaded https://github.com/madebyollin"):
        taef2_module.resolve_weights("decoder")
    assert not any(cache.glob("*")), "a file that failed verification must not stay in the cache"


@needs_weights
def test_download_into_user_cache_when_nothing_local(monkeypatch, tmp_path):
    real = {name: (WEIGHTS / name).read_bytes() for name in taef2_module.SHA256}
    cache = _isolate(monkeypatch, tmp_path)
    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        return _FakeResponse(real[url.rsplit("/", 1)[-1]])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    ae = load_autoencoder("taef2")
    assert ae.encode(torch.rand(1, 3, 64, 64)).shape == (1, 32, 8, 8)
    assert sorted(p.name for p in cache.iterdir()) == ["taef2_decoder.pth", "taef2_encoder.pth"]
    assert all(u.startswith("https://github.com/madebyollin/taesd/raw/main/") for u in urls)
    # second load uses the cache, no download
    urls.clear()
    load_autoencoder("taef2")
    assert urls == []


def test_offline_failure_says_what_was_tried_and_what_to_do(monkeypatch, tmp_path):
    _isolate(monkeypatch, tmp_path)

    def offline(url, timeout=None):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(MissingResourceError) as info:
        load_autoencoder("taef2")
    message = str(info.value)
    assert "Tried" in message and "user cache" in message and "network unreachable" in message
    assert "Fix:" in message and paths.WEIGHTS_ENV in message


def test_explicit_weights_path_missing(tmp_path):
    with pytest.raises(MissingResourceError, match="explicit weights path"):
        taef2_module.resolve_weights("encoder", weights_path=tmp_path)


def test_state_dict_keys_match_the_documented_layout():
    model = taef2_module.TAEF2()
    enc = set(model.encoder.state_dict())
    assert {"0.weight", "1.conv.0.weight", "1.conv.4.bias", "2.weight", "11.pool.0.weight", "11.pool.1.weight", "14.bias"} <= enc
    assert "2.bias" not in enc
    dec = set(model.decoder.state_dict())
    assert {"1.weight", "3.pool.3.weight", "7.weight", "18.conv.2.weight", "19.bias"} <= dec
    assert sum(p.numel() for p in model.encoder.parameters()) == pytest.approx(1.2e6, rel=0.15)


def test_unknown_name_is_a_user_error():
    with pytest.raises(RevqError, match="unknown autoencoder"):
        load_autoencoder("no-such-vae")


# ---------------------------------------------------------------------- diffusers backends
def _tiny_kl():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=16, scaling_factor=0.5, shift_factor=0.1,
    )


def _tiny_dc():
    from diffusers import AutoencoderDC

    return AutoencoderDC(
        latent_channels=4, attention_head_dim=8,
        encoder_block_types="ResBlock", decoder_block_types="ResBlock",
        encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), ()),
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.4,
    )


def _tiny_flux2():
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=16,
    )


@pytest.mark.parametrize("builder,kind", [(_tiny_kl, "kl"), (_tiny_dc, "dc"), (_tiny_flux2, "flux2")])
def test_diffusers_backend_from_saved_folder(tmp_path, builder, kind):
    torch.manual_seed(0)
    model = builder().eval()
    model.save_pretrained(tmp_path / "vae")
    ae = load_autoencoder(str(tmp_path / "vae"))
    images = torch.rand(2, 3, 16, 16)
    latents = ae.encode(images)
    with torch.no_grad():
        x = images * 2 - 1
        if kind == "dc":
            expected = model.encode(x).latent * 0.4
        elif kind == "kl":
            expected = (model.encode(x).latent_dist.mean - 0.1) * 0.5
        else:
            expected = model.encode(x).latent_dist.mean
    assert ae.downsample == 2 and ae.latent_channels == 4
    assert latents.shape == (2, *ae.latent_shape(16)) == (2, 4, 8, 8)
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=1e-5)
    recon = ae.decode(latents)
    assert recon.shape == (2, 3, 16, 16) and 0 <= recon.min() and recon.max() <= 1
    with torch.no_grad():
        expected_recon = ((model.decode(latents / ae.scale + ae.shift).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(recon, expected_recon, atol=1e-5, rtol=1e-5)
    assert ae.name == str((tmp_path / "vae").resolve())


def test_diffusers_pipeline_layout_uses_vae_subfolder(tmp_path):
    _tiny_kl().save_pretrained(tmp_path / "pipe" / "vae")
    ae = load_autoencoder(str(tmp_path / "pipe"), dtype=torch.float64)
    assert ae.dtype == torch.float64
    assert ae.encode(torch.rand(1, 3, 8, 8)).dtype == torch.float32


def test_diffusers_unsupported_class_is_refused(tmp_path):
    from diffusers import AutoencoderTiny

    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8), latent_channels=4).save_pretrained(tmp_path)
    with pytest.raises(RevqError, match="supported autoencoders"):
        load_autoencoder(str(tmp_path))


def test_unreachable_hub_id_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(MissingResourceError, match="hub id"):
        load_autoencoder("nobody-xyz/no-such-vae-revq-test")
