"""``revq train`` / ``revq plan`` from the command line, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _train_helpers import run_cli, synthetic_latents, tiny_config, write_cache
from revq.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    write_cache(root / "train", synthetic_latents(256))
    write_cache(root / "val", synthetic_latents(64, seed=1))
    write_cache(root / "taef2", synthetic_latents(256), autoencoder="taef2")
    cfg = tiny_config(epochs=3, checkpoint_every_steps=5, log_every_steps=1)
    cfg.to_json(root / "tiny.json")
    return root


def test_help():
    r = run_cli(["train", "--help"])
    assert r.returncode == 0 and "--preset" in r.stdout and "--resume" in r.stdout and "cpu-512t" in r.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "nope"], "unknown preset"),
        (["--preset", "cpu-512t"], "made by autoencoder 'synthetic'"),
        (["--config", "{root}/tiny.json", "--set", "model.num_tokens=3"], "valid token counts"),
        (["--config", "{root}/tiny.json", "--set", "model.codebook_size=4096"], "larger than the 256 training sub-vectors"),
        (["--config", "{root}/tiny.json", "--set", "model.autoencoder.name=taef2"], "--set model.autoencoder.name=synthetic"),
        (["--config", "{root}/tiny.json", "--set", "bogus=1"], "unknown config key"),
        (["--config", "{root}/tiny.json", "--resume"], "no checkpoint to resume"),
        ([], "choose a preset"),
    ],
)
def test_user_mistakes_exit_2_with_message(data, tmp_path, capsys, extra, message):
    args = ["train", "--latents", str(data / "train"), "--out", str(tmp_path / "run")]
    args += [a.replace("{root}", str(data)) for a in extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_cache_and_missing_stats(data, tmp_path, capsys):
    assert main(["train", "--config", str(data / "tiny.json"), "--latents", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "run")]) == 2
    assert "does not exist" in capsys.readouterr().err
    import shutil

    broken = tmp_path / "nostats"
    shutil.copytree(data / "train", broken)
    (broken / "stats.safetensors").unlink()
    assert main(["train", "--config", str(data / "tiny.json"), "--latents", str(broken), "--out", str(tmp_path / "run")]) == 2
    assert "statistics" in capsys.readouterr().err


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def test_sigkill_at_arbitrary_moment_then_resume_is_bit_identical(data, tmp_path):
    """(a) A real training subprocess is SIGKILLed at a random step, resumed, and ends with
    exactly the weights of an uninterrupted run with the same seed."""
    base = ["train", "--config", str(data / "tiny.json"), "--latents", str(data / "train"),
            "--val-latents", str(data / "val"), "--seed", "7", "--no-progress"]
    ref = run_cli(base + ["--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr
    total_steps = 3 * (256 // 32)

    run = tmp_path / "killed"
    kill_at = random.Random().randint(1, total_steps - 1)  # arbitrary step (reported on failure)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "revq", *base, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists():
            steps = [json.loads(l).get("step", 0) for l in metrics.read_text().splitlines() if l.strip()]
            if steps and max(steps) >= kill_at:
                break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill at step {kill_at}: {proc.stderr.read()}"
    assert not (run / "model").exists()

    resumed = run_cli(base + ["--out", str(run)])  # a run dir with checkpoints resumes by itself
    assert resumed.returncode == 0, resumed.stderr
    a, b = _final_weights(tmp_path / "ref"), _final_weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after kill at step {kill_at}"
    # and a second --resume of a finished run is a no-op that keeps the model
    again = run_cli(["train", "--out", str(run), "--resume", "--no-progress"])
    assert again.returncode == 0, again.stderr
    assert all(torch.equal(a[k], v) for k, v in _final_weights(run).items())


def test_demo_without_data_says_what_to_get(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REVQ_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["demo", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "Tiny-ImageNet-64 images not found" in err and "REVQ_DATA_DIR" in err and "tiny-imagenet-200.zip" in err


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path):
    from revq.paths import tiny_imagenet_dir

    if tiny_imagenet_dir() is None:
        pytest.skip("no Tiny-ImageNet shards (../shared/data or REVQ_DATA_DIR)")
    r = run_cli(["demo", "--out", str(tmp_path / "demo"), "--num-train", "1100", "--num-val", "40",
                 "--epochs", "1", "--no-progress"], timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert summary["eval"]["num_images"] == 40 and summary["eval"]["psnr"] > 15
    for name in ("report.html", "reconstructions.png", "eval.json", "metrics.jsonl", "model/model.safetensors"):
        assert (tmp_path / "demo" / "run" / name).exists(), name
