"""Exact, memory-bounded nearest-code search: the quantizer's hot path.

For every group ``g`` and query ``x[g, b]`` find ``argmin_n ||x[g, b] - codebooks[g, n]||^2``
(paper Eq. 1 / Eq. 2: each token position has its own codebook).  The definition of "exact" used
throughout the project (and by the brute-force reference in the tests) is::

    reference = ((x[:, :, None, :] - codebooks[:, None, :, :]) ** 2).sum(-1).argmin(-1)

computed in float32, ties broken by the lowest code index (``torch.argmin`` returns the first
minimum).  The brute force materialises ``G x B x N x d`` values, which is impossible at the
paper's sizes (256 groups x 262,144 codes x batch 128 = 34 GB of distances alone), so we:

1. use the expansion ``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2``, dropping the per-query
   constant ``||x||^2``: with augmented vectors ``[x, 1]`` and ``[-2c, ||c||^2]`` one ``bmm`` per
   chunk gives ``a[g, b, n] = ||c_n||^2 - 2 x_b.c_n`` (no sqrt, unlike ``cdist``; no broadcast
   add; the codes' chunk is laid out (d+1, n) so the GEMM's wide operand is contiguous);
2. walk over chunks of (groups x batch x codes) whose distance block fits the memory budget,
   keeping for each query the running best value/index and the second-best value.  Best and
   second best come from ONE pass over the block (`_block_top2`): the minimum of every run of
   ``_RUN`` codes, then the argmin and second best inside the winning run only;
3. *certify* each answer: the expansion has a rounding error bounded by
   ``~ (d + 2) * 2^-24 * (||x||^2 + ||c||^2)`` per code (see `_pair_tolerance`).  When the gap
   between the best and the second-best expanded value exceeds the bound, the expanded argmin is
   provably the fp32 argmin of the direct formula.  The rare queries that fail the certificate
   (near ties, duplicated codes) are repaired: the expansion names the few codes that could win
   and the direct formula decides among them (`_repair_rows`), so the final result is exact.

Everything runs in float32 even under autocast, and TF32 is switched off for the duration of the
search on CUDA (TF32's 10-bit mantissa would make the certificate fail far too often).
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
from typing import Iterator

import torch
from torch import Tensor

from revq.errors import ConfigError

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of scratch space for one distance block
# On CPU, blocks larger than this are slower (fresh pages for every block, cache misses): the
# budget is an upper bound, so CPU searches use at most this much even when allowed more.
CPU_BLOCK_BYTES = 16 * 2**20
_F32 = 4  # bytes per float32
# safety factor on the rounding-error bound of the expansion (see `_error_coefficient`)
_TOL_SAFETY = 4.0
# codes per run in `_block_top2`: the block is reduced to run minima in one pass; small enough that
# re-reading the winning run is free, large enough that the run minima are a small array
_RUN = 64


def _eager_only(fn):
    """``torch.compiler.disable``, paid for only when something compiles.

    Importing torch._dynamo costs seconds per process; while it is not imported nothing can be
    tracing this function, so the plain function runs.
    """
    disabled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal disabled
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def _ieee_fp32_matmul(device: torch.device) -> Iterator[None]:
    """Disable TF32 / reduced-precision fp32 matmuls for CUDA searches, restoring them after."""
    if device.type != "cuda":
        yield
        return
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    prev_prec = torch.get_float32_matmul_precision()
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        torch.set_float32_matmul_precision(prev_prec)
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32


def _chunk_sizes(groups: int, batch: int, codes: int, budget_elems: int, *, per_code: int = 0) -> tuple[int, int, int]:
    """Pick (groups, batch, codes) per block so that one block's scratch fits budget_elems values.

    A block of (g, b, n) costs ``g * n * (b + per_code)`` values: the (g, b, n) distance block plus
    ``per_code`` values per code for the block's fp32 codes and their squared norms.  Prefer whole
    groups; otherwise keep the whole batch and split the codes (a wide GEMM, and merging code
    chunks costs only O(batch)); split the batch only when not even one code fits.
    """
    budget_elems = max(int(budget_elems), 1)
    per_group = codes * (batch + per_code)
    if per_group <= budget_elems:
        return min(groups, budget_elems // per_group), batch, codes
    ns = budget_elems // (batch + per_code)
    if ns >= 1:
        if ns >= _RUN:  # whole runs per chunk, so `_block_top2`'s fast path applies
            ns -= ns % _RUN
        return 1, batch, min(codes, ns)
    return 1, max(1, min(batch, budget_elems - per_code)), 1


def _block_top2(a: Tensor, exact: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Best value, its index (lowest on ties) and the second-best value along the last dim.

    ``a`` (g, b, n) is overwritten.  When n is a multiple of ``_RUN`` the block is read once:
    ``m`` = minimum of each run of ``_RUN`` codes; the best is in the first run reaching min(m)
    (lowest index on ties), found by an argmin inside that run; the second best is the smaller
    of the next-best run minimum and the second best inside the winning run.
    """
    g, b, n = a.shape
    if n % _RUN or n < 2 * _RUN:
        v1, i1 = a.min(-1)  # first minimum -> lowest index on exact ties
        if exact and n > 1:
            a.scatter_(-1, i1[..., None], math.inf)  # in place: no second block
            v2 = a.amin(-1)
        else:
            v2 = torch.full_like(v1, math.inf)
        return v1, i1, v2
    runs = a.view(g, b, n // _RUN, _RUN)
    m = runs.amin(-1)  # (g, b, n/_RUN): the one full pass
    v1, j = m.min(-1)  # first run holding the minimum
    run = runs.gather(2, j[..., None, None].expand(g, b, 1, _RUN)).squeeze(2)  # (g, b, _RUN) copy
    k = run.argmin(-1)
    i1 = j * _RUN + k
    if not exact:
        return v1, i1, torch.full_like(v1, math.inf)
    second_in = run.scatter_(-1, k[..., None], math.inf).amin(-1)
    second_out = m.scatter_(-1, j[..., None], math.inf).amin(-1)
    return v1, i1, torch.minimum(second_in, second_out)


def _error_coefficient(d: int) -> float:
    """K such that |expanded - true| + |direct - true| <= K (||x||^2 + ||c||^2) for one code.

    With unit roundoff u = 2^-24 and gamma_k = k u / (1 - k u): the expanded value
    ``||c||^2 - 2 x.c`` is within ``gamma_{d+2} (||c||^2 + 2 |x||c|) <= 2 gamma_{d+2} (||x||^2 + ||c||^2)``
    of the true ``||x - c||^2 - ||x||^2``, and the direct ``sum((x - c)^2)`` within
    ``gamma_{d+1} ||x - c||^2 <= 2 gamma_{d+1} (||x||^2 + ||c||^2)``.  ``_TOL_SAFETY`` adds margin
    for the rounding of the norms and of the bound itself.
    """
    u = 2.0**-24
    gamma = (d + 2) * u / (1 - (d + 2) * u)
    return _TOL_SAFETY * 4.0 * gamma


def _pair_tolerance(x_sq: Tensor, a_best: Tensor, a_other: Tensor, k: float) -> Tensor:
    """Bound on the rounding of ``(a_other - a_best)`` compared with the direct distances.

    ``||c||^2 <= 2 ||x||^2 + 2 ||x - c||^2`` and ``||x - c||^2 ~ a + ||x||^2``, so each code's error
    is at most ``k (3 ||x||^2 + 2 D)`` with ``D = max(a + ||x||^2, 0)``.  The bound grows with
    ``a_other``, so checking it against the second-best value covers every other code.
    """
    d_best = (a_best + x_sq).clamp_min(0)
    d_other = (a_other + x_sq).clamp_min(0)
    return k * (6.0 * x_sq + 2.0 * d_best + 2.0 * d_other)


def _repair_rows(
    x: Tensor, codebooks: Tensor, g_idx: Tensor, b_idx: Tensor, budget_elems: int
) -> Tensor:
    """Exact answers for uncertain queries: candidates by the expansion, winner by the direct formula.

    Per group: recompute ``a = ||c||^2 - 2 x.c`` for the group's uncertain queries, keep the codes
    whose ``a`` lies within the pair tolerance of the minimum (the direct-formula winner and
    everything tied with it are provably among them), evaluate the direct formula on those few
    candidates only, and take the minimum with the lowest index.  Falls back to the direct formula
    over all codes (:func:`_exact_rows`) when a group's codes do not fit the budget or a near-degenerate
    query has too many candidates.
    """
    G, N, d = codebooks.shape
    k_err = _error_coefficient(d)
    out = torch.empty(g_idx.numel(), dtype=torch.long, device=x.device)
    groups, counts = torch.unique_consecutive(g_idx, return_counts=True)  # g_idx is sorted
    starts = [0] + torch.cumsum(counts, 0).tolist()
    # per group: fp32 codes + norms (~2d + 1 per code); per query row: a, the mask and a temporary
    rows_fit = (budget_elems - N * (2 * d + 1)) // (3 * N)
    for gi, g in enumerate(groups.tolist()):
        lo, hi = starts[gi], starts[gi + 1]
        if rows_fit < 1:
            out[lo:hi] = _exact_rows(x, codebooks, g_idx[lo:hi], b_idx[lo:hi], budget_elems)
            continue
        cb = codebooks[g].float()  # (N, d)
        c_sq = cb.pow(2).sum(-1)  # (N,)
        for r0 in range(lo, hi, rows_fit):
            r1 = min(hi, r0 + rows_fit)
            xr = x[g, b_idx[r0:r1]]  # (k, d)
            xs = xr.pow(2).sum(-1)  # (k,)
            a = torch.addmm(c_sq[None, :], xr, cb.T, beta=1.0, alpha=-2.0)  # (k, N)
            m, m_idx = a.min(-1)
            # codes j that could beat the minimum: a_j - m <= k (6|x|^2 + 2 D_m + 2 D_j) with
            # D_j <= D_m + (a_j - m), solved for a_j - m (one threshold per row)
            d_m = (m + xs).clamp_min(0)
            thr = k_err * (6.0 * xs + 4.0 * d_m) / (1.0 - 2.0 * k_err)
            mask = a <= (m + thr)[:, None]
            del a
            ri, ci = mask.nonzero(as_tuple=True)  # candidate (row, code) pairs
            del mask
            if ri.numel() * (3 * d + 4) > budget_elems:  # degenerate data: too many candidates
                out[r0:r1] = _exact_rows(x, codebooks, g_idx[r0:r1], b_idx[r0:r1], budget_elems)
                continue
            e = ((xr[ri] - cb[ci]) ** 2).sum(-1)  # (P,) the reference formula
            k = r1 - r0
            row_min = torch.full((k,), math.inf, device=x.device).scatter_reduce(0, ri, e, "amin")
            cand = torch.where(e == row_min[ri], ci, torch.full_like(ci, N))
            best = torch.full((k,), N, dtype=torch.long, device=x.device).scatter_reduce(0, ri, cand, "amin")
            out[r0:r1] = torch.where(best < N, best, m_idx)  # (no candidate only for non-finite rows)
    return out


def _exact_rows(x: Tensor, codebooks: Tensor, g_idx: Tensor, b_idx: Tensor, budget_elems: int) -> Tensor:
    """Direct-formula argmin for selected (group, query) pairs; chunked over rows and codes."""
    G, N, d = codebooks.shape
    out = torch.empty(g_idx.numel(), dtype=torch.long, device=x.device)
    # one row against a code chunk: gathered codes, their fp32 copy, difference, square (4d) + sum
    per = 4 * d + 1
    nc = max(1, min(N, budget_elems // per))
    rows_per = max(1, budget_elems // (nc * per))
    for start in range(0, g_idx.numel(), rows_per):
        gi = g_idx[start : start + rows_per]
        q = x[gi, b_idx[start : start + rows_per]]  # (k, d)
        best_v = torch.full((gi.numel(),), math.inf, device=x.device)
        best_i = torch.zeros(gi.numel(), dtype=torch.long, device=x.device)
        for n0 in range(0, N, nc):
            cb = codebooks[gi, n0 : n0 + nc].float()  # (k, nc, d)
            dist = ((q[:, None, :] - cb) ** 2).sum(-1)  # (k, nc): the reference formula
            v, i = dist.min(-1)
            better = v < best_v  # strict: earlier chunks (lower indices) win ties
            best_v = torch.where(better, v, best_v)
            best_i = torch.where(better, i + n0, best_i)
        out[start : start + rows_per] = best_i
    return out


@_eager_only  # python-level chunk loop + data-dependent repair: keep it out of graphs
@torch.no_grad()
def nearest_code(
    x: Tensor,
    codebooks: Tensor,
    *,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    codebook_sq_norms: Tensor | None = None,
    exact: bool = True,
) -> Tensor:
    """Index of the nearest code (squared L2, fp32, ties -> lowest index) for every query.

    Args:
        x: queries (G, B, d): group g's queries are matched against ``codebooks[g]`` only.
        codebooks: (G, N, d).
        memory_budget_bytes: scratch memory for one distance block (G_c x B_c x N_c fp32 values);
            peak extra memory stays close to this (plus O(G B) bookkeeping).
        codebook_sq_norms: optional precomputed ``||c||^2`` (G, N) in fp32 (saves one pass when
            the caller searches the same codebook many times).
        exact: certify and repair near ties (default).  ``False`` returns the raw argmin of the
            expansion, which may differ from the direct formula on near ties.

    Returns:
        (G, B) int64 indices into each group's codebook.
    """
    if x.dim() != 3 or codebooks.dim() != 3:
        raise ConfigError(f"nearest_code expects x (G,B,d) and codebooks (G,N,d); got {tuple(x.shape)} and {tuple(codebooks.shape)}")
    G, B, d = x.shape
    Gc, N, dc = codebooks.shape
    if Gc != G or dc != d:
        raise ConfigError(f"x {tuple(x.shape)} and codebooks {tuple(codebooks.shape)} disagree on groups or d")
    if memory_budget_bytes < _F32:
        raise ConfigError("memory_budget_bytes must allow at least one float32")
    device = x.device
    out_idx = torch.empty(G, B, dtype=torch.long, device=device)
    if B == 0 or G == 0:
        return out_idx
    if N == 0:
        raise ConfigError("codebooks are empty (N = 0)")
    if N == 1:
        return out_idx.zero_()

    with torch.autocast(device_type=device.type, enabled=False), _ieee_fp32_matmul(device):
        x = x.detach().float()  # (G, B, d): small
        codebooks = codebooks.detach()  # converted to fp32 block by block (no full copy)
        c_sq_given = codebook_sq_norms.detach().float() if codebook_sq_norms is not None else None
        budget_elems = memory_budget_bytes // _F32
        if device.type == "cpu":
            budget_elems = min(budget_elems, CPU_BLOCK_BYTES // _F32)
        # per code in a block: its fp32 copy and the temporary of ||c||^2 (2d) + the norm itself (1)
        gs, bs, ns = _chunk_sizes(G, B, N, budget_elems, per_code=2 * d + 1)

        best_v = torch.empty(G, B, device=device)
        second_v = torch.empty(G, B, device=device)
        for g0 in range(0, G, gs):
            g1 = min(G, g0 + gs)
            for b0 in range(0, B, bs):
                b1 = min(B, b0 + bs)
                xb = x[g0:g1, b0:b1]  # (g, b, d)
                bv = bsec = bi = None
                xa = torch.cat([xb, xb.new_ones(*xb.shape[:2], 1)], -1)  # (g, b, d+1): [x, 1]
                for n0 in range(0, N, ns):
                    n1 = min(N, n0 + ns)
                    cb = codebooks[g0:g1, n0:n1]  # (g, n, d) view, any dtype
                    ca = torch.empty(g1 - g0, d + 1, n1 - n0, device=device)  # (g, d+1, n): [-2c, ||c||^2]
                    torch.mul(cb.transpose(1, 2), -2.0, out=ca[:, :d])  # exact (power of two), casts to fp32
                    if c_sq_given is None:
                        torch.sum(ca[:, :d].square(), 1, out=ca[:, d]).mul_(0.25)  # ||c||^2 (scaling by 4 is exact)
                    else:
                        ca[:, d] = c_sq_given[g0:g1, n0:n1]
                    del cb
                    # a[g, b, n] = ||c_n||^2 - 2 x_b . c_n   (g, b, n): one batched GEMM, no sqrt
                    a = torch.bmm(xa, ca)
                    del ca
                    v1, i1, v2 = _block_top2(a, exact)
                    del a
                    i1 = i1 + n0
                    if bv is None:
                        bv, bsec, bi = v1, v2, i1
                    else:
                        better = v1 < bv  # strict: the earlier (lower-index) chunk wins ties
                        bsec = torch.where(better, torch.minimum(bv, v2), torch.minimum(bsec, v1))
                        bv = torch.where(better, v1, bv)
                        bi = torch.where(better, i1, bi)
                out_idx[g0:g1, b0:b1] = bi
                best_v[g0:g1, b0:b1] = bv
                second_v[g0:g1, b0:b1] = bsec
        if not exact:
            return out_idx

        # certificate (see `_pair_tolerance`): gap between best and second-best expanded values
        x_sq = x.pow(2).sum(-1)  # (G, B)
        tol = _pair_tolerance(x_sq, best_v, second_v, _error_coefficient(d))
        uncertain = ~((second_v - best_v) > tol)  # also catches NaN / inf
        if bool(uncertain.any()):
            g_idx, b_idx = uncertain.nonzero(as_tuple=True)
            out_idx[g_idx, b_idx] = _repair_rows(x, codebooks, g_idx, b_idx, budget_elems)
    return out_idx


def nearest_code_bruteforce(x: Tensor, codebooks: Tensor) -> Tensor:
    """Reference: direct formula, whole (G, B, N, d) tensor.  Tests and tiny problems only."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.detach().float()
        codebooks = codebooks.detach().float()
        return ((x[:, :, None, :] - codebooks[:, None, :, :]) ** 2).sum(-1).argmin(-1)
