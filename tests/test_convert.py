"""Converting the authors' released checkpoints (offline).

Checkpoints are built here in the authors' exact layout with random weights: the quantizer
state dict ``embeddings`` (T, N, d) / ``count`` (T, N) float / ``index_offset`` (T,), the
rectifier as diffusers' DC-AE ``Decoder`` configured as one stage (independent of our
rectifier code), ``preprocessor.pth`` with (2048,) ``mean``/``std``, and the YAML config in
the released format.  The reference pipeline (normalise, brute-force nearest code per group in
the authors' memory-order layout, decoder, de-normalise) is written out here too.

Sizes: the codebook size N is cut to 64 (the released 16,384 / 65,536 / 262,144 would only
make the test slow); T, d and the rectifier width W and depth L are the released ones for 512T
(W=512, L=3) and 256T-L (W=512, L=4).  256T-B (W=1024, L=4, 73 M parameters) runs at W=256
in the fast suite and at its true width under ``-m slow``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

diffusers_dc = pytest.importorskip("diffusers.models.autoencoders.autoencoder_dc")

from revq.errors import MissingResourceError, RevqError  # noqa: E402

LATENT = (32, 8, 8)
N_SMALL = 64

YAML_TEMPLATE = """workspace: /path/to/workspace
name: {name}
log_path: ${{workspace}}/outputs/${{name}}
world_size: 1
seed: 42

data:
  train_data_path: /path/to/converted_imagenet_train
  val_data_path: /path/to/converted_imagenet_val
  batch_size: 256
  world_size: ${{world_size}}

model:
  vae_path: ${{workspace}}/ckpt/dc_ae
  log_path: ${{log_path}}
  input_data_size: [32, 8, 8]
  quantizer:
    TYPE: vq
    num_code: {num_code}
    num_group: {num_group}
    tokens_per_data: {tokens}
  decoder:
    TYPE: dc_ae
    in_channels: 32
    latent_channels: 32
    attention_head_dim: 32
    block_type: [EfficientViTBlock]
    block_out_channels: [{width}]
    layers_per_block: [{depth}]
    qkv_multiscales: [[5]]
    norm_type: rms_norm
    act_fn: silu
    upsample_block_type: interpolate

train:
  log_path: ${{log_path}}
  batch_size: ${{data.batch_size}}
  world_size: ${{world_size}}
  num_epochs: 100
  lr: 0.01
  visualize_interval: 1
  image_log_path: ${{log_path}}/images
"""

# name -> (T, N, W, L) as built in the fast suite
FAST = {
    "512T": (512, N_SMALL, 512, 3),  # true W, L
    "256T-B": (256, N_SMALL, 256, 4),  # true L; W cut from 1024 to 256 (true width: slow test)
    "256T-L": (256, N_SMALL, 512, 4),  # true W, L
}


def reference_decoder(width: int, depth: int, seed: int) -> torch.nn.Module:
    """The authors' rectifier: diffusers' DC-AE Decoder as one stage, every weight random."""
    torch.manual_seed(seed)
    dec = diffusers_dc.Decoder(
        in_channels=32,
        latent_channels=32,
        attention_head_dim=32,
        block_type=("EfficientViTBlock",),
        block_out_channels=(width,),
        layers_per_block=(depth,),
        qkv_multiscales=((5,),),
        norm_type="rms_norm",
        act_fn="silu",
        upsample_block_type="interpolate",
    )
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if "norm" in name:  # make norm weights/biases distinguishable from the default 1 / 0
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
    return dec.eval()


def make_release(folder: Path, name: str, tokens: int, num_code: int, width: int, depth: int, seed: int = 0) -> dict:
    """Write ckpt.pth / <name>.yaml / preprocessor.pth in the authors' layout; return paths + reference."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    d = math.prod(LATENT) // tokens
    emb = torch.randn(tokens, num_code, d, generator=g)
    count = torch.randint(0, 5, (tokens, num_code), generator=g).float()
    offset = torch.arange(tokens, dtype=torch.long) * num_code
    dec = reference_decoder(width, depth, seed)
    ckpt = {
        "quantizer": {"index_offset": offset, "count": count, "embeddings": emb},
        "decoder": dec.state_dict(),
        "epoch": 99,
    }
    torch.save(ckpt, folder / "ckpt.pth")
    mean = 0.5 * torch.randn(math.prod(LATENT), generator=g)
    std = 0.5 + torch.rand(math.prod(LATENT), generator=g) * 1.5
    torch.save({"mean": mean, "std": std}, folder / "preprocessor.pth")
    cfg_name = f"{name}.yaml"
    (folder / cfg_name).write_text(
        YAML_TEMPLATE.format(name=name, num_code=num_code, num_group=tokens, tokens=tokens, width=width, depth=depth)
    )
    return {
        "checkpoint": folder / "ckpt.pth",
        "config": folder / cfg_name,
        "preprocessor": folder / "preprocessor.pth",
        "emb": emb,
        "decoder": dec,
        "mean": mean,
        "std": std,
    }


