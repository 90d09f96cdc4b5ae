"""Training-step benchmark: samples/s and peak RSS of one ReVQ training step, against a
straightforward baseline step built here on the same model.

Variants (each runs in its own subprocess, so peak RSS is clean; rounds are interleaved
baseline / candidates / baseline / ... so machine noise hits all of them alike):

* ``baseline``  -- the straightforward step: nearest code by ``torch.vmap``-ed ``torch.cdist`` +
  argmin over the full (groups x batch x codes) distance matrix (group-chunked only where it
  would not fit in RAM), dense ``torch.optim.AdamW`` over all codebook rows, fp32 rectifier;
* ``fp32``      -- revq's step as the trainer runs it (exact chunked search, dense AdamW, fp32);
* ``bf16``      -- the same under bf16 autocast (rectifier in bf16; search and codebooks fp32);
* ``bf16_sparse`` / ``fp32_sparse`` -- plus sparse codebook gradients and
  :class:`revq.training.optim.RowSparseAdamW` (only rows touched in the last ~90 steps are updated);
* ``bf16_cl``   -- bf16 with a channels-last rectifier and inputs (a lever to measure);
* ``bf16_fast`` / ``bf16_fast_sparse`` -- bf16 with the 5x5 depthwise convolutions pinned to fp32
  (:func:`revq.training.fastpath.pin_fp32_depthwise`: their bf16 backward is ~4x slower on CPU).

Every variant trains from the same initialisation on the same batch sequence of real latents
(``--latents``: a revq latent cache or a ``latents-*.npy`` shard), so ``loss_last`` (mean loss of
the last 3 steps) compares quality after the same number of steps; ``--steps`` sets how many.
The first ``--warmup`` steps are excluded from timing.

    python benchmarks/bench_train_step.py --preset paper-512t
    python benchmarks/bench_train_step.py --preset paper-256t-l --variants baseline bf16_sparse --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, command_line, emit, hwm_bytes, machine_info, median, rss_bytes  # noqa: E402

DEFAULT_LATENTS = "/work/cache/tin-train"
VARIANTS = ("baseline", "fp32", "bf16", "bf16_sparse", "fp32_sparse", "bf16_cl", "bf16_fast", "bf16_fast_sparse")


# ----------------------------------------------------------------------------- data
def load_latents(path: str, limit: int) -> np.ndarray:
    p = Path(path)
    if p.is_file():
        return np.load(p, mmap_mode="r")[:limit].astype(np.float32)
    try:
        from revq.data.latent_cache import LatentCache

        cache = LatentCache(p)
        return np.asarray(cache.get(np.arange(min(limit, len(cache)))), dtype=np.float32)
    except Exception:  # noqa: BLE001 - a cache still being written: read its finished shards
        shards = sorted((p / "shards").glob("latents-*.npy"))
        if not shards:
            raise SystemExit(f"no latents under {path}")
        arrs, n = [], 0
        for s in shards:
            a = np.load(s, mmap_mode="r")
            arrs.append(np.asarray(a[: limit - n], dtype=np.float32))
            n += len(arrs[-1])
            if n >= limit:
                break
        return np.concatenate(arrs)


# ----------------------------------------------------------------------------- baseline pieces
def cdist_vmap(x, cb, gchunk):
    f = torch.vmap(lambda xg, cg: torch.cdist(xg, cg).argmin(-1))
    return torch.cat([f(x[g : g + gchunk], cb[g : g + gchunk]) for g in range(0, x.shape[0], gchunk)])


def baseline_forward(model, latents, gchunk):
    """ReVQ.forward (decoupled objective) with the authors' search: cdist over the full matrix."""
    q = model.quantizer
    z = model.normalizer.normalize(latents.float())
    b = z.shape[0]
    with torch.no_grad():
        idx_g = cdist_vmap(q._grouped(q.to_tokens(z)), q.codebooks.detach(), gchunk)
    indices = q._ungrouped(idx_g, b).contiguous()
    q._count(idx_g)
    z_q = q.lookup(indices)
    quant_loss = F.mse_loss(z_q, z)
    z_rect = model.rectifier(z_q.detach())
    rect_loss = F.mse_loss(z_rect.float(), z)
    return {"loss": quant_loss + rect_loss, "quant_loss": quant_loss, "rect_loss": rect_loss}


