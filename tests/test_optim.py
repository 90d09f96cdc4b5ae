"""Row-sparse AdamW and sparse row gradients against independent dense references."""

from __future__ import annotations

import math

import pytest
import torch

from revq.errors import ConfigError
from revq.training.optim import (
    RowSparseAdamW,
    clip_grad_norm_,
    default_window,
    sparse_lookup,
    sparse_row_gather,
)

G, N, D = 3, 50, 4


def _batches(steps, seed=0, batch=6):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        # few distinct rows per step, with duplicates, so most rows are idle most of the time
        rows = torch.randint(0, 12, (batch, G), generator=gen) * 3 % N
        target = torch.randn(batch, G, D, generator=gen)
        out.append((rows, target))
    return out


def _loss_dense(w, rows, target):
    picked = w[torch.arange(G)[None, :], rows]  # (B, G, D): dense gradient via index backward
    return ((picked - target) ** 2).sum() * 0.37


def _loss_sparse(w, rows, target):
    flat = rows + torch.arange(G)[None, :] * N
    return ((sparse_row_gather(w, flat) - target) ** 2).sum() * 0.37


def test_sparse_gather_forward_and_grad_match_dense():
    torch.manual_seed(0)
    w0 = torch.randn(G, N, D, dtype=torch.float64)
    rows, target = _batches(1)[0]
    target = target.double()
    wd = w0.clone().requires_grad_(True)
    ws = w0.clone().requires_grad_(True)
    _loss_dense(wd, rows, target).backward()
    _loss_sparse(ws, rows, target).backward()
    assert ws.grad.is_sparse
    torch.testing.assert_close(ws.grad.to_dense(), wd.grad, rtol=1e-12, atol=1e-12)
    # only touched rows are stored, once each
    assert ws.grad._values().shape[0] == len({(g, int(r)) for b in rows for g, r in enumerate(b)})


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
def test_row_sparse_equals_dense_adamw_when_window_covers_all_steps(betas):
    steps = 25
    w0 = torch.randn(G, N, D, dtype=torch.float64)
    wd = w0.clone().requires_grad_(True)
    ws = w0.clone().requires_grad_(True)
    ref = torch.optim.AdamW([wd], lr=0.05, betas=betas, eps=1e-8, weight_decay=0.0, foreach=False)
    opt = RowSparseAdamW([ws], lr=0.05, betas=betas, eps=1e-8, weight_decay=0.0, window=steps + 1)
    for i, (rows, target) in enumerate(_batches(steps)):
        target = target.double()
        for o in (ref, opt):
            for grp in o.param_groups:
                grp["lr"] = 0.05 * 0.97**i  # a schedule, as the trainer applies
        ref.zero_grad(set_to_none=True)
        _loss_dense(wd, rows, target).backward()
        ref.step()
        opt.zero_grad(set_to_none=True)
        _loss_sparse(ws, rows, target).backward()
        opt.step()
        torch.testing.assert_close(ws.detach(), wd.detach(), rtol=1e-10, atol=1e-12)
    # moments of every row that was ever updated agree too (idle rows: decayed lazily -> compare touched)
    st = opt.state[ws]
    torch.testing.assert_close(st["exp_avg"], ref.state[wd]["exp_avg"], rtol=1e-10, atol=1e-14)


def _reference_truncated(w0, batches, lr, betas, eps, window):
    """Dense AdamW written out by hand, except that a row with no gradient for more than
    ``window`` steps does not move (its moments still evolve densely)."""
    b1, b2 = betas
    w = w0.clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    last = torch.full((G, N), -(10**9))
    for t, (rows, target) in enumerate(batches, start=1):
        wr = w.clone().requires_grad_(True)
        _loss_dense(wr, rows, target.double()).backward()
        g = wr.grad
        touched = g.abs().sum(-1) > 0
        last[touched] = t
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        upd = (m / (1 - b1**t)) / (v.sqrt() / math.sqrt(1 - b2**t) + eps)
        moving = (t - last) <= window
        w = torch.where(moving[..., None], w - lr * upd, w)
    return w, m, v


