"""Recipe options (issue #10): each option changes what it claims, and the budgeted A/B harness
(experiments/recipe_ab.py) trains the steps and schedule it says.

Already covered elsewhere (not repeated here): the residual rectifier is the identity at init
(test_rectifier), exponential = torch's ExponentialLR and cosine warm-up values (test_training),
optimizer group learning rates (test_training)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _train_helpers import ArrayCache, synthetic_latents, tiny_config
from revq.model import ReVQ
from revq.training import trainer as T
from revq.training.schedule import LRSchedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))


@pytest.fixture(scope="module")
def caches():
    return ArrayCache(synthetic_latents(512)), ArrayCache(synthetic_latents(128, seed=1))


def _model(cfg, cache):
    torch.manual_seed(0)
    model = T.build_model(cfg, cache)
    return model


def test_warmup_multiplies_the_exponential_schedule_too():
    s = LRSchedule("exponential", epochs=4, steps_per_epoch=10, final_lr_ratio=0.05, warmup_steps=5)
    assert s.factor(0, 0) == pytest.approx(1 / 5)
    assert s.factor(0, 4) == pytest.approx(1.0)
    assert s.factor(2, 20) == pytest.approx(0.05 ** 0.5)
    c = LRSchedule("constant", epochs=4, steps_per_epoch=10, final_lr_ratio=0.05)
    assert {c.factor(e, e * 10) for e in range(4)} == {1.0}


def test_kmeans_init_beats_random_init_on_the_init_sample(caches):
    train, _ = caches
    z = None
    mses = {}
    for method in ("random", "kmeans"):
        cfg = tiny_config(init_method=method, init_samples=512)
        model = _model(cfg, train)
        T.init_codebooks(model, train, cfg, T.D.DistInfo())
        z = model.normalizer.normalize(torch.as_tensor(train.get(np.arange(512))))
        zq, _ = model.quantizer.quantize(z, update_counts=False)
        mses[method] = float((zq - z).detach().pow(2).mean())
    assert mses["kmeans"] < 0.9 * mses["random"]


def test_decoupled_objective_keeps_codebook_gradients_independent_of_the_rectifier(caches):
    train, _ = caches
    z = torch.as_tensor(train.get(np.arange(64)))
    grads = {}
    for objective in ("decoupled", "paper"):
        cfg = tiny_config()
        cfg.model.objective = objective
        per_rect = []
        for scale in (0.0, 1.0):  # zero-initialised residual rectifier vs a perturbed one
            model = _model(cfg, train)
            with torch.no_grad():
                for p in model.rectifier.parameters():
                    p.add_(scale * 0.1 * torch.randn_like(p))
            model(z)["loss"].backward()
            per_rect.append(model.quantizer.codebooks.grad.clone())
        grads[objective] = per_rect
    assert torch.equal(grads["decoupled"][0], grads["decoupled"][1])
    assert not torch.allclose(grads["paper"][0], grads["paper"][1])


def test_bf16_autocast_touches_the_rectifier_not_the_search(caches):
    train, _ = caches
    cfg = tiny_config()
    model = _model(cfg, train)
    with torch.no_grad():
        for p in model.rectifier.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = torch.as_tensor(train.get(np.arange(64)))
    ref = model(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(z)
    assert torch.equal(ref["indices"], low["indices"])  # exact fp32 search either way
    assert low["z_rect"].dtype == torch.float32  # the residual output stays in the latent's dtype
    assert not torch.equal(ref["z_rect"], low["z_rect"])  # but the rectifier ran in bf16
    assert (ref["z_rect"] - low["z_rect"]).abs().max() < 0.1


def test_budgeted_arm_runs_its_steps_with_a_schedule_over_the_whole_run(caches, monkeypatch):
    import recipe_ab

    train, val = caches
    cfg = tiny_config(schedule="cosine", final_lr_ratio=0.1, warmup_steps=2, batch_size=64)
    seen = []
    orig = LRSchedule.apply

    def spy(self, opt, epoch, step):
        f = orig(self, opt, epoch, step)
        seen.append(f)
        return f

    monkeypatch.setattr(LRSchedule, "apply", spy)
    model, rec = recipe_ab.train_budgeted(cfg, train, val, budget_cpu_s=1e9, val_limit=64, max_steps=20,
                                          log=lambda s: None)
    assert rec["steps"] == 20 and rec["steps_per_epoch"] == 8
    assert len(rec["epochs"]) == 2 and "val_latent_mse" in rec["epochs"][0]  # epoch-end validation
    assert seen[0] == pytest.approx(0.5 * 1.0, rel=1e-6)  # warm-up 1/2 at step 0
    assert seen[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 19 / 20)), rel=1e-6)


def test_budgeted_arm_stops_on_its_cpu_budget(caches):
    import recipe_ab

    train, val = caches
    cfg = tiny_config(batch_size=64)
    _, rec = recipe_ab.train_budgeted(cfg, train, val, budget_cpu_s=0.5, val_limit=64, log=lambda s: None)
    assert rec["steps"] >= 7  # calibration steps always run
    assert rec["train_cpu_s"] < 5


def test_authors_config_is_the_reference_recipe():
    import recipe_ab

    cfg = recipe_ab.authors_config(512)
    assert (cfg.lr, cfg.rectifier_lr_ratio, cfg.schedule, cfg.final_lr_ratio, cfg.batch_size) == (1e-2, 0.05, "exponential", 0.05, 128)
    assert cfg.model.rectifier.residual is False and cfg.model.reset_max_fraction == 0.2
    assert cfg.model.objective == "decoupled" and cfg.init_method == "random" and not cfg.bf16
    over = recipe_ab.make_config(256, ["schedule=cosine", "model.codebook_size=2048"])
    assert over.schedule == "cosine" and over.model.codebook_size == 2048 and over.model.num_tokens == 256
