"""Full-state checkpoints: safetensors + JSON, no pickle, exact round trips."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open

from revq.errors import RevqError
from revq.training.checkpoint import (
    CheckpointManager, TrainState, capture_rng, flatten_optimizer, load_checkpoint,
    restore_rng, unflatten_optimizer,
)


def _model_and_opt():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model.register_buffer("counts", torch.arange(6, dtype=torch.int64).view(2, 3))
    opt = torch.optim.AdamW([{"params": list(model[0].parameters()), "lr": 1e-2, "base_lr": 1e-2, "name": "a"},
                             {"params": list(model[2].parameters()), "lr": 1e-3, "weight_decay": 0.1, "name": "b"}],
                            betas=(0.9, 0.99))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    return model, opt


def test_optimizer_flatten_round_trip():
    model, opt = _model_and_opt()
    sd = opt.state_dict()
    tensors, meta = flatten_optimizer(sd)
    json.dumps(meta)  # JSON-able
    assert all(torch.is_tensor(t) for t in tensors.values())
    back = unflatten_optimizer(tensors, meta)
    assert back["param_groups"] == sd["param_groups"]
    for i, entry in sd["state"].items():
        for key, value in entry.items():
            assert torch.equal(back["state"][i][key], value)
    _, opt2 = _model_and_opt()
    opt2.load_state_dict(back)


def test_rng_round_trip():
    torch.manual_seed(3); np.random.seed(4); random.seed(5)
    np.random.normal(size=3); random.random(); torch.rand(2)
    tensors, meta = capture_rng()
    json.dumps(meta)
    want = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.manual_seed(99); np.random.seed(99); random.seed(99)
    restore_rng(tensors, meta)
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_save_load_exact_and_no_pickle(tmp_path):
    model, opt = _model_and_opt()
    mgr = CheckpointManager(tmp_path / "ck", keep_last=2)
    state = TrainState(epoch=1, step_in_epoch=7, global_step=17, samples_seen=170, initialized=True,
                       last_val={"val_latent_mse": 0.5})
    path = mgr.save(model=model, optimizer=opt, state=state, config={"x": 1}, scheduler_state={"name": "cosine"})
    # plain safetensors file: header metadata is JSON, the rest raw tensors
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert json.loads(meta["revq_state"])["state"]["global_step"] == 17
    assert any(k.startswith("optim/") for k in keys) and "rng/torch" in keys and "model/counts" in keys
    assert b"\x80\x04" not in path.read_bytes()[:64]  # not a pickle stream
    loaded = load_checkpoint(path)
    assert loaded.state == state and loaded.config == {"x": 1} and loaded.scheduler == {"name": "cosine"}
    model2, opt2 = _model_and_opt()
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(1.0)
    loaded.restore(model2, opt2)
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k
    # identical continuation
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad(); m(x).pow(2).sum().backward(); o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_manager_keeps_last_k_and_skips_unreadable(tmp_path):
    model, opt = _model_and_opt()
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (5, 10, 15):
        mgr.save(model=model, optimizer=opt, state=TrainState(global_step=step), config={})
    assert [p.name for p in mgr.list()] == ["ckpt-000000010.safetensors", "ckpt-000000015.safetensors"]
    (tmp_path / ".ckpt-000000020.safetensors.abc.tmp").write_bytes(b"partial")
    mgr.clean_temporaries()
    assert not list(tmp_path.glob(".*.tmp"))
    mgr.list()[-1].write_bytes(b"garbage")  # a corrupted newest file is skipped
    assert mgr.load_latest().state.global_step == 10
    with pytest.raises(RevqError):
        load_checkpoint(mgr.list()[-1])
