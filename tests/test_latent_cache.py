"""Latent cache: store layout, statistics, deterministic + resumable encoding, reading, sampling."""

from __future__ import annotations

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
import torch.nn.functional as F
from PIL import Image

from revq import paths
from revq.autoencoders.base import Autoencoder
from revq.data.images import open_image_source
from revq.data.latent_cache import EpochSampler, LatentBatches, LatentCache, Moments, encode_to_cache
from revq.errors import MissingResourceError, RevqError

R = 16


class PoolAE(Autoencoder):
    """Fast deterministic stand-in: 4x4 average pool + a fixed 1x1 conv to 4 channels."""

    name = "pool-test"
    latent_channels = 4
    downsample = 4

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(4, 3, 1, 1, generator=g))
            self.proj.bias.copy_(torch.randn(4, generator=g))
        self.freeze()

    def _encode(self, images):
        return self.proj(F.avg_pool2d(images, 4))

    def _decode(self, latents):
        return F.interpolate(latents[:, :3], scale_factor=4)


def make_folder(root: Path, n: int = 45, classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        size = (R + int(rng.integers(0, 8)), R + int(rng.integers(0, 8)))
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    (root / "c0" / "999_bad.png").write_bytes(b"not an image")  # skipped, must not break resume
    return root


def encode(data, out, *, flip=False, limit=None, workers=0, on_batch=None, shard_size=8, batch_size=4):
    source = open_image_source(data, resolution=R, flip=flip, limit=limit)
    return encode_to_cache(
        source, PoolAE(), out, batch_size=batch_size, shard_size=shard_size,
        workers=workers, progress=False, on_batch=on_batch,
    )


def assert_same_store(a: Path, b: Path) -> None:
    ca, cb = LatentCache(a), LatentCache(b)
    assert len(ca) == len(cb)
    np.testing.assert_array_equal(ca.all().numpy(), cb.all().numpy())
    np.testing.assert_array_equal(ca.labels, cb.labels)
    assert ca.keys == cb.keys and len(set(ca.keys)) == len(ca.keys)
    for key in ca.stats:
        torch.testing.assert_close(ca.stats[key], cb.stats[key], rtol=1e-6, atol=1e-7)
    ma, mb = ca.manifest, cb.manifest
    assert ma == mb
    assert json.loads((a / "skipped.json").read_text()) == json.loads((b / "skipped.json").read_text())


# ---------------------------------------------------------------------- layout and stats
def test_store_layout_manifest_and_reader(tmp_path):
    data = make_folder(tmp_path / "imgs")
    cache = encode(data, tmp_path / "cache")
    assert len(cache) == 45 and cache.latent_shape == (4, 4, 4)
    m = cache.manifest
    assert m["autoencoder"] == "pool-test" and m["resolution"] == R and m["dtype"] == "float32" and m["count"] == 45
    assert [s["count"] for s in m["shards"]] == [8] * 5 + [5]
    assert m["labels"]["class_names"] == ["c0", "c1", "c2"] and m["skipped"]["count"] == 1
    assert m["sources"][0]["path"] == str(data.resolve())
    assert not (tmp_path / "cache" / "progress.json").exists()
    shard = cache.shard(0)
    assert isinstance(shard, np.memmap) and shard.shape == (8, 4, 4, 4)
    # latents equal a direct encode of the same images in the same order
    source = open_image_source(data, resolution=R)
    items = list(source)
    direct = PoolAE().encode(torch.stack([im for _, im, _ in items]))
    torch.testing.assert_close(cache.all(), direct, rtol=1e-5, atol=1e-6)
    assert cache.keys == [k for k, _, _ in items]
    np.testing.assert_array_equal(cache.labels, [lab for _, _, lab in items])
    # random access in any order, with negative indices
    idx = [44, 3, 17, 3, -1]
    torch.testing.assert_close(cache.get(idx), direct[[44, 3, 17, 3, 44]])
    torch.testing.assert_close(cache[9], direct[9])
    with pytest.raises(IndexError):
        cache.get([45])
    import pickle

    clone = pickle.loads(pickle.dumps(cache))  # e.g. into a spawned DataLoader worker
    assert all(s is None for s in clone._shards) and len(pickle.dumps(cache)) < 10_000
    torch.testing.assert_close(clone.get([5, 1]), direct[[5, 1]])


def test_stats_equal_direct_numpy_computation(tmp_path):
    cache = encode(make_folder(tmp_path / "imgs"), tmp_path / "cache")
    x = cache.all().numpy().astype(np.float64)  # (N,C,H,W)
    s = {k: v.numpy() for k, v in cache.stats.items()}
    np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["channel_mean"], x.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["channel_std"], x.std((0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["global_mean"], x.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["global_std"], x.std(), rtol=1e-5, atol=1e-6)
    assert s["mean"].shape == (4, 4, 4) and s["channel_std"].shape == (4,) and s["global_std"].shape == ()


def test_streaming_moments_are_stable_with_a_large_offset():
    rng = np.random.default_rng(0)
    x = (1e6 + rng.standard_normal((5000, 2, 3, 3))).astype(np.float32)
    total = Moments.empty((2, 3, 3))
    for start in range(0, 5000, 333):  # uneven chunks
        total = total.merge(Moments.of(x[start : start + 333], chunk=100))
    stats = total.summary()
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(stats["std"].numpy(), x64.std(0), rtol=1e-4)
    np.testing.assert_allclose(stats["channel_std"].numpy(), x64.std((0, 2, 3)), rtol=1e-4)
    assert total.count == 5000


# ---------------------------------------------------------------------- determinism and resume
def test_workers_give_the_same_store(tmp_path):
    data = make_folder(tmp_path / "imgs")
    encode(data, tmp_path / "a", workers=0)
    encode(data, tmp_path / "b", workers=2)
    assert_same_store(tmp_path / "a", tmp_path / "b")


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_at", [8, 12, 30], ids=["shard-boundary", "mid-shard", "later"])
@pytest.mark.parametrize("flip", [False, True], ids=["plain", "flip"])
def test_interrupted_encode_resumes_to_the_same_store(tmp_path, stop_at, flip):
    data = make_folder(tmp_path / "imgs")
    encode(data, tmp_path / "full", flip=flip, limit=40, shard_size=7 if flip else 8)

    def stop(done):
        if done >= stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        encode(data, tmp_path / "resumed", flip=flip, limit=40, shard_size=7 if flip else 8, on_batch=stop)
    assert (tmp_path / "resumed" / "progress.json").exists()
    with pytest.raises(MissingResourceError, match="unfinished"):
        LatentCache(tmp_path / "resumed")
    cache = encode(data, tmp_path / "resumed", flip=flip, limit=40, shard_size=7 if flip else 8)
    assert len(cache) == (80 if flip else 40)
    assert_same_store(tmp_path / "full", tmp_path / "resumed")
    # running the finished command again is a no-op; other settings are refused
    encode(data, tmp_path / "resumed", flip=flip, limit=40, shard_size=7 if flip else 8)
    with pytest.raises(RevqError, match="different settings"):
        encode(data, tmp_path / "resumed", flip=not flip, limit=40)


def test_resume_with_different_settings_is_refused(tmp_path):
    data = make_folder(tmp_path / "imgs")

    def stop(done):
        if done >= 12:
            raise Interrupt

    with pytest.raises(Interrupt):
        encode(data, tmp_path / "c", on_batch=stop)
    with pytest.raises(RevqError, match="unfinished encode with different settings"):
        encode(data, tmp_path / "c", shard_size=16)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from test_latent_cache import encode

    def slow(done):
        time.sleep(0.15)  # leave time for the parent to kill us mid-way

    encode({data!r}, {out!r}, on_batch=slow)
    """
)


def test_sigkill_mid_encode_then_resume(tmp_path):
    data = make_folder(tmp_path / "imgs")
    out = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), data=str(data), out=str(out))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            progress = out / "progress.json"
            if progress.exists() and len(json.loads(progress.read_text())["shards"]) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail(f"encoder exited before it could be killed (rc {proc.returncode})")
            time.sleep(0.02)
        else:
            pytest.fail("encoder made no progress")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    encode(data, out)
    encode(data, tmp_path / "full")
    assert_same_store(tmp_path / "full", out)


# ---------------------------------------------------------------------- sampling
def test_epoch_sampler_shards_ranks_disjointly_and_reshuffles():
    n, bs, world = 103, 8, 4
    samplers = [EpochSampler(n, bs, seed=1, epoch=0, rank=r, world_size=world) for r in range(world)]
    batches = [list(s) for s in samplers]
    assert {len(b) for b in batches} == {len(samplers[0])} == {25 // 8}
    seen = np.concatenate([np.concatenate(b) for b in batches])
    assert len(seen) == len(set(seen.tolist()))  # disjoint across ranks
    all_idx = np.concatenate([s.indices() for s in samplers])
    assert len(all_idx) == 100 and len(set(all_idx.tolist())) == 100
    again = [list(EpochSampler(n, bs, seed=1, epoch=0, rank=r, world_size=world)) for r in range(world)]
    assert all(np.array_equal(x, y) for a, b in zip(batches, again) for x, y in zip(a, b))
    samplers[0].set_epoch(1)
    assert not np.array_equal(samplers[0].indices(), EpochSampler(n, bs, seed=1, rank=0, world_size=world).indices())
    # drop_last=False pads by wrapping so every rank has the same number of batches
    padded = [EpochSampler(n, bs, seed=1, rank=r, world_size=world, drop_last=False) for r in range(world)]
    assert {len(list(s)) for s in padded} == {4}
    covered = set(np.concatenate([s.indices() for s in padded]).tolist())
    assert covered == set(range(n))
    with pytest.raises(RevqError):
        EpochSampler(n, bs, rank=4, world_size=4)


def test_latent_batches_read_through_the_cache(tmp_path):
    cache = encode(make_folder(tmp_path / "imgs"), tmp_path / "cache")
    batches = LatentBatches(cache, 10, seed=3, with_labels=True)
    out = list(batches)
    assert len(out) == len(batches) == 4
    latents, labels = out[0]
    idx = EpochSampler(45, 10, seed=3).indices()[:10]
    torch.testing.assert_close(latents, cache.get(idx))
    np.testing.assert_array_equal(labels.numpy(), cache.labels[idx])


# ---------------------------------------------------------------------- CLI and real TAEF2
WEIGHTS = paths.weights_dir()
DATA = paths.tiny_imagenet_dir()


@pytest.mark.skipif(
    WEIGHTS is None or not (WEIGHTS / "taef2_encoder.pth").is_file() or DATA is None,
    reason="needs ../shared (TAEF2 weights and Tiny-ImageNet shards)",
)
def test_cli_encode_tiny_imagenet_with_taef2(tmp_path, capsys):
    from revq.cli import main

    out = tmp_path / "tin"
    rc = main(["encode", "--vae", "taef2", "--data", str(DATA / "val-000000.tar.gz"), "--resolution", "64",
               "--out", str(out), "--limit", "48", "--batch-size", "16", "--workers", "1", "--no-progress"])
    assert rc == 0
    cache = LatentCache(out)
    assert len(cache) == 48 and cache.latent_shape == (32, 8, 8) and cache.manifest["autoencoder"] == "taef2"
    assert cache.labels.min() >= 0 and "48 latents" in capsys.readouterr().out
    assert 0.5 < float(cache.stats["global_std"]) < 1.5


def test_cli_reports_user_errors(tmp_path, capsys):
    from revq.cli import main

    rc = main(["encode", "--data", str(tmp_path / "missing"), "--resolution", "64", "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
