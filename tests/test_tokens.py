"""Token export: packing, manifest, flips, kill-and-resume equals uninterrupted, reader, CLIs."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import _eval_helpers as H
from revq.cli import main
from revq.errors import RevqError
from revq.tokens import TokenShards, export_tokens, token_dtype

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def tok():
    return H.tiny_tokenizer()


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_export_packs_every_image(tok, tmp_path):
    items = H.source(23)
    manifest = export_tokens(tok, items, tmp_path / "t", model_id="tiny", sources=["mem"], shard_size=10,
                             batch_size=4, progress=False)
    assert manifest["complete"] and manifest["num_images"] == 23 and manifest["token_count"] == 23 * 48
    assert manifest["dtype"] == "uint16" and manifest["model_id"] == "tiny" and manifest["sources"] == ["mem"]
    assert manifest["labels"] == {"present": True, "num_classes": 3, "unlabelled": 0}
    assert [s["count"] for s in manifest["shards"]] == [10, 10, 3]
    shards = TokenShards(tmp_path / "t")
    assert len(shards) == 23 and shards.shard(0).dtype == np.uint16
    x = torch.stack([im for _, im, _ in items])
    assert np.array_equal(shards.tokens().astype(np.int64), tok.encode(x).numpy())
    assert np.array_equal(shards[17].astype(np.int64), tok.encode(x[17]).numpy())
    assert shards.labels.tolist() == [i % 3 for i in range(23)]
    assert shards.keys == [k for k, _, _ in items]
    # a finished export is left alone; other settings in the same folder are refused
    assert export_tokens(tok, items, tmp_path / "t", model_id="tiny", sources=["mem"], shard_size=10,
                         progress=False)["complete"]
    with pytest.raises(RevqError, match="other settings"):
        export_tokens(tok, items, tmp_path / "t", model_id="tiny", shard_size=7, progress=False)


def test_flip_augmentation(tok, tmp_path):
    items = H.source(5, seed=2, labelled=False)
    manifest = export_tokens(tok, items, tmp_path / "t", model_id="tiny", flip=True, shard_size=4, progress=False)
    shards = TokenShards(tmp_path / "t")
    assert manifest["num_images"] == 10 and manifest["labels"]["present"] is False
    assert shards.keys[:4] == ["img0000", "img0000#flip", "img0001", "img0001#flip"]
    x = torch.stack([im for _, im, _ in items])
    both = torch.stack([x, x.flip(-1)], 1).reshape(10, 3, H.RES, H.RES)
    assert np.array_equal(shards.tokens().astype(np.int64), tok.encode(both).numpy())


def test_large_codebooks_use_int32(tmp_path):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.int32
    big = H.tiny_tokenizer(codebook_size=65537, num_tokens=4, split="single")
    manifest = export_tokens(big, H.source(3), tmp_path / "t", model_id="big", progress=False)
    assert manifest["dtype"] == "int32"
    shards = TokenShards(tmp_path / "t")
    assert shards.shard(0).dtype == np.int32
    assert np.array_equal(shards.tokens(), big.encode(H.images(3)).numpy())


_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    import _eval_helpers as H
    from revq.tokens import export_tokens

    delay = float(sys.argv[2])

    def slow_source():
        for item in H.source(30, seed=5):
            time.sleep(delay)
            yield item

    tok = H.tiny_tokenizer()
    export_tokens(tok, slow_source(), sys.argv[1], model_id="tiny", flip=True, shard_size=6, batch_size=4,
                  progress=False)
    """
)


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "export.py"
    script.write_text(_SCRIPT.format(tests=str(TESTS)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "0.05"], env=env)
    manifest = killed / "manifest.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("export finished before it could be killed")
            time.sleep(0.02)
        else:
            pytest.fail("export made no progress")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = json.loads(manifest.read_text())
    assert not partial["complete"] and 2 <= len(partial["shards"]) < 10
    # resume (in this process: the same deterministic tokenizer and source) and compare
    def run(out):
        export_tokens(H.tiny_tokenizer(), H.source(30, seed=5), out, model_id="tiny", flip=True, shard_size=6,
                      batch_size=4, progress=False)

    run(killed)
    whole = tmp_path / "whole"
    run(whole)
    assert _files(killed) == _files(whole)
    assert len(TokenShards(whole)) == 60


def _write_images(folder, n, seed=0):
    folder.mkdir(parents=True)
    for key, im, _ in H.source(n, seed):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(folder / f"{key}.png")
    return folder


def test_cli_tokenize_and_detokenize(tok, tmp_path, capsys, monkeypatch):
    from revq.autoencoders import REGISTRY

    monkeypatch.setitem(REGISTRY, H.UnshuffleAE.name, "_eval_helpers:UnshuffleAE.load")
    tok.save_pretrained(tmp_path / "model")
    data = _write_images(tmp_path / "imgs", 7)
    rc = main(["tokenize", "--model", str(tmp_path / "model"), "--data", str(data), "--out", str(tmp_path / "tok"),
               "--shard-size", "4", "--flip", "--no-progress"])
    assert rc == 0 and "14 images" in capsys.readouterr().out
    shards = TokenShards(tmp_path / "tok")
    assert len(shards) == 14 and shards.num_shards == 4 and shards.manifest["model_id"] == str(tmp_path / "model")
    rc = main(["detokenize", "--model", str(tmp_path / "model"), "--tokens", str(tmp_path / "tok"), "--shard", "1",
               "--out", str(tmp_path / "back")])
    assert rc == 0
    pngs = sorted((tmp_path / "back").glob("*.png"))
    assert len(pngs) == 4 and "img0002" in pngs[0].name
    decoded = tok.decode(torch.from_numpy(shards.shard(1).astype(np.int64)))
    with Image.open(pngs[0]) as im:
        got = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    assert torch.allclose(got, torch.round(decoded[0] * 255) / 255, atol=1e-6)
    rc = main(["detokenize", "--model", str(tmp_path / "model"), "--tokens", str(tmp_path / "tok" / "tokens-00000.npy"),
               "--out", str(tmp_path / "back0"), "--limit", "2"])
    assert rc == 0 and len(list((tmp_path / "back0").glob("*.png"))) == 2
