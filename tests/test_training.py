"""The training loop: schedules, moment zeroing after reset, NaN guard, validation hygiene."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from _train_helpers import ArrayCache, synthetic_latents, tiny_config
from revq.errors import ConfigError, MissingResourceError, RevqError
from revq.model import ReVQ
from revq.quantizer import MultiGroupQuantizer
from revq.training import trainer as T
from revq.training.checkpoint import CheckpointManager, load_checkpoint
from revq.training.schedule import LRSchedule


@pytest.fixture(scope="module")
def caches():
    return ArrayCache(synthetic_latents(256)), ArrayCache(synthetic_latents(64, seed=1))


# ---------------------------------------------------------------- schedules
def test_exponential_schedule_matches_torch_exponential_lr():
    epochs, spe = 5, 3
    sched = LRSchedule("exponential", epochs=epochs, steps_per_epoch=spe, final_lr_ratio=0.05)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    ref = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.05 ** (1 / epochs))
    for epoch in range(epochs):
        for s in range(spe):
            assert sched.factor(epoch, epoch * spe + s) * 0.5 == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        ref.step()
    assert sched.factor(epochs, epochs * spe) == pytest.approx(0.05)


def test_cosine_warmup_schedule():
    sched = LRSchedule("cosine", epochs=2, steps_per_epoch=50, final_lr_ratio=0.1, warmup_steps=10)
    assert sched.factor(0, 0) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0))))
    assert sched.factor(0, 4) == pytest.approx(0.5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 100))))
    assert sched.factor(1, 50) == pytest.approx(0.1 + 0.9 * 0.5)  # half way
    assert sched.factor(1, 100) == pytest.approx(0.1)
    factors = [sched.factor(s // 50, s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))  # decreasing after warm-up


def test_optimizer_groups():
    cfg = tiny_config()
    model = ReVQ(cfg.model)
    opt = T.build_optimizer(model, cfg)
    cb, rect = opt.param_groups
    assert cb["params"] == [model.quantizer.codebooks] and cb["weight_decay"] == 0 and cb["lr"] == cfg.lr
    assert rect["lr"] == pytest.approx(cfg.lr * 0.05) and rect["weight_decay"] == 1e-4
    assert len(rect["params"]) == len(list(model.rectifier.parameters()))
    assert opt.defaults["betas"] == (0.9, 0.999)


# ---------------------------------------------------------------- (c) reset zeroes moments
def test_reset_zeroes_adam_moments_of_moved_rows_only():
    torch.manual_seed(0)
    q = MultiGroupQuantizer(latent_shape=(4, 2, 2), num_tokens=4, codebook_size=8)
    q.init_from_data(torch.randn(64, 4, 2, 2), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([q.codebooks], lr=1e-2)
    q.train()
    for _ in range(3):
        z_q, _ = q.quantize(torch.randn(16, 4, 2, 2))
        opt.zero_grad()
        (z_q - 1).pow(2).mean().backward()
        opt.step()
    q.counts.zero_()
    q.counts[:, :5] = torch.arange(1, 6)  # codes 5, 6, 7 dead in every group
    state = opt.state[q.codebooks]
    state["exp_avg"].add_(1.0)  # make every moment non-zero
    state["exp_avg_sq"].add_(1.0)
    before = {k: state[k].clone() for k in ("exp_avg", "exp_avg_sq")}
    result = q.reset_dead_codes(generator=torch.Generator().manual_seed(1))
    assert [sorted(r.tolist()) for r in result.reset_rows] == [[5, 6, 7]] * 4
    T.zero_moments(opt, q.codebooks, result.reset_rows)
    moved = torch.zeros(4, 8, dtype=torch.bool)
    moved[:, 5:] = True
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.all(state[key][moved] == 0)
        assert torch.equal(state[key][~moved], before[key][~moved])


# ---------------------------------------------------------------- the loop in-process
def test_train_end_to_end_in_process(tmp_path, caches):
    train_cache, val_cache = caches
    cfg = tiny_config(tmp_path / "run", epochs=2)
    result = T.train(cfg, train_cache=train_cache, val_cache=val_cache)
    assert result.state.finished and result.state.global_step == 2 * (256 // 32)
    model = ReVQ.from_pretrained(tmp_path / "run" / "model")
    assert model.config.num_tokens == 32
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [l for l in lines if l["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(0 < e["val_latent_mse"] < 2 and 0 < e["val_usage"] <= 1 for e in epochs)
    assert any(l["type"] == "step" and l["samples_per_s"] > 0 for l in lines)
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["model"]["codebook_size"] == 16
    # validation never touched the counts: they were cleared by the last reset and stay zero
    ck = load_checkpoint(CheckpointManager(tmp_path / "run" / "checkpoints").latest())
    assert int(ck.tensors["model/quantizer.counts"].sum()) == 0
    # the finished run resumes to a no-op
    again = T.train(tiny_config(tmp_path / "run", epochs=2), train_cache=train_cache, val_cache=val_cache)
    assert again.state.global_step == result.state.global_step


def test_validation_does_not_count(caches):
    train_cache, val_cache = caches
    cfg = tiny_config()
    model = T.build_model(cfg, train_cache)
    model.quantizer.counts.fill_(3)
    metrics = T.validate(model, val_cache, cfg, T.D.DistInfo())
    assert torch.all(model.quantizer.counts == 3) and model.training
    assert metrics["val_count"] == 64 and 0 <= metrics["val_usage"] <= 1


@pytest.mark.parametrize("tokens_per_codebook", [1, 4])
def test_validation_usage_matches_an_independent_count(caches, tokens_per_codebook):
    """The trainer's val usage / MSE (with shared codebooks too) equal a count from tokenize()."""
    from revq.evaluation import metrics as M

    train_cache, val_cache = caches
    cfg = tiny_config()
    cfg.model.tokens_per_codebook = tokens_per_codebook
    model = T.build_model(cfg, train_cache)
    metrics = T.validate(model, val_cache, cfg, T.D.DistInfo())
    z = torch.as_tensor(val_cache.get(np.arange(len(val_cache))), dtype=torch.float32)
    with torch.no_grad():
        tokens = model.tokenize(z)
        counts = M.count_codes(tokens, cfg.model.num_codebooks, cfg.model.codebook_size)
        zq = model.quantizer.lookup(tokens)
        quant_mse = float((zq - model.normalizer.normalize(z)).pow(2).mean())
    assert metrics["val_usage"] == pytest.approx(float((counts > 0).float().mean()))
    assert metrics["val_quant_mse"] == pytest.approx(quant_mse, rel=1e-5)


