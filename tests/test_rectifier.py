"""Rectifier sizes (the paper's), identity at init, authors' key layout."""

import pytest
import torch

from revq.config import RectifierConfig
from revq.errors import ConfigError
from revq.rectifier import build_pre_encoder, build_rectifier, num_parameters


@pytest.mark.parametrize("depth,width,expected", [(3, 512, 14_069_792), (4, 512, 18_660_896), (4, 1024, 72_973_344)])
def test_efficientvit_parameter_counts_match_the_paper(depth, width, expected):
    with torch.device("meta"):  # no memory, no init time
        r = build_rectifier(RectifierConfig(kind="efficientvit", depth=depth, width=width), 32)
    assert num_parameters(r) == r.num_parameters() == expected
    assert round(expected / 1e6, 2) in (14.07, 18.66, 72.97)


def test_efficientvit_keys_are_the_authors_dcae_decoder():
    with torch.device("meta"):
        r = build_rectifier(RectifierConfig(kind="efficientvit", depth=3, width=512), 32)
    keys = set(r.state_dict())
    for k in (
        "net.conv_in.weight",
        "net.conv_in.bias",
        "net.up_blocks.0.0.attn.to_qkv_multiscale.0.proj_in.weight",
        "net.up_blocks.0.2.conv_out.conv_inverted.weight",
        "net.up_blocks.0.2.attn.norm_out.bias",
        "net.norm_out.weight",
        "net.norm_out.bias",
        "net.conv_out.weight",
        "net.conv_out.bias",
    ):
        assert k in keys, k
    assert not any(k.startswith("net.up_blocks.1") or "up_blocks.0.3" in k for k in keys)
    assert type(r.net).__module__.endswith("autoencoder_dc") and type(r.net).__name__ == "Decoder"


SMALL = dict(width=64, depth=2, mlp_hidden=128)


@pytest.mark.parametrize("kind", ["efficientvit", "cnn", "mlp", "none"])
def test_residual_rectifier_is_identity_at_init(kind):
    torch.manual_seed(0)
    r = build_rectifier(RectifierConfig(kind=kind, **SMALL), 32, latent_shape=(32, 4, 4))
    q = torch.randn(3, 32, 4, 4)
    out = r(q)
    assert out.shape == q.shape
    assert torch.equal(out, q)
    if kind != "none":
        # trainable from step 0: the zero-initialised output layer receives a gradient
        r(q).pow(2).sum().backward()
        assert r.output_layer.weight.grad.abs().sum() > 0
        assert r.num_parameters() > 0
    else:
        assert r.num_parameters() == 0


@pytest.mark.parametrize("kind", ["efficientvit", "cnn", "mlp"])
def test_non_residual_is_the_plain_network(kind):
    torch.manual_seed(0)
    r = build_rectifier(RectifierConfig(kind=kind, residual=False, **SMALL), 32, latent_shape=(32, 4, 4))
    q = torch.randn(2, 32, 4, 4)
    out = r(q)
    assert out.shape == q.shape
    assert torch.equal(out, r.net(q))
    assert not torch.allclose(out, q)


def test_config_errors_and_pre_encoder():
    with pytest.raises(ConfigError):
        build_rectifier(RectifierConfig(kind="mlp"), 32)
    with pytest.raises(ConfigError):
        build_rectifier(RectifierConfig(kind="efficientvit", width=48), 32)
    with pytest.raises(ConfigError):
        RectifierConfig(kind="transformer")
    enc = build_pre_encoder(RectifierConfig(kind="cnn", **SMALL), 32)
    q = torch.randn(2, 32, 4, 4)
    assert torch.equal(enc(q), q)
