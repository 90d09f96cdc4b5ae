"""(b) Two CPU processes with gloo through torchrun match one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from _train_helpers import run_cli, synthetic_latents, tiny_config, write_cache
from revq.training import distributed as D


def test_env_detection(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert D.env_world() == (0, 1, 0)
    info = D.setup("cpu")
    assert not info.distributed and info.is_main and info.device.type == "cpu"
    monkeypatch.setenv("RANK", "3"); monkeypatch.setenv("WORLD_SIZE", "4"); monkeypatch.setenv("LOCAL_RANK", "1")
    assert D.env_world() == (3, 4, 1)


@pytest.mark.parametrize("sparse_codebook_adam", [False, True], ids=["dense-adamw", "row-sparse-adamw"])
def test_two_gloo_processes_match_single_process(tmp_path, sparse_codebook_adam):
    write_cache(tmp_path / "train", synthetic_latents(256))
    write_cache(tmp_path / "val", synthetic_latents(64, seed=1))
    cfg = tiny_config(epochs=2, checkpoint_every_steps=0, log_every_steps=4, sparse_codebook_adam=sparse_codebook_adam)
    cfg.to_json(tmp_path / "cfg.json")
    args = ["train", "--config", str(tmp_path / "cfg.json"), "--latents", str(tmp_path / "train"),
            "--val-latents", str(tmp_path / "val"), "--batch-size", "32", "--no-progress"]
    single = run_cli(args + ["--out", str(tmp_path / "single")])
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "revq", *args, "--out", str(tmp_path / "multi")],
        capture_output=True, text=True, env=env, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    a = load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "multi" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key
    # counts summed over ranks -> identical resets; validation sharded then summed -> same metrics
    ea = [json.loads(l) for l in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    eb = [json.loads(l) for l in (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()]
    ea, eb = [e for e in ea if e["type"] == "epoch"], [e for e in eb if e["type"] == "epoch"]
    assert len(ea) == len(eb) == 2
    for x, y in zip(ea, eb):
        assert x["num_reset"] == y["num_reset"] and x["train_usage"] == y["train_usage"]
        assert y["val_latent_mse"] == pytest.approx(x["val_latent_mse"], rel=1e-4)
        assert y["val_usage"] == x["val_usage"]
    # only rank 0 wrote: one metrics line per event, one checkpoint folder
    assert sum(1 for e in eb if e["epoch"] == 1) == 1
