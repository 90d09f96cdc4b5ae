"""Row-sparse AdamW for the codebooks, with sparse row gradients and a sparse-aware clip.

Why: a paper-256t-l codebook is 256 x 262,144 x 8 = 537 M parameters, but a batch of 128 touches
at most 128 x 256 = 32,768 of its 67 M rows.  Dense AdamW reads and writes param, grad and both
moments of every row every step (~15 GB of memory traffic), and autograd first materialises a
dense 2 GB zero gradient for the gather.  Here instead:

* :func:`sparse_row_gather` gathers rows with a backward that returns a *sparse* (COO, coalesced)
  gradient holding only the touched rows (duplicates summed);
* :class:`RowSparseAdamW` is AdamW (torch's decoupled weight decay, bias correction from the
  parameter's global step count) that, for a parameter whose gradient is sparse, updates only the
  **active rows**: rows that received a gradient within the last ``window`` steps.

Semantics vs dense AdamW.  Dense AdamW keeps moving a row after its last gradient (its momentum
``m`` decays by beta1 per step but is not zero).  Active rows get exactly dense AdamW's update with
a zero gradient, so the search at every step sees the same codebook as dense AdamW would.  When a
row leaves the window (no gradient for ``window`` steps) it stops being updated; when it comes
back, its moments are first decayed by ``beta1**gap`` / ``beta2**gap`` -- exactly what dense AdamW
does to them.  The only thing dropped is the parameter drift of the idle steps beyond the window,
which is a fraction ~``(beta1/sqrt(beta2))**window`` of that row's total drift (the default
window makes it 1e-4).  With ``window >= number of steps`` the result equals dense AdamW up to
floating-point summation order (tests check this).  ``window=0`` gives classic "lazy Adam"
(only rows with a gradient this step are touched; TF LazyAdam / torch SparseAdam semantics).

Decoupled weight decay would shrink *every* row every step, so a sparse-gradient parameter must
use ``weight_decay=0`` (the codebook group does, in every preset).  Parameters with dense
gradients (the rectifier) get plain AdamW.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor

from revq.errors import ConfigError

_NEG = -(2**30)  # "never touched" marker for int32 step counters


# ---------------------------------------------------------------------------- sparse gather
class _SparseRowGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, rows: Tensor) -> Tensor:  # noqa: D102
        d = weight.shape[-1]
        ctx.shape, ctx.dtype = weight.shape, weight.dtype
        ctx.save_for_backward(rows)
        return weight.detach().reshape(-1, d).index_select(0, rows.reshape(-1)).view(*rows.shape, d)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (rows,) = ctx.saved_tensors
        shape = ctx.shape
        d = shape[-1]
        uniq, inv = torch.unique(rows.reshape(-1), return_inverse=True)
        vals = torch.zeros(uniq.numel(), d, dtype=grad.dtype, device=grad.device)
        vals.index_add_(0, inv, grad.reshape(-1, d))
        idx = torch.stack(torch.unravel_index(uniq, tuple(shape[:-1])))
        g = torch.sparse_coo_tensor(idx, vals.to(ctx.dtype), size=shape, is_coalesced=True, check_invariants=False)
        return g, None


def sparse_row_gather(weight: Tensor, rows: Tensor) -> Tensor:
    """``weight.reshape(-1, d)[rows]`` with a sparse COO gradient for ``weight`` (only touched rows).

    ``weight`` (..., d); ``rows`` int64 flat row indices into ``weight.reshape(-1, d)``, any shape.
    Returns (*rows.shape, d).
    """
    return _SparseRowGather.apply(weight, rows)


def sparse_lookup(quantizer, indices: Tensor) -> Tensor:
    """Drop-in for ``MultiGroupQuantizer.lookup`` whose codebook gradient is sparse."""
    if indices.dim() != 2 or indices.shape[1] != quantizer.num_tokens:
        raise ConfigError(f"expected tokens (batch, {quantizer.num_tokens}); got {tuple(indices.shape)}")
    cb = quantizer.codebooks
    rows = quantizer.flat_code_index(indices.to(device=cb.device, dtype=torch.long))
    return quantizer.from_tokens(sparse_row_gather(cb, rows))  # (B, T, d) -> (B, C, H, W)


def use_sparse_codebook_grad(quantizer, enabled: bool = True) -> None:
    """Make ``quantizer.lookup`` produce sparse codebook gradients (instance-level switch)."""
    if enabled:
        quantizer.lookup = sparse_lookup.__get__(quantizer)
    elif "lookup" in vars(quantizer):
        del quantizer.lookup


# ---------------------------------------------------------------------------- clipping
@torch.no_grad()
def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (L2) that also accepts sparse gradients.

    Sparse gradients are coalesced (duplicates summed) before their norm is taken.
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    norms = []
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            norms.append(torch.linalg.vector_norm(p.grad._values().float()))
        else:
            norms.append(torch.linalg.vector_norm(p.grad.float()))
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        if p.grad.is_sparse:
            g = p.grad
            p.grad = torch.sparse_coo_tensor(g._indices(), g._values() * coef.to(g.dtype), g.shape,
                                             is_coalesced=True, check_invariants=False)
        else:
            p.grad.mul_(coef.to(p.grad.dtype))
    return total


# ---------------------------------------------------------------------------- optimizer
def default_window(betas: tuple[float, float], tol: float = 1e-4) -> int:
    """Idle steps after which the remaining drift of a row is below ``tol`` of its total."""
    b1, b2 = betas
    if b1 == 0:
        return 1
    r = b1 / math.sqrt(b2)
    if r >= 1:
        raise ConfigError(f"betas {betas}: beta1 >= sqrt(beta2), Adam's idle drift does not decay; give window explicitly")
    return max(1, math.ceil(math.log(tol) / math.log(r)))


class RowSparseAdamW(torch.optim.Optimizer):
    """AdamW; parameters with sparse gradients get the row-sparse update described in the module doc.

    Args: as :class:`torch.optim.AdamW` (no amsgrad/maximize), plus ``window`` (idle steps a row
    keeps being updated after its last gradient; ``None``: :func:`default_window`; 0: lazy Adam).
    State per parameter: ``step`` (float tensor), ``exp_avg``, ``exp_avg_sq`` (the parameter's
    shape, like torch's AdamW, so row-wise moment resets work unchanged), and for sparse ones
    ``last_update`` / ``last_touch`` (int32 per row) and ``active`` (int64 row ids).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, window: int | None = None) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ConfigError("lr, eps and weight_decay must be >= 0")
        betas = tuple(float(b) for b in betas)
        if window is None:
            window = default_window(betas)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, window=int(window)))

    _INT_STATE = {"last_update": torch.int32, "last_touch": torch.int32, "pos": torch.int32, "active": torch.long}

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but integer row bookkeeping is not cast to the parameter dtype (float32 would
        corrupt row ids above 2**24)."""
        state_dict = dict(state_dict)
        state = {k: dict(v) for k, v in state_dict["state"].items()}
        ints = {k: {n: v.pop(n) for n in list(v) if n in self._INT_STATE} for k, v in state.items()}
        state_dict["state"] = state
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for k, entries in ints.items():
            p = params[int(k)]
            for n, v in entries.items():
                self.state[p][n] = v.to(device=p.device, dtype=self._INT_STATE[n])

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    self._sparse_step(p, group)
                else:
                    self._dense_step(p, group)
        return loss

    def _init_state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _dense_step(self, p: Tensor, group: dict) -> None:
        state = self._init_state(p)
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state["step"] += 1
        t = float(state["step"])
        g = p.grad
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if wd:
            p.mul_(1 - lr * wd)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - b1**t))

    def _sparse_step(self, p: Tensor, group: dict) -> None:
        lr, (b1, b2), eps, wd, window = group["lr"], group["betas"], group["eps"], group["weight_decay"], group["window"]
        if wd:
            raise ConfigError("RowSparseAdamW: a parameter with sparse gradients needs weight_decay=0 "
                              "(decoupled decay touches every row every step)")
        state = self._init_state(p)
        d = p.shape[-1]
        rows_total = p.numel() // d
        if "last_update" not in state:
            state["last_update"] = torch.zeros(rows_total, dtype=torch.int32, device=p.device)
            state["last_touch"] = torch.full((rows_total,), _NEG, dtype=torch.int32, device=p.device)
            state["active"] = torch.zeros(0, dtype=torch.long, device=p.device)
        state["step"] += 1
        t = int(state["step"])
        g = p.grad.coalesce()
        touched = _ravel(g._indices(), tuple(p.shape[:-1]))  # (U,) flat row ids, unique
        gv = g._values().reshape(-1, d).to(p.dtype)
        last_touch, last_update = state["last_touch"], state["last_update"]
        last_touch[touched] = t
        # active rows = rows touched within the last `window` steps (kept in order) + newly touched ones
        prev = state["active"]
        if window > 0 and prev.numel():
            prev = prev[last_touch[prev] > t - 1 - window]
        else:
            prev = prev[:0]
        P = prev.numel()
        if P:
            if "pos" not in state:
                state["pos"] = torch.zeros(rows_total, dtype=torch.int32, device=p.device)
            pos = state["pos"]
            pos[prev] = torch.arange(P, dtype=torch.int32, device=p.device)
            cand = pos[touched].long().clamp_(0, P - 1)  # stale entries are caught by the check below
            known = prev[cand] == touched
            new = touched[~known]
            active = torch.cat([prev, new])
            where = cand
            where[~known] = torch.arange(P, P + new.numel(), device=p.device)
            grad_rows = torch.zeros(active.numel(), d, dtype=p.dtype, device=p.device)
            grad_rows[where] = gv
        else:
            active, grad_rows = touched, gv
        state["active"] = active if window > 0 else prev
        flat_p = p.view(-1, d)
        flat_m = state["exp_avg"].view(-1, d)
        flat_v = state["exp_avg_sq"].view(-1, d)
        m = flat_m.index_select(0, active)
        v = flat_v.index_select(0, active)
        gap = (t - 1 - last_update.index_select(0, active)).to(torch.float64)
        if bool((gap > 0).any()):  # rows back after leaving the window: decay their moments exactly
            m.mul_(torch.pow(torch.tensor(b1, dtype=torch.float64), gap).to(m.dtype)[:, None])
            v.mul_(torch.pow(torch.tensor(b2, dtype=torch.float64), gap).to(v.dtype)[:, None])
        m.lerp_(grad_rows, 1 - b1)
        v.mul_(b2).addcmul_(grad_rows, grad_rows, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(eps)
        prow = flat_p.index_select(0, active)
        prow.addcdiv_(m, denom, value=-lr / (1 - b1**t))
        flat_p.index_copy_(0, active, prow)
        flat_m.index_copy_(0, active, m)
        flat_v.index_copy_(0, active, v)
        last_update[active] = t


def _ravel(idx: Tensor, shape: tuple[int, ...]) -> Tensor:
    """(k, U) multi-indices -> (U,) flat indices into ``shape`` (row-major)."""
    flat = torch.zeros(idx.shape[1], dtype=torch.long, device=idx.device)
    for dim, size in enumerate(shape):
        flat = flat * size + idx[dim]
    return flat


def build_row_sparse_optimizer(model, cfg) -> RowSparseAdamW:
    """The trainer's two AdamW groups (codebooks | rest) as a :class:`RowSparseAdamW`; switches the
    quantizer to sparse codebook gradients."""
    from revq.training.trainer import optimizer_groups

    use_sparse_codebook_grad(model.quantizer)
    return RowSparseAdamW(optimizer_groups(model, cfg), betas=tuple(cfg.betas), eps=cfg.adam_eps)


__all__ = [
    "RowSparseAdamW", "build_row_sparse_optimizer", "clip_grad_norm_", "default_window",
    "sparse_lookup", "sparse_row_gather", "use_sparse_codebook_grad",
]