def test_resume_with_other_recipe_is_refused(tmp_path, caches):
    train_cache, _ = caches
    T.train(tiny_config(tmp_path / "run", epochs=1), train_cache=train_cache)
    with pytest.raises(ConfigError, match="differs in: lr"):
        T.train(tiny_config(tmp_path / "run", epochs=1, lr=0.5), train_cache=train_cache)


# ---------------------------------------------------------------- (d) NaN guard
def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, caches, monkeypatch):
    train_cache, _ = caches
    calls = {"n": 0}
    real = T._forward

    def poisoned(model, z):
        out = real(model, z)
        calls["n"] += 1
        if calls["n"] >= 11:  # step 11 onwards: NaN loss
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(T, "_forward", poisoned)
    cfg = tiny_config(tmp_path / "run", epochs=3, checkpoint_every_steps=3, log_every_steps=4)
    with pytest.raises(T.TrainingDiverged, match="NaN/Inf.*last good checkpoint") as info:
        T.train(cfg, train_cache=train_cache)
    assert isinstance(info.value, RevqError)
    mgr = CheckpointManager(tmp_path / "run" / "checkpoints")
    steps = [load_checkpoint(p).state.global_step for p in mgr.list()]
    assert max(steps) <= 10  # nothing written after the NaN
    ck = load_checkpoint(mgr.latest())
    assert all(torch.isfinite(v).all() for k, v in ck.tensors.items() if v.is_floating_point())
    assert not (tmp_path / "run" / "model").exists()


# ---------------------------------------------------------------- validation before any work
def test_config_validation_before_work(tmp_path, caches):
    train_cache, val_cache = caches
    with pytest.raises(ConfigError, match="codebook_size=512 is larger than the 256"):
        cfg = tiny_config(tmp_path / "a")
        cfg.model.codebook_size = 512
        T.train(cfg, train_cache=train_cache)
    # sharing a codebook between k positions gives it k times the sub-vectors to start from
    cfg = tiny_config(tmp_path / "s")
    cfg.model.codebook_size = 512
    cfg.model.tokens_per_codebook = 2
    T.validate_setup(cfg, train_cache, val_cache)
    cfg.model.codebook_size = 513
    with pytest.raises(ConfigError, match="codebook_size=513 is larger than the 512 training sub-vectors"):
        T.validate_setup(cfg, train_cache, val_cache)
    other = ArrayCache(synthetic_latents(256), autoencoder="taef2")
    with pytest.raises(ConfigError, match="made by autoencoder 'taef2'.*names 'synthetic'"):
        T.train(tiny_config(tmp_path / "b"), train_cache=other)
    nostats = ArrayCache(synthetic_latents(256))
    nostats.stats = {}
    with pytest.raises(MissingResourceError, match="statistics"):
        T.train(tiny_config(tmp_path / "c"), train_cache=nostats)
    odd = ArrayCache(synthetic_latents(256, shape=(3, 5, 5)))  # 75 values: 32 tokens impossible
    with pytest.raises(ConfigError, match="valid token counts"):
        T.train(tiny_config(tmp_path / "d"), train_cache=odd)
    with pytest.raises(ConfigError, match="validation latents have shape"):
        T.train(tiny_config(tmp_path / "e"), train_cache=train_cache, val_cache=odd)
    assert not any((tmp_path / x).exists() for x in "abcde")


def test_epoch_order_is_deterministic_and_sharded():
    a = T.epoch_order(100, 16, seed=1, epoch=2)
    assert a.shape == (6, 16) and np.array_equal(a, T.epoch_order(100, 16, seed=1, epoch=2))
    assert not np.array_equal(a, T.epoch_order(100, 16, seed=1, epoch=3))
    r0 = T.shard_batches(a, rank=0, local_batch=8)
    r1 = T.shard_batches(a, rank=1, local_batch=8)
    for i in range(6):
        assert sorted(np.concatenate([r0[i], r1[i]]).tolist()) == sorted(a[i].tolist())
    assert len(T.shard_batches(a, rank=0, local_batch=8, start=4)) == 2