def reference_tokens(latents: torch.Tensor, rel: dict) -> torch.Tensor:
    """Authors' pipeline: per-element normalise, view (B, T, d) in memory order, nearest code per group."""
    b = latents.shape[0]
    emb = rel["emb"]
    t, _, d = emb.shape
    z = (latents.reshape(b, -1) - rel["mean"]) / rel["std"]
    x = z.reshape(b, t, d).permute(1, 0, 2).double()  # (T, B, d)
    dist = torch.cdist(x, emb.double())  # (T, B, N)
    return dist.argmin(dim=-1).T.contiguous()  # (B, T)


def reference_decode(tokens: torch.Tensor, rel: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised rectified latents, de-normalised latents) from the reference decoder."""
    emb = rel["emb"]
    b, t = tokens.shape
    q = emb[torch.arange(t)[None, :], tokens]  # (B, T, d)
    q = q.reshape(b, *LATENT)
    with torch.no_grad():
        rect = rel["decoder"](q)
    raw = (rect.reshape(b, -1) * rel["std"] + rel["mean"]).reshape(b, *LATENT)
    return rect, raw


def sample_latents(rel: dict, batch: int = 4, seed: int = 1) -> torch.Tensor:
    """Raw latents near the codes (so that ties are impossible and every group is exercised)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, math.prod(LATENT), generator=g)
    return (z * rel["std"] + rel["mean"]).reshape(batch, *LATENT)


def check_equivalence(model, rel: dict, scale: float | None = None) -> None:
    """Our model on *our* latents (= scale x the authors' raw DC-AE latents) vs the reference."""
    from revq.convert import DCAE_SCALING_FACTOR

    scale = DCAE_SCALING_FACTOR if scale is None else scale
    latents = sample_latents(rel)
    want_tokens = reference_tokens(latents, rel)
    with torch.no_grad():
        tokens = model.tokenize(latents * scale)
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, want_tokens)

    want_rect, want_raw = reference_decode(want_tokens, rel)
    with torch.no_grad():
        raw = model.detokenize(tokens) / scale
    # normalised space: the rectifier output itself
    std = rel["std"].reshape(LATENT)
    mean = rel["mean"].reshape(LATENT)
    rect = (raw - mean) / std
    torch.testing.assert_close(rect, want_rect, rtol=0, atol=1e-5)
    torch.testing.assert_close(raw, want_raw, rtol=0, atol=1e-5 * float(std.max()) + 1e-6)


