"""FLOP / byte model of a ReVQ training run on a GPU (no GPU needed: it is arithmetic).

Per sample, for a preset (latent 32x8x8 = 64 positions, T tokens of d values, N codes per group):

* rectifier fwd+bwd: ~3 x 2 x params x 64 FLOP (every EfficientViT layer is per-position: 1x1 /
  depthwise convs, linear attention; the decoupled objective needs no gradient w.r.t. its input);
  run in bf16 on tensor cores at an assumed ``--mfu`` of peak;
* search: 2 T N d FLOP, in fp32 on CUDA cores (exactness: TF32 is off) at ``--search-eff`` of
  peak; plus one read of the fp32 codebook per step;
* optimizer per step: AdamW reads param, grad, exp_avg, exp_avg_sq and writes three of them
  (28 bytes per parameter); dense = all parameters, row-sparse = rectifier + the active rows
  (~``window`` x rows touched per step, at most all rows); dense additionally zero-fills and writes
  the dense codebook gradient (8 bytes per codebook parameter);
* rectifier activation traffic: ``--act-bytes`` per sample (bf16, fwd+bwd), bandwidth-bound.

Compute and traffic are added (no overlap assumed) -- a pessimistic roofline.

    python benchmarks/flop_model.py
"""

from __future__ import annotations

import argparse
import json

GPUS = {  # dense peak numbers from the vendors' spec sheets
    "RTX 4090": {"bf16_tflops": 165.2, "fp32_tflops": 82.6, "tb_s": 1.008},  # bf16 with fp32 accumulate
    "H100 SXM": {"bf16_tflops": 989.0, "fp32_tflops": 66.9, "tb_s": 3.35},
}
PRESETS = {  # tokens, codes, dim, rectifier params (see revq.rectifier), batch (paper), paper hours on a 4090
    "paper-512t": (512, 16384, 4, 14_069_792, 128, 22),
    "paper-256t-b": (256, 65536, 8, 72_973_344, 256, 26),
    "paper-256t-l": (256, 262144, 8, 18_660_896, 128, 40),
}


def estimate(preset, gpu, *, samples, mfu, search_eff, act_bytes, window):
    T, N, d, rp, batch, paper_h = PRESETS[preset]
    g = GPUS[gpu]
    steps = samples / batch
    cb = T * N * d
    rect_flop = 3 * 2 * rp * 64 * samples
    search_flop = 2 * T * N * d * samples
    t_rect = rect_flop / (g["bf16_tflops"] * 1e12 * mfu) + act_bytes * samples / (g["tb_s"] * 1e12)
    t_search = search_flop / (g["fp32_tflops"] * 1e12 * search_eff) + steps * cb * 4 / (g["tb_s"] * 1e12)
    active_rows = min(T * N, window * T * batch)
    t_opt_dense = steps * ((cb + rp) * 28 + cb * 8) / (g["tb_s"] * 1e12)
    t_opt_sparse = steps * ((active_rows * d + rp) * 28) / (g["tb_s"] * 1e12)
    h = lambda s: round(s / 3600, 2)  # noqa: E731
    return {
        "preset": preset, "gpu": gpu, "steps": int(steps),
        "rectifier_h": h(t_rect), "search_h": h(t_search),
        "optimizer_dense_h": h(t_opt_dense), "optimizer_row_sparse_h": h(t_opt_sparse),
        "total_dense_h": h(t_rect + t_search + t_opt_dense),
        "total_row_sparse_h": h(t_rect + t_search + min(t_opt_sparse, t_opt_dense)),
        "paper_4090_h": paper_h,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=float, default=1_281_167 * 100, help="ImageNet train x 100 epochs")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--search-eff", type=float, default=0.6)
    p.add_argument("--act-bytes", type=float, default=30e6)
    p.add_argument("--window", type=int, default=88)
    a = p.parse_args(argv)
    rows = [estimate(pr, g, samples=a.samples, mfu=a.mfu, search_eff=a.search_eff, act_bytes=a.act_bytes, window=a.window)
            for pr in PRESETS for g in GPUS]
    print(json.dumps({"assumptions": vars(a), "estimates": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
