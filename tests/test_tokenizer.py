"""Tokenizer API: encode/decode contracts, id vocabularies, save/load, hub hooks (offline)."""

import shutil

import pytest
import torch

import _eval_helpers as H
from revq.errors import MissingResourceError, RevqError
from revq import tokenizer as T


@pytest.fixture
def fake_registry(monkeypatch):
    from revq.autoencoders import REGISTRY

    monkeypatch.setitem(REGISTRY, H.UnshuffleAE.name, "_eval_helpers:UnshuffleAE.load")


@pytest.fixture(scope="module")
def tok():
    return H.tiny_tokenizer()


def test_encode_decode_match_the_pipeline(tok):
    x = H.images(6)
    tokens = tok.encode(x)
    assert tokens.shape == (6, 48) and tokens.dtype == torch.int64
    assert 0 <= tokens.min() and tokens.max() < tok.codebook_size
    assert torch.equal(tokens, tok.model.tokenize(tok.autoencoder.encode(x)))
    images = tok.decode(tokens)
    assert images.shape == (6, 3, H.RES, H.RES) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    expected = tok.autoencoder.decode(tok.model.detokenize(tokens))
    assert torch.allclose(images, expected)


def test_any_batch_size_and_input_dtype(tok):
    x = H.images(7, seed=3)
    ref = tok.encode(x)
    assert torch.equal(tok.encode(x[2]), ref[2])  # one image (3, R, R) -> (T,)
    assert torch.equal(tok.encode((x * 255).round().to(torch.uint8)), ref)
    assert torch.equal(tok.encode(x.double()), ref)
    half = tok.encode(x.half())
    assert (half == ref).float().mean() > 0.8  # fp16 input rounding may move a few ties
    chunked = T.Tokenizer(tok.autoencoder, tok.model, batch_size=3)
    assert torch.equal(chunked.encode(x), ref)
    assert torch.allclose(chunked.decode(ref), tok.decode(ref))
    assert tok.encode(x[:0]).shape == (0, 48)
    assert tok.decode(ref[:0]).shape == (0, 3, H.RES, H.RES)
    assert tok.decode(ref[0]).shape == (3, H.RES, H.RES)
    assert tok.decode(ref, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_bad_inputs_are_clear_errors(tok):
    with pytest.raises(RevqError, match="trained at"):
        tok.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(RevqError, match="per-position ids"):
        tok.decode(torch.full((1, 48), tok.codebook_size))
    with pytest.raises(RevqError, match="expected tokens"):
        tok.decode(torch.zeros(1, 5, dtype=torch.long))


def test_global_ids_round_trip(tok):
    tokens = tok.encode(H.images(4))
    g = tok.to_global_ids(tokens)
    assert torch.equal(g[:, 1] - tokens[:, 1], torch.full((4,), tok.codebook_size))
    assert g.max() < tok.vocab_size == 48 * 16
    assert torch.equal(tok.to_local_ids(g), tokens)
    assert torch.equal(T.to_local_ids(T.to_global_ids(tokens, 16), 16), tokens)
    with pytest.raises(ValueError):
        T.to_local_ids(tokens.flip(1) * 0 + 5 * 16, 16)  # id of position 5 at position 0


def test_save_and_load_round_trip(tok, tmp_path, fake_registry):
    path = tok.save_pretrained(tmp_path / "tok")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    info = T.read_tokenizer_info(path)
    assert info["autoencoder"] == H.UnshuffleAE.name and info["num_tokens"] == 48
    loaded = T.Tokenizer.from_pretrained(path)
    x = H.images(5, seed=9)
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.equal(loaded.decode(tok.encode(x)), tok.decode(tok.encode(x)))
    # a bare model directory (RUN_DIR/model of a training run) is a tokenizer directory too
    tok.model.save_pretrained(tmp_path / "model")
    assert torch.equal(T.Tokenizer.from_pretrained(tmp_path / "model").encode(x), tok.encode(x))


def test_load_errors_say_what_is_wrong(tmp_path, monkeypatch):
    with pytest.raises(MissingResourceError, match="neither a model directory"):
        T.Tokenizer.from_pretrained(tmp_path / "does" / "not" / "exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingResourceError, match="no config.json"):
        T.Tokenizer.from_pretrained(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingResourceError, match="Hugging Face Hub"):
        T.Tokenizer.from_pretrained("someone/no-such-revq-model", cache_dir=tmp_path / "hf", local_files_only=True)


def test_push_to_hub_and_load_by_hub_id_offline(tok, tmp_path, monkeypatch, fake_registry):
    """push_to_hub goes through HfApi.create_repo + upload_folder; a fake hub keeps it offline."""
    hub = tmp_path / "hub"
    import huggingface_hub

    calls = []

    def create_repo(self, repo_id, private=None, exist_ok=False, **kw):
        calls.append(("create", repo_id, private))

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, revision=None, **kw):
        shutil.copytree(folder_path, hub / repo_id, dirs_exist_ok=True)
        calls.append(("upload", repo_id, commit_message))
        return "https://huggingface.co/fake/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = tok.push_to_hub("me/my-revq", private=True)
    assert url.endswith("/1") and calls[0] == ("create", "me/my-revq", True) and calls[1][0] == "upload"
    assert (hub / "me/my-revq" / "tokenizer.json").is_file()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(hub / repo_id))
    loaded = T.Tokenizer.from_pretrained("me/my-revq")
    x = H.images(3)
    assert torch.equal(loaded.encode(x), tok.encode(x))


def test_known_converter_hook(tok, tmp_path, monkeypatch, fake_registry):
    import huggingface_hub

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ckpt.pth").write_text("authors' format")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(raw))
    monkeypatch.setenv("REVQ_CACHE_DIR", str(tmp_path / "cache"))
    seen = []

    def convert(snapshot, out):
        seen.append(snapshot)
        tok.model.save_pretrained(out)

    monkeypatch.setitem(T.KNOWN_CONVERTERS, "authors/revq-test", convert)
    first = T.Tokenizer.from_pretrained("authors/revq-test")
    second = T.Tokenizer.from_pretrained("authors/revq-test")  # converted copy is reused
    assert len(seen) == 1 and seen[0] == raw
    x = H.images(2)
    assert torch.equal(first.encode(x), tok.encode(x)) and torch.equal(second.encode(x), tok.encode(x))
    monkeypatch.delitem(T.KNOWN_CONVERTERS, "authors/revq-test")
    with pytest.raises(MissingResourceError, match="no revq config.json"):
        T.Tokenizer.from_pretrained("authors/revq-other")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tok):
    gpu = T.Tokenizer(H.UnshuffleAE().freeze(), H.tiny_model()).to("cuda")
    x = H.images(9, seed=11)
    ref = tok.encode(x)
    tokens = gpu.encode(x)  # CPU images in, tokens on the model's device
    assert tokens.device.type == "cuda"
    assert (tokens.cpu() == ref).float().mean() > 0.95  # GPU float math may flip rare near-ties
    images = gpu.decode(ref)
    assert images.device.type == "cuda"
    assert torch.allclose(images.cpu(), tok.decode(ref), atol=1e-4)