# ------------------------------------------------------------------------------ conversion
@pytest.mark.parametrize("name", list(FAST))
def test_convert_matches_reference(tmp_path, name):
    from revq.convert import DCAE_ID, MARKER_FILE, convert_official
    from revq.model import ReVQ

    tokens, num_code, width, depth = FAST[name]
    rel = make_release(tmp_path / "release", name, tokens, num_code, width, depth)
    out = tmp_path / "converted"
    convert_official(rel["checkpoint"], rel["config"], rel["preprocessor"], out)
    # (the in-memory model equals the saved one: ReVQ's round trip is bit-exact, tested there;
    # the smaller tests below also check the in-memory model)
    assert (out / MARKER_FILE).is_file()
    loaded = ReVQ.from_pretrained(out).eval()
    cfg = loaded.config
    assert cfg.num_tokens == tokens and cfg.codebook_size == num_code
    assert cfg.split == "channel" and cfg.normalization == "element"
    assert cfg.rectifier.kind == "efficientvit" and cfg.rectifier.residual is False
    assert (cfg.rectifier.width, cfg.rectifier.depth) == (width, depth)
    assert cfg.autoencoder.name == DCAE_ID
    assert cfg.autoencoder.resolution == 256 and tuple(cfg.autoencoder.latent_shape) == LATENT
    # codebooks verbatim, in the authors' (T, N, d) layout
    assert torch.equal(loaded.quantizer.codebooks.detach(), rel["emb"])
    check_equivalence(loaded, rel)


@pytest.mark.slow
def test_convert_256T_B_true_width(tmp_path):
    from revq.convert import convert_official

    rel = make_release(tmp_path / "release", "256T_NC=65536", 256, N_SMALL, 1024, 4)
    model = convert_official(rel["checkpoint"], rel["config"], rel["preprocessor"], tmp_path / "out")
    n_params = sum(p.numel() for p in rel["decoder"].parameters())
    assert abs(n_params / 1e6 - 72.97) < 0.01
    check_equivalence(model.eval(), rel)


def test_other_autoencoder_identity_unscaled(tmp_path, small_release):
    from revq.convert import convert_official

    model = convert_official(
        small_release["checkpoint"], small_release["config"], small_release["preprocessor"],
        autoencoder="/models/my-dc-ae", resolution=256,
    )
    assert model.config.autoencoder.name == "/models/my-dc-ae"
    check_equivalence(model.eval(), small_release, scale=1.0)


def test_config_parser_reads_released_schema(tmp_path):
    from revq.convert import build_config, parse_official_config

    rel_cfg = tmp_path / "512T_NC=16384.yaml"
    rel_cfg.write_text(
        YAML_TEMPLATE.format(name="512T_NC=16384", num_code=16384, num_group=512, tokens=512, width=512, depth=3)
    )
    cfg = parse_official_config(rel_cfg)
    assert (cfg.num_tokens, cfg.codebook_size, cfg.width, cfg.depth, cfg.token_dim) == (512, 16384, 512, 3, 4)
    ours = build_config(cfg)
    assert ours.bits_per_image == 512 * 14
    # only the model section, scalars instead of one-element lists
    cfg2 = parse_official_config(
        {"quantizer": {"num_code": 65536, "num_group": 256, "tokens_per_data": 256},
         "decoder": {"block_out_channels": 1024, "layers_per_block": 4}}
    )
    assert (cfg2.num_tokens, cfg2.codebook_size, cfg2.width, cfg2.depth, cfg2.token_dim) == (256, 65536, 1024, 4, 8)


# ------------------------------------------------------------------------------ refusals
@pytest.fixture(scope="module")
def small_release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("small"), "256T_small", 256, 16, 64, 1, seed=3)


def _convert(rel, **override):
    from revq.convert import convert_official

    paths = {k: rel[k] for k in ("checkpoint", "config", "preprocessor")}
    paths.update(override)
    return convert_official(paths["checkpoint"], paths["config"], paths["preprocessor"])


def test_small_release_converts(small_release):
    check_equivalence(_convert(small_release).eval(), small_release)


def test_truncated_checkpoint(tmp_path, small_release):
    data = small_release["checkpoint"].read_bytes()
    bad = tmp_path / "ckpt.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(RevqError, match=r"(?s)cannot read checkpoint .*ckpt\.pth.*truncated"):
        _convert(small_release, checkpoint=bad)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(RevqError, match="empty"):
        _convert(small_release, preprocessor=empty)
    with pytest.raises(MissingResourceError, match="not found"):
        _convert(small_release, checkpoint=tmp_path / "nope.pth")