# ----------------------------------------------------------------------------- worker
def worker(a) -> dict:
    from revq.model import ReVQ
    from revq.training import trainer as T
    from revq.training.presets import get_preset

    torch.manual_seed(0)
    cfg = get_preset(a.preset)
    cfg.batch_size = a.batch
    mcfg = cfg.model
    if mcfg.objective != "decoupled":
        raise SystemExit("the baseline step implements the decoupled objective only")
    data = torch.from_numpy(load_latents(a.latents, a.max_latents))
    n_val = min(512, len(data) // 8)
    val, data = data[:n_val], data[n_val:]
    model = ReVQ(mcfg)
    mean, std = data.mean(0), data.std(0).clamp_min(1e-6)
    model.normalizer.set_stats(mean, std)
    G, N, d = model.quantizer.codebooks.shape
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if N <= 4 * len(data):  # codebooks from data (+ noise so duplicates do not tie), as training does
            model.quantizer.init_from_data(model.normalizer.normalize(data), generator=gen)
            model.quantizer.codebooks.add_(0.05 * torch.randn(G, N, d, generator=gen))
        # else: the N(0, 1) placeholder init (normalised latents are ~N(0, 1) per element)
    model.train()
    variant = a.variant
    if "_fast" in variant:
        from revq.training.fastpath import pin_fp32_depthwise

        pin_fp32_depthwise(model.rectifier)
    if variant == "bf16_cl":
        model.rectifier.to(memory_format=torch.channels_last)
    sparse = variant.endswith("_sparse")
    bf16 = variant.startswith("bf16")
    if sparse:
        from revq.training.optim import build_row_sparse_optimizer

        opt = build_row_sparse_optimizer(model, cfg)
    else:
        opt = T.build_optimizer(model, cfg)
    clip_per_group = T.clip_per_group  # sparse-aware
    gchunk = max(1, min(G, int(a.baseline_max_gb * 2**30 // (a.batch * N * 4))))
    rng = np.random.default_rng(0)
    order = [torch.from_numpy(np.sort(rng.choice(len(data), a.batch, replace=False))) for _ in range(a.steps)]
    rss_model = rss_bytes()
    steps = []
    for i in range(a.steps):
        z = data[order[i]]
        if variant == "bf16_cl":
            z = z.contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        if variant == "baseline":
            out = baseline_forward(model, z, gchunk)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(z)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        t2 = time.perf_counter()
        clip_per_group(opt, cfg.grad_clip)
        opt.step()
        t3 = time.perf_counter()
        steps.append({"forward_s": t1 - t0, "backward_s": t2 - t1, "optim_s": t3 - t2, "step_s": t3 - t0,
                      "loss": float(out["loss"]), "rect_loss": float(out["rect_loss"]), "quant_loss": float(out["quant_loss"])})
        print(json.dumps({"step": i, **steps[-1]}), file=sys.stderr, flush=True)
    # held-out latent MSE after training (eval mode, fp32, exact search)
    model.eval()
    with torch.no_grad():
        o = model(val)
        val_mse = float(F.mse_loss(o["z_rect"].float(), o["z"]))
        val_qmse = float(F.mse_loss(o["z_q"].float(), o["z"]))
    timed = steps[a.warmup:]
    step_med = median([s["step_s"] for s in timed])
    return {
        "variant": variant, "preset": a.preset, "batch": a.batch, "steps": a.steps, "warmup": a.warmup,
        "params": model.num_parameters(), "baseline_group_chunk": gchunk if variant == "baseline" else None,
        "samples_per_s": a.batch / step_med, "step_s_median": step_med,
        "phase_median_s": {k: median([s[k] for s in timed]) for k in ("forward_s", "backward_s", "optim_s")},
        "losses": [s["loss"] for s in steps], "loss_last": float(np.mean([s["loss"] for s in steps[-3:]])),
        "val_latent_mse": val_mse, "val_quant_mse": val_qmse,
        "rss_after_build_gb": rss_model / 2**30, "peak_rss_gb": hwm_bytes() / 2**30,
        "num_train_latents": len(data), "torch_threads": torch.get_num_threads(),
    }


def paired(a) -> dict:
    """Baseline and ``--variant`` in ONE process, steps alternating (order flipped every step), so
    load changes on a shared machine hit both alike.  Same init, same batches."""
    import copy

    from revq.model import ReVQ
    from revq.training import trainer as T
    from revq.training.fastpath import pin_fp32_depthwise
    from revq.training.optim import build_row_sparse_optimizer
    from revq.training.presets import get_preset

    torch.manual_seed(0)
    cfg = get_preset(a.preset)
    cfg.batch_size = a.batch
    data = torch.from_numpy(load_latents(a.latents, a.max_latents))
    base = ReVQ(cfg.model)
    base.normalizer.set_stats(data.mean(0), data.std(0).clamp_min(1e-6))
    G, N, d = base.quantizer.codebooks.shape
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if N <= 4 * len(data):
            base.quantizer.init_from_data(base.normalizer.normalize(data), generator=gen)
            base.quantizer.codebooks.add_(0.05 * torch.randn(G, N, d, generator=gen))
    cand = copy.deepcopy(base)
    base.train(), cand.train()
    v = a.variant
    if "_fast" in v:
        pin_fp32_depthwise(cand.rectifier)
    opt_b, clip_b = T.build_optimizer(base, cfg), T.clip_per_group
    opt_c = build_row_sparse_optimizer(cand, cfg) if v.endswith("_sparse") else T.build_optimizer(cand, cfg)
    clip_c = T.clip_per_group  # sparse-aware
    gchunk = max(1, min(G, int(a.baseline_max_gb * 2**30 // (a.batch * N * 4))))
    rng = np.random.default_rng(0)
    order = [torch.from_numpy(np.sort(rng.choice(len(data), a.batch, replace=False))) for _ in range(a.steps)]

    def step(which, z):
        t0 = time.perf_counter()
        if which == "baseline":
            out = baseline_forward(base, z, gchunk)
            opt, clip = opt_b, clip_b
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=v.startswith("bf16")):
                out = cand(z)
            opt, clip = opt_c, clip_c
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        clip(opt, cfg.grad_clip)
        opt.step()
        return time.perf_counter() - t0, float(out["loss"])

    rec = {"baseline": [], v: []}
    for i, idx in enumerate(order):
        z = data[idx]
        for which in (("baseline", v) if i % 2 == 0 else (v, "baseline")):
            rec[which].append(step(which, z))
        print(json.dumps({"step": i, **{k: r[-1] for k, r in rec.items()}}), file=sys.stderr, flush=True)
    w = a.warmup
    ratios = [b[0] / c[0] for b, c in zip(rec["baseline"][w:], rec[v][w:])]
    return {"mode": "paired", "preset": a.preset, "batch": a.batch, "variant": v, "steps": a.steps, "warmup": w,
            "step_s": {k: [t for t, _ in r] for k, r in rec.items()},
            "losses": {k: [l for _, l in r] for k, r in rec.items()},
            "speedup_per_step": ratios, "speedup_median": median(ratios),
            "samples_per_s_median": {k: a.batch / median([t for t, _ in r[w:]]) for k, r in rec.items()},
            "peak_rss_gb_both_models": hwm_bytes() / 2**30}


def run_variant(a, variant: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--preset", a.preset, "--variant", variant,
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch), "--latents", a.latents,
           "--max-latents", str(a.max_latents), "--baseline-max-gb", str(a.baseline_max_gb)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {"variant": variant, "error": proc.stderr[-3000:], "returncode": proc.returncode}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper-512t")
    p.add_argument("--variants", nargs="+", default=["baseline", "fp32", "bf16", "bf16_sparse"], choices=VARIANTS)
    p.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of the whole variant list")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--latents", default=DEFAULT_LATENTS)
    p.add_argument("--max-latents", type=int, default=8192)
    p.add_argument("--baseline-max-gb", type=float, default=4.5, help="largest distance matrix the baseline may materialise")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    p.add_argument("--paired", default=None, metavar="VARIANT",
                   help="baseline and VARIANT in one process, alternating steps (most robust ratio on a noisy machine)")
    a = p.parse_args(argv)
    if a.paired:
        a.variant = a.paired
        res = {"benchmark": "train_step_paired", "command": command_line(), "machine": machine_info(), **paired(a)}
        res["loadavg_end"] = os.getloadavg()
        emit(res, a.out)
        return 0
    if a.worker:
        print(json.dumps(worker(a)))
        return 0
    res = {"benchmark": "train_step", "command": command_line(), "machine": machine_info(), "preset": a.preset,
           "batch": a.batch, "runs": []}
    for r in range(a.rounds):
        for v in a.variants:
            out = run_variant(a, v)
            out["round"] = r
            res["runs"].append(out)
            print(json.dumps({k: out.get(k) for k in ("variant", "round", "samples_per_s", "peak_rss_gb", "loss_last", "error")}),
                  file=sys.stderr, flush=True)
    # ratios vs the baseline of the same round
    summary = {}
    for v in a.variants:
        ratios = []
        for r in range(a.rounds):
            base = next((x for x in res["runs"] if x["variant"] == "baseline" and x["round"] == r and "samples_per_s" in x), None)
            cur = next((x for x in res["runs"] if x["variant"] == v and x["round"] == r and "samples_per_s" in x), None)
            if base and cur:
                ratios.append(cur["samples_per_s"] / base["samples_per_s"])
        runs = [x for x in res["runs"] if x["variant"] == v and "samples_per_s" in x]
        if runs:
            summary[v] = {
                "samples_per_s_median": median([x["samples_per_s"] for x in runs]),
                "speedup_vs_baseline_per_round": ratios,
                "peak_rss_gb_max": max(x["peak_rss_gb"] for x in runs),
                "loss_last": runs[0]["loss_last"], "val_latent_mse": runs[0]["val_latent_mse"],
            }
    res["summary"] = summary
    res["loadavg_end"] = os.getloadavg()
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
