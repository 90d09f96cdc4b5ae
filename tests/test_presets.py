"""Presets: names, round trips, sizes (parameter counts of the paper's configurations)."""

from __future__ import annotations

import json

import pytest

from revq.cli import main
from revq.config import apply_overrides
from revq.errors import ConfigError
from revq.training.config import TrainConfig
from revq.training.planner import plan
from revq.training.presets import get_preset, list_presets

# (tokens, codes per group, rectifier params (issue 2 / authors' sizes), batch)
PAPER = {
    "paper-512t": (512, 16384, 14.07e6, 128),
    "paper-256t-b": (256, 65536, 72.97e6, 256),
    "paper-256t-l": (256, 262144, 18.66e6, 256),
}


def test_registry():
    assert set(list_presets()) == {"paper-512t", "paper-256t-b", "paper-256t-l", "cpu-512t", "cpu-256t"}
    with pytest.raises(ConfigError, match="choose from"):
        get_preset("nope")


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_json_round_trip_and_fresh_copies(name):
    cfg = get_preset(name)
    assert cfg.preset == name
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()
    cfg.model.codebook_size = 7
    assert get_preset(name).model.codebook_size != 7  # presets are not shared objects


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_param_counts(name):
    tokens, codes, rect, batch = PAPER[name]
    cfg = get_preset(name)
    assert (cfg.model.num_tokens, cfg.model.codebook_size, cfg.batch_size) == (tokens, codes, batch)
    p = plan(cfg)
    assert p.params["codebooks"] == tokens * codes * (2048 // tokens)
    assert p.params["rectifier"] == pytest.approx(rect, rel=2e-3)
    # 256 x 262144 x 8 fp32 codebooks = 2 GiB; with grads + AdamW >= 8 GiB: the planner must say so
    if name == "paper-256t-l":
        assert p.memory["parameters (fp32)"] >= 2 * 2**30
        assert p.total_memory >= 8 * 2**30


def test_cpu_presets_are_small():
    for name in ("cpu-512t", "cpu-256t"):
        cfg = get_preset(name)
        assert cfg.model.autoencoder.name == "taef2" and cfg.model.tokens_per_codebook > 1
        p = plan(cfg)
        assert p.params["rectifier"] < 2e6 and p.total_memory < 2**30


def test_overrides_and_validation():
    cfg = get_preset("cpu-512t")
    apply_overrides(cfg, ["lr=0.003", "model.codebook_size=2048", "schedule=cosine", "warmup_steps=10"])
    assert (cfg.lr, cfg.model.codebook_size, cfg.schedule, cfg.warmup_steps) == (0.003, 2048, "cosine", 10)
    with pytest.raises(ConfigError, match="valid token counts"):
        apply_overrides(get_preset("cpu-512t"), ["model.num_tokens=3"])
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_overrides(get_preset("cpu-512t"), ["learning_rate=1"])
    with pytest.raises(ConfigError, match="schedule"):
        apply_overrides(get_preset("cpu-512t"), ["schedule=linear"])


def test_plan_cli(capsys):
    assert main(["plan", "--preset", "paper-256t-l", "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "codebooks" in out and "536,870,912" in out and "AdamW" in out
    assert main(["plan", "--preset", "cpu-512t", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"]["codebooks"] == 32 * 16384 * 4  # 32 channel codebooks x N x d
    assert main(["plan", "--list"]) == 0
    assert "paper-512t" in capsys.readouterr().out
    assert main(["plan", "--preset", "bogus"]) == 2
