"""ReVQ model: objectives, counting, normaliser, bit-exact save/load."""

import pytest
import torch

from revq.config import AutoencoderInfo, RectifierConfig, ReVQConfig
from revq.errors import MissingResourceError
from revq.model import ReVQ
from revq.normalizer import LatentNormalizer

SHAPE = (8, 4, 4)


def small_config(**kw):
    base = dict(
        latent_shape=SHAPE,
        num_tokens=32,
        codebook_size=16,
        rectifier=RectifierConfig(kind="efficientvit", width=32, depth=1, head_dim=8),
        autoencoder=AutoencoderInfo(name="taef2", resolution=32, latent_shape=SHAPE),
    )
    base.update(kw)
    return ReVQConfig(**base)


def test_decoupled_objective_keeps_codebook_out_of_the_rectifier_loss():
    torch.manual_seed(0)
    m = ReVQ(small_config(objective="decoupled")).train()
    out = m(torch.randn(4, *SHAPE))
    assert torch.allclose(out["loss"], out["quant_loss"] + out["rect_loss"])
    assert out["indices"].shape == (4, 32)
    out["rect_loss"].backward(retain_graph=True)
    assert m.quantizer.codebooks.grad is None or m.quantizer.codebooks.grad.abs().sum() == 0
    assert m.rectifier.net.conv_out.weight.grad.abs().sum() > 0
    out["quant_loss"].backward()
    assert m.quantizer.codebooks.grad.abs().sum() > 0


def test_paper_objective_reaches_codebook_through_rectifier():
    torch.manual_seed(0)
    m = ReVQ(small_config(objective="paper")).train()
    out = m(torch.randn(4, *SHAPE))
    assert torch.equal(out["loss"], out["rect_loss"])
    assert not out["quant_loss"].requires_grad
    out["loss"].backward()
    assert m.quantizer.codebooks.grad.abs().sum() > 0
    assert m.rectifier.net.conv_out.weight.grad.abs().sum() > 0


def test_counts_not_touched_by_eval_or_tokenize():
    m = ReVQ(small_config())
    x = torch.randn(3, *SHAPE)
    m.eval()
    m(x)
    m.reconstruct(x)
    assert m.quantizer.counts.sum() == 0
    m.train()
    m.tokenize(x)
    assert m.quantizer.counts.sum() == 0
    m(x)
    assert m.quantizer.counts.sum() == 3 * 32


def test_tokenize_detokenize_and_identity_rectifier():
    torch.manual_seed(0)
    m = ReVQ(small_config()).eval()
    m.normalizer.set_stats(torch.rand(SHAPE) - 0.5, torch.rand(SHAPE) + 0.5)
    x = torch.randn(2, *SHAPE)
    tok = m.tokenize(x)
    assert tok.shape == (2, 32) and tok.dtype == torch.long
    # residual rectifier is the identity at init: detokenize = de-normalised codes
    expected = m.normalizer.denormalize(m.quantizer.lookup(tok))
    assert torch.allclose(m.detokenize(tok), expected, atol=1e-6)
    assert torch.equal(m.reconstruct(x), m.detokenize(tok))


def test_save_load_bit_exact(tmp_path):
    torch.manual_seed(0)
    m = ReVQ(small_config(split="spatial", normalization="channel", num_tokens=16, objective="paper"))
    m.normalizer.set_stats(torch.randn(SHAPE), torch.rand(SHAPE) + 0.1)
    m.quantizer.counts.random_(0, 5)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))  # leave the zero init: every tensor must survive
    m.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    m2 = ReVQ.from_pretrained(tmp_path / "m")
    assert m2.config.to_dict() == m.config.to_dict()
    assert m2.config.autoencoder.name == "taef2" and m2.config.autoencoder.resolution == 32
    s1, s2 = m.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        assert s1[k].dtype == s2[k].dtype and torch.equal(s1[k], s2[k]), k
    x = torch.randn(3, *SHAPE)
    assert torch.equal(m.eval().reconstruct(x), m2.eval().reconstruct(x))
    with pytest.raises(MissingResourceError):
        ReVQ.from_pretrained(tmp_path / "nothing")


def test_shared_codebooks_config_round_trip_and_validation(tmp_path):
    from revq.errors import ConfigError

    m = ReVQ(small_config(tokens_per_codebook=16))  # 32 tokens of an (8, 4, 4) latent, 16 per codebook
    assert m.config.num_codebooks == 2 and m.quantizer.codebooks.shape == (2, 16, 4)
    m.save_pretrained(tmp_path / "m")
    m2 = ReVQ.from_pretrained(tmp_path / "m")
    assert m2.config.tokens_per_codebook == 16 and m2.quantizer.num_groups == 2
    x = torch.randn(3, *SHAPE)
    assert torch.equal(m.eval().tokenize(x), m2.eval().tokenize(x))
    with pytest.raises(ConfigError, match="tokens_per_codebook"):
        small_config(tokens_per_codebook=5)


def test_num_parameters_and_pre_encoder():
    m = ReVQ(small_config(pre_encoder=True, rectifier=RectifierConfig(kind="cnn", width=16, depth=1)))
    n = m.num_parameters()
    assert n["codebook"] == 32 * 16 * 4
    assert n["pre_encoder"] == n["rectifier"] > 0
    assert n["total"] == sum(p.numel() for p in m.parameters())
    out = m.train()(torch.randn(2, *SHAPE))
    out["loss"].backward()
    assert m.pre_encoder.net.conv_out.weight.grad.abs().sum() > 0
    assert ReVQ(small_config(rectifier=RectifierConfig(kind="none"))).num_parameters()["rectifier"] == 0


def test_normalizer_modes():
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(1000, *SHAPE, generator=gen) * torch.rand(SHAPE, generator=gen) * 3 + torch.randn(SHAPE, generator=gen)
    mean, std = data.mean(0), data.std(0, unbiased=False)
    x = data[:5]
    for mode, m_ref, s_ref in [
        ("element", mean, std),
        ("channel", data.mean((0, 2, 3))[:, None, None], data.std((0, 2, 3), unbiased=False)[:, None, None]),
        ("global", data.mean(), data.std(unbiased=False)),
    ]:
        n = LatentNormalizer(SHAPE, mode=mode)
        n.set_stats(mean, std)  # per-element stats reduce exactly to coarser modes
        assert torch.allclose(n.normalize(x), (x - m_ref) / s_ref, atol=1e-4), mode
        assert torch.allclose(n.denormalize(n.normalize(x)), x, atol=1e-5)
    n = LatentNormalizer(SHAPE, mode="none")
    n.set_stats(mean, std)
    assert torch.equal(n.normalize(x), x)
