"""Nearest-code search benchmark: revq.search.nearest_code vs the two usual full-matrix baselines.

For each config (groups x codes x dim) at a given batch, measures samples/s (median over
interleaved repeats) and peak extra memory (RSS high-water mark above the RSS before the call) of

* ``revq``: :func:`revq.search.nearest_code` (exact fp32 argmin, chunked to a 256 MiB budget,
  ||c||^2 computed per call -- the training path, where codebooks change every step);
* ``revq_cached_norms``: the same with ``||c||^2`` precomputed once (the frozen-codebook
  tokenize/eval path);
* ``cdist_vmap``: ``torch.vmap`` over groups of ``torch.cdist(x_g, c_g).argmin(-1)`` -- the
  authors' approach; the whole (groups x batch x codes) distance matrix of a group chunk is
  materialised;
* ``einsum``: ``||x||^2 - 2 x.c + ||c||^2`` over the full matrix, then argmin (common in VQ libs).

The baselines process as many groups at once as fit ``--baseline-max-gb`` of distance matrix
(all groups when possible; the 256 x 262,144 config needs 34 GB for the full matrix, which this
machine does not have, so it runs in group chunks and the JSON says so).  ``mismatch`` is the
fraction of queries whose index differs from the exact fp32 reference (``revq``).

    python benchmarks/bench_search.py                       # both paper configs, batch 128
    python benchmarks/bench_search.py --configs 512x16384x4 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, emit, machine_info, median, peak_extra, timed  # noqa: E402

from revq.search import DEFAULT_MEMORY_BUDGET, nearest_code  # noqa: E402


def _group_chunk(G: int, B: int, N: int, max_bytes: float) -> int:
    per_group = B * N * 4
    return max(1, min(G, int(max_bytes // per_group)))


def cdist_vmap(x, cb, gchunk):
    f = torch.vmap(lambda xg, cg: torch.cdist(xg, cg).argmin(-1))
    return torch.cat([f(x[g : g + gchunk], cb[g : g + gchunk]) for g in range(0, x.shape[0], gchunk)])


def einsum_full(x, cb, gchunk):
    out = []
    for g in range(0, x.shape[0], gchunk):
        xg, cg = x[g : g + gchunk], cb[g : g + gchunk]
        dist = xg.pow(2).sum(-1, keepdim=True) - 2 * torch.einsum("gbd,gnd->gbn", xg, cg) + cg.pow(2).sum(-1)[:, None, :]
        out.append(dist.argmin(-1))
    return torch.cat(out)


def run_config(G: int, N: int, d: int, B: int, repeats: int, max_gb: float, seed: int, only=None) -> dict:
    gen = torch.Generator().manual_seed(seed)
    cb = torch.randn(G, N, d, generator=gen)
    # queries near the codebook distribution (normalised latents are ~N(0,1) per element)
    x = torch.randn(G, B, d, generator=gen)
    gchunk = _group_chunk(G, B, N, max_gb * 2**30)
    c_sq = cb.pow(2).sum(-1)
    methods = {
        "revq": lambda: nearest_code(x, cb),
        "revq_cached_norms": lambda: nearest_code(x, cb, codebook_sq_norms=c_sq),
        "cdist_vmap": lambda: cdist_vmap(x, cb, gchunk),
        "einsum": lambda: einsum_full(x, cb, gchunk),
    }
    if only:
        methods = {k: v for k, v in methods.items() if k in only or k == "revq"}
    times = {k: [] for k in methods}
    mem = {}
    results = {}
    for k, fn in methods.items():  # warm-up + memory (one call each)
        results[k], mem[k] = peak_extra(fn)
    for _ in range(repeats):  # interleaved timing
        for k, fn in methods.items():
            _, t = timed(fn)
            times[k].append(t)
    ref = results["revq"]
    out = {
        "config": f"{G}x{N}x{d}",
        "groups": G, "codes": N, "dim": d, "batch": B,
        "revq_memory_budget_bytes": DEFAULT_MEMORY_BUDGET,
        "baseline_group_chunk": gchunk,
        "baseline_full_matrix": gchunk == G,
        "full_distance_matrix_gb": G * B * N * 4 / 2**30,
        "methods": {},
    }
    for k in methods:
        t = median(times[k])
        out["methods"][k] = {
            "samples_per_s": B / t,
            "seconds_median": t,
            "seconds_all": times[k],
            "peak_extra_mem_gb": mem[k] / 2**30,
            "mismatch_vs_exact": float((results[k] != ref).float().mean()),
        }
    for b in ("cdist_vmap", "einsum"):
        if b in out["methods"]:
            base = out["methods"][b]["samples_per_s"]
            out[f"speedup_vs_{b}"] = {k: v["samples_per_s"] / base for k, v in out["methods"].items()}
    print(json.dumps({k: out[k] for k in out if k.startswith("speedup") or k == "config"}), file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["512x16384x4", "256x262144x8"], help="GROUPSxCODESxDIM")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline-max-gb", type=float, default=1.0,
                   help="largest distance matrix a baseline may materialise (cdist needs ~3x this in temporaries)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=None, help="subset of revq_cached_norms cdist_vmap einsum (revq always runs)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    res = {"benchmark": "search", "command": command_line(), "machine": machine_info(), "configs": []}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    for c in a.configs:
        G, N, d = (int(v) for v in c.lower().split("x"))
        res["configs"].append(run_config(G, N, d, a.batch, a.repeats, a.baseline_max_gb, a.seed, a.methods))
        if a.out:  # partial results survive a later config running out of memory
            Path(a.out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    res["loadavg_end"] = machine_info()["loadavg"]
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