def test_pickled_objects_refused(tmp_path, small_release):
    ckpt = torch.load(small_release["checkpoint"], weights_only=True)
    ckpt["extra"] = Path("x")  # a non-tensor object: weights_only refuses to unpickle it
    bad = tmp_path / "ckpt.pth"
    torch.save(ckpt, bad)
    with pytest.raises(RevqError, match="Python objects"):
        _convert(small_release, checkpoint=bad)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda c: c["quantizer"].__setitem__("embedding", c["quantizer"].pop("embeddings")), "'embeddings'"),
        (lambda c: c.pop("decoder"), "missing key.*decoder"),
        (lambda c: c["decoder"].pop("norm_out.bias"), r"missing decoder keys \['norm_out.bias'\]"),
        (lambda c: c["decoder"].__setitem__("conv_out.extra", torch.zeros(1)), "unexpected decoder keys"),
        (lambda c: c["decoder"].__setitem__("conv_out.bias", torch.zeros(7)), r"wrong shapes: conv_out.bias \(7,\)"),
        (lambda c: c["quantizer"].__setitem__("index_offset", torch.zeros(256, dtype=torch.long)), "index_offset"),
        (lambda c: c["quantizer"].__setitem__("count", torch.zeros(3)), "quantizer.count has shape"),
        (lambda c: c["quantizer"]["embeddings"].__setitem__((0, 0, 0), float("nan")), "NaN"),
    ],
    ids=["renamed-embeddings", "no-decoder", "missing-norm", "extra-key", "bad-shape", "offset", "count", "nan"],
)
def test_wrong_keys_refused(tmp_path, small_release, mutate, pattern):
    ckpt = torch.load(small_release["checkpoint"], weights_only=True)
    mutate(ckpt)
    bad = tmp_path / "ckpt.pth"
    torch.save(ckpt, bad)
    with pytest.raises(RevqError, match=pattern):
        _convert(small_release, checkpoint=bad)


def test_ddp_prefix_accepted(tmp_path, small_release):
    ckpt = torch.load(small_release["checkpoint"], weights_only=True)
    ckpt["decoder"] = {"module." + k: v for k, v in ckpt["decoder"].items()}
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    check_equivalence(_convert(small_release, checkpoint=path).eval(), small_release)


@pytest.mark.parametrize(
    "fields, pattern",
    [
        (dict(num_code=32), r"codebook size: config num_code=32, checkpoint embeddings have 16"),
        (dict(num_group=128, tokens=128), r"tokens: config tokens_per_data/num_group=128.*256"),
        (dict(width=128), r"rectifier width: config block_out_channels=\[128\].*64"),
        (dict(depth=2), r"rectifier depth: config layers_per_block=\[2\].*1 blocks"),
        (dict(num_group=128), r"num_group=128 differs from tokens_per_data=256"),
        (dict(tokens=300, num_group=300), "does not divide"),
    ],
)
def test_mismatched_config_refused(tmp_path, small_release, fields, pattern):
    values = dict(name="x", num_code=16, num_group=256, tokens=256, width=64, depth=1)
    values.update(fields)
    cfg = tmp_path / "x.yaml"
    cfg.write_text(YAML_TEMPLATE.format(**values))
    with pytest.raises(RevqError, match=pattern):
        _convert(small_release, config=cfg)


def test_unsupported_or_broken_config(tmp_path, small_release):
    text = small_release["config"].read_text()
    cases = {
        "multistage.yaml": (text.replace("block_out_channels: [64]", "block_out_channels: [64, 128]"), "single-stage"),
        "mlp.yaml": (text.replace("TYPE: dc_ae", "TYPE: mlp"), "'mlp' is not supported"),
        "noq.yaml": ("model:\n  decoder: {}\n", "no model.quantizer"),
        "bad.yaml": ("model: [unclosed\n", "not a readable YAML"),
    }
    for fname, (content, pattern) in cases.items():
        path = tmp_path / fname
        path.write_text(content)
        with pytest.raises(RevqError, match=pattern):
            _convert(small_release, config=path)


