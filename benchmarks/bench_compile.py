"""Does torch.compile pay for the rectifier?  Eager vs compiled forward+backward, same process.

    OMP_NUM_THREADS=1 python benchmarks/bench_compile.py [--preset paper-512t] [--batch 32] [--steps 5]

Builds the preset's rectifier, times ``steps`` forward+backward passes on random latents in eager
mode, then compiles it (``torch.compile``, default mode) and reports the compile time (first call)
and the steady-state step time, both precisions optional (``--bf16``: under CPU bf16 autocast, with
the trainer's fp32 pin for depthwise convolutions).  The break-even is ``compile_s / (eager_s -
compiled_s)`` steps.  Prints one JSON object (machine, command).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from _common import command_line, emit, machine_info, median


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper-512t")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from revq.rectifier import build_rectifier
    from revq.training.fastpath import pin_fp32_depthwise
    from revq.training.presets import get_preset

    cfg = get_preset(args.preset).model
    torch.manual_seed(0)
    net = build_rectifier(cfg.rectifier, cfg.latent_shape[0], latent_shape=cfg.latent_shape)
    if args.bf16:
        pin_fp32_depthwise(net)
    x = torch.randn(args.batch, *cfg.latent_shape)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    def step(fn) -> float:
        t = time.perf_counter()
        with ctx():
            y = fn(x)
        y.float().square().mean().backward()
        net.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    step(net)  # warm-up
    eager = [step(net) for _ in range(args.steps)]
    compiled = torch.compile(net)
    compile_s = step(compiled)  # first call: tracing + code generation + the step itself
    comp = [step(compiled) for _ in range(args.steps)]
    e, c = median(eager), median(comp)
    result = {
        "benchmark": "torch_compile_rectifier",
        "preset": args.preset, "batch": args.batch, "bf16": args.bf16, "steps": args.steps,
        "eager_step_s": eager, "compiled_step_s": comp, "first_compiled_call_s": compile_s,
        "eager_median_s": e, "compiled_median_s": c, "speedup": e / c,
        "break_even_steps": (compile_s / (e - c)) if e > c else None,
        "machine": machine_info(), "command": command_line(),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