@pytest.mark.parametrize("window", [0, 1, 4])
def test_row_sparse_truncated_window_matches_reference(window):
    steps, lr, betas, eps = 30, 0.03, (0.8, 0.99), 1e-8
    w0 = torch.randn(G, N, D, dtype=torch.float64)
    batches = _batches(steps, seed=3)
    ref_w, ref_m, ref_v = _reference_truncated(w0, batches, lr, betas, eps, window)
    ws = w0.clone().requires_grad_(True)
    opt = RowSparseAdamW([ws], lr=lr, betas=betas, eps=eps, weight_decay=0.0, window=window)
    for rows, target in batches:
        opt.zero_grad(set_to_none=True)
        _loss_sparse(ws, rows, target.double()).backward()
        opt.step()
    torch.testing.assert_close(ws.detach(), ref_w, rtol=1e-10, atol=1e-12)
    # stored moments are lazily decayed: bring them to step `steps` and compare
    st = opt.state[ws]
    gap = (steps - st["last_update"].double()).view(G, N, 1)
    torch.testing.assert_close(st["exp_avg"] * betas[0] ** gap, ref_m, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(st["exp_avg_sq"] * betas[1] ** gap, ref_v, rtol=1e-9, atol=1e-14)


def test_dense_params_match_torch_adamw_with_weight_decay():
    torch.manual_seed(1)
    p0 = torch.randn(7, 5, dtype=torch.float64)
    a = p0.clone().requires_grad_(True)
    b = p0.clone().requires_grad_(True)
    ref = torch.optim.AdamW([a], lr=0.01, weight_decay=0.1, foreach=False)
    opt = RowSparseAdamW([b], lr=0.01, weight_decay=0.1)
    for _ in range(5):
        x = torch.randn(5, dtype=torch.float64)
        for p, o in ((a, ref), (b, opt)):
            o.zero_grad()
            ((p @ x).sin().sum()).backward()
            o.step()
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_sparse_param_rejects_weight_decay():
    w = torch.randn(G, N, D, requires_grad=True)
    opt = RowSparseAdamW([w], lr=0.1, weight_decay=0.01)
    rows, target = _batches(1)[0]
    _loss_sparse(w, rows, target).backward()
    with pytest.raises(ConfigError):
        opt.step()


def test_clip_grad_norm_matches_torch_on_mixed_sparse_dense():
    torch.manual_seed(2)
    w0 = torch.randn(G, N, D)
    extra0 = torch.randn(6)
    rows, target = _batches(1)[0]
    wd, ed = w0.clone().requires_grad_(True), extra0.clone().requires_grad_(True)
    ws, es = w0.clone().requires_grad_(True), extra0.clone().requires_grad_(True)
    (_loss_dense(wd, rows, target) + (ed**3).sum()).backward()
    (_loss_sparse(ws, rows, target) + (es**3).sum()).backward()
    n_ref = torch.nn.utils.clip_grad_norm_([wd, ed], 0.5)
    n = clip_grad_norm_([ws, es], 0.5)
    torch.testing.assert_close(n, n_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ws.grad.to_dense(), wd.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(es.grad, ed.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tokens_per_codebook", [1, 2, 4])
def test_sparse_lookup_matches_quantizer_lookup(tokens_per_codebook):
    from revq.quantizer import MultiGroupQuantizer

    q = MultiGroupQuantizer(latent_shape=(4, 2, 2), num_tokens=4, codebook_size=9, tokens_per_codebook=tokens_per_codebook)
    idx = torch.randint(0, 9, (5, 4))
    dense = q.lookup(idx)
    sparse = sparse_lookup(q, idx)
    torch.testing.assert_close(sparse, dense)
    dense.square().sum().backward()
    g_dense = q.codebooks.grad.clone()
    q.codebooks.grad = None
    sparse.square().sum().backward()
    torch.testing.assert_close(q.codebooks.grad.to_dense(), g_dense)


def test_default_window():
    w = default_window((0.9, 0.999))
    assert (0.9 / math.sqrt(0.999)) ** w <= 1e-4 < (0.9 / math.sqrt(0.999)) ** (w - 1)
    with pytest.raises(ConfigError):
        default_window((0.999, 0.99))


def test_trainer_switch_sparse_codebook_adam_step_and_state_roundtrip():
    from revq.config import RectifierConfig, ReVQConfig
    from revq.model import ReVQ
    from revq.training import trainer as T
    from revq.training.checkpoint import flatten_optimizer, unflatten_optimizer
    from revq.training.config import TrainConfig

    mcfg = ReVQConfig(latent_shape=(4, 2, 2), num_tokens=8, codebook_size=16,
                      rectifier=RectifierConfig(kind="cnn", width=8, depth=1))
    cfg = TrainConfig(model=mcfg, sparse_codebook_adam=True, lr=0.05)
    torch.manual_seed(0)
    model = ReVQ(mcfg)
    ref = ReVQ(mcfg)
    ref.load_state_dict(model.state_dict())
    opt = T.build_optimizer(model, cfg)
    assert isinstance(opt, RowSparseAdamW)
    cfg_dense = TrainConfig(model=mcfg, lr=0.05)
    ref_opt = T.build_optimizer(ref, cfg_dense)
    for _ in range(3):
        z = torch.randn(5, 4, 2, 2)
        for m, o in ((model, opt), (ref, ref_opt)):
            out = m(z)
            o.zero_grad(set_to_none=True)
            out["loss"].backward()
            T.clip_per_group(o, 1e-3)  # small: clipping is active
            o.step()
    assert model.quantizer.codebooks.grad is None or model.quantizer.codebooks.grad.is_sparse
    # 3 steps < window: identical to the dense trainer optimizer (fp32 summation order aside)
    torch.testing.assert_close(model.quantizer.codebooks, ref.quantizer.codebooks, rtol=1e-5, atol=1e-6)
    for a, b in zip(model.rectifier.parameters(), ref.rectifier.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    tensors, meta = flatten_optimizer(opt.state_dict())
    opt2 = T.build_optimizer(model, cfg)
    opt2.load_state_dict(unflatten_optimizer(tensors, meta))
    st = opt2.state[model.quantizer.codebooks]
    assert st["last_update"].dtype == torch.int32 and st["active"].dtype == torch.long
    T.zero_moments(opt2, model.quantizer.codebooks, [torch.tensor([0, 1])] + [torch.tensor([], dtype=torch.long)] * 7)
    assert float(st["exp_avg"][0, :2].abs().sum()) == 0.0