def test_bad_preprocessor(tmp_path, small_release):
    cases = {
        "shape": ({"mean": torch.zeros(1024), "std": torch.ones(1024)}, r"mean has shape \(1024,\), expected \(2048,\)"),
        "keys": ({"mu": torch.zeros(2048), "std": torch.ones(2048)}, r"missing key\(s\) \['mean'\]"),
        "std": ({"mean": torch.zeros(2048), "std": torch.zeros(2048)}, "non-positive"),
    }
    for fname, (sd, pattern) in cases.items():
        path = tmp_path / f"{fname}.pth"
        torch.save(sd, path)
        with pytest.raises(RevqError, match=pattern):
            _convert(small_release, preprocessor=path)


# ------------------------------------------------------------------------------ CLI
def test_cli_convert_official(tmp_path, small_release, capsys):
    from revq.cli import main
    from revq.model import ReVQ

    out = tmp_path / "cli-out"
    argv = [
        "convert-official",
        "--checkpoint", str(small_release["checkpoint"]),
        "--config", str(small_release["config"]),
        "--preprocessor", str(small_release["preprocessor"]),
        "--out", str(out),
    ]
    assert main(argv) == 0
    check_equivalence(ReVQ.from_pretrained(out).eval(), small_release)

    bad = tmp_path / "trunc.pth"
    bad.write_bytes(small_release["checkpoint"].read_bytes()[:100])
    argv[2] = str(bad)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "revq convert-official: error:" in err and "trunc.pth" in err
    assert main(["convert-official", "--checkpoint", "x.pth"]) == 2
    assert "--config" in capsys.readouterr().err


# ------------------------------------------------------------------------------ hub
def test_hub_offline_message(tmp_path, monkeypatch):
    from revq.convert import convert_from_hub

    monkeypatch.setenv("REVQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingResourceError) as info:
        convert_from_hub("AndyRaoTHU/revq-512T")
    msg = str(info.value)
    for needle in ("ckpt.pth", "512T_NC=16384.yaml", "preprocessor.pth", "revq convert-official", "--out",
                   "https://huggingface.co/AndyRaoTHU/revq-512T", str(tmp_path / "cache")):
        assert needle in msg, needle
    with pytest.raises(RevqError, match="not a known official"):
        convert_from_hub("someone/else")


def test_hub_download_and_reuse(tmp_path, monkeypatch):
    """The online path with huggingface_hub's download replaced by a local copy."""
    import shutil

    import huggingface_hub

    from revq import convert

    rel = make_release(tmp_path / "hub", "256T_NC=65536", 256, 16, 64, 1, seed=5)
    served = {"ckpt.pth": rel["checkpoint"], "256T_NC=65536.yaml": rel["config"], "preprocessor.pth": rel["preprocessor"]}
    calls = []

    def fake_download(repo_id, filename, local_dir=None, local_files_only=False, **kw):
        calls.append((repo_id, filename))
        assert repo_id == "AndyRaoTHU/revq-256T-B"
        target = Path(local_dir) / filename
        shutil.copyfile(served[filename], target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("REVQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = convert.convert_from_hub("AndyRaoTHU/revq-256T-B")
    assert out == tmp_path / "cache" / "official" / "AndyRaoTHU--revq-256T-B" / "model"
    assert sorted(f for _, f in calls) == sorted(served)
    from revq.model import ReVQ

    check_equivalence(ReVQ.from_pretrained(out).eval(), rel)
    # second call: already converted, nothing downloaded
    calls.clear()
    assert convert.convert_from_hub("AndyRaoTHU/revq-256T-B") == out
    assert calls == []
    # files copied in by hand (no network) are used as they are
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert convert.convert_from_hub("AndyRaoTHU/revq-256T-B", force=True) == out
    assert calls == []


def test_register_converters():
    from revq.convert import OFFICIAL_RELEASES, register_converters

    hooks = register_converters({})
    assert set(hooks) == set(OFFICIAL_RELEASES) == {
        "AndyRaoTHU/revq-512T", "AndyRaoTHU/revq-256T-B", "AndyRaoTHU/revq-256T-L"
    }
    assert all(callable(fn) for fn in hooks.values())


def test_tokenizer_hub_hook(tmp_path, monkeypatch):
    """Tokenizer.from_pretrained's hub path: snapshot download, then the registered converter."""
    import huggingface_hub

    tokenizer = pytest.importorskip("revq.tokenizer")
    if not hasattr(tokenizer, "resolve_model_dir"):
        pytest.skip("revq.tokenizer has no resolve_model_dir")
    import revq.convert  # noqa: F401  (registers the official ids)

    assert "AndyRaoTHU/revq-256T-L" in tokenizer.KNOWN_CONVERTERS
    snapshot = tmp_path / "snapshot"
    rel = make_release(snapshot, "256T_NC=262144", 256, 16, 64, 1, seed=7)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(snapshot))

    def fake_download(repo_id, filename, local_dir=None, **kw):  # if the tokenizer asks per file
        import shutil

        target = Path(local_dir) / filename
        shutil.copyfile(snapshot / filename, target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("REVQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tokenizer.resolve_model_dir("AndyRaoTHU/revq-256T-L")
    assert str(out).startswith(str(tmp_path / "cache"))
    from revq.model import ReVQ

    check_equivalence(ReVQ.from_pretrained(out).eval(), rel)

    # a snapshot without preprocessor.pth while offline: the message names the files and command
    (snapshot / "preprocessor.pth").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REVQ_CACHE_DIR", str(tmp_path / "empty-cache"))  # nothing downloaded before
    from revq.convert import convert_snapshot

    with pytest.raises(MissingResourceError, match=r"(?s)preprocessor\.pth.*revq convert-official"):
        convert_snapshot(snapshot, tmp_path / "x", repo_id="AndyRaoTHU/revq-256T-L")


# ------------------------------------------------------------------------------ end to end
def test_tokenizer_end_to_end_with_dcae_backend(tmp_path, small_release):
    """Images -> our Tokenizer (our diffusers DC-AE backend) == the authors' image pipeline.

    A tiny random ``AutoencoderDC`` stands in for DC-AE (f32, 32 latent channels) with the real
    model's ``scaling_factor``: this pins the latent-scale convention between revq's backend
    (scaled latents) and the authors' code (raw ``vae.encode(x).latent``).
    """
    from diffusers import AutoencoderDC

    from revq.autoencoders.diffusers_backend import DiffusersAutoencoder
    from revq.convert import DCAE_ID, DCAE_SCALING_FACTOR, convert_official
    from revq.tokenizer import Tokenizer

    torch.manual_seed(0)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=32, encoder_block_types="ResBlock", decoder_block_types="ResBlock",
        encoder_block_out_channels=(8, 8, 16, 16, 32, 32), decoder_block_out_channels=(8, 8, 16, 16, 32, 32),
        encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6,
        encoder_qkv_multiscales=((),) * 6, decoder_qkv_multiscales=((),) * 6,
        upsample_block_type="interpolate", downsample_block_type="Conv",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=DCAE_SCALING_FACTOR,
    ).eval()
    ae = DiffusersAutoencoder(vae, name=DCAE_ID).freeze()
    out = tmp_path / "model"
    rel = small_release
    convert_official(rel["checkpoint"], rel["config"], rel["preprocessor"], out)
    tok = Tokenizer.from_pretrained(out, autoencoder=ae)
    assert tok.resolution == 256

    images = torch.rand(2, 3, 256, 256)
    tokens = tok.encode(images)
    with torch.no_grad():  # the authors' pipeline (their eval script), on the raw latent
        raw = vae.encode(images * 2 - 1).latent
        want = reference_tokens(raw, rel)
        assert torch.equal(tokens, want)
        _, lat = reference_decode(want, rel)
        want_images = ((vae.decode(lat).sample + 1) / 2).clamp(0, 1)
        got_images = tok.decode(tokens)
    torch.testing.assert_close(got_images, want_images, rtol=0, atol=1e-4)
