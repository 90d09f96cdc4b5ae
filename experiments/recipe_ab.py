"""Recipe A/B at a fixed compute budget (issue #10), and the shared budgeted-arm machinery that
``experiments/ablations.py`` reuses (issue #6).

Every arm starts from **the authors' recipe expressed as a config of our own code** (decoupled
loss, AdamW two groups lr 1e-2 / 5e-4, per-epoch exponential decay to 5 %, grad clip 1 per group,
batch 128, random-sample codebook init, non-residual EfficientViT rectifier width 128 depth 2, reset
capped at 20 % of a codebook per epoch) and applies ``--set key=value`` overrides (the same keys as
``revq train --set``).  Each arm:

* trains with the trainer's own pieces (model, optimizer groups, codebook init, schedule, per-group
  clipping, non-activation reset with AdamW-moment zeroing) until its **compute budget** is spent.
  The budget is process CPU seconds (all threads; ``time.process_time``), not wall-clock: this
  machine is shared, and CPU time is far less sensitive to other people's jobs than wall time.
  Codebook initialisation (k-means included) counts against the budget; validation does not.
  After 6 steps the step cost is measured and the schedule's horizon fixed to the number of
  steps the budget allows, so every schedule decays over the arm's whole run.
* validates on the first ``--val-limit`` held-out latents (latent MSE with and without the
  rectifier, code usage) at every epoch boundary and at the end;
* measures PSNR on the first ``--psnr-limit`` val images: the arm's reconstructed *cached* val
  latents through the TAEF2 decoder, clamped and rounded to 8 bit, against the original images
  rounded to 8 bit (RGB, data range 1, mean over images) — ``revq eval``'s protocol minus the
  re-encoding of the images (the cache holds exactly those encodings);
* prints and appends one JSON line to ``--jsonl``.

``--table`` rewrites the marked table in docs/results.md from the JSON lines.

Example (one arm):
    python experiments/recipe_ab.py --name authors-512 --tokens 512 --budget-cpu-s 240
    python experiments/recipe_ab.py --name cosine --tokens 512 --set schedule=cosine warmup_steps=20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRAIN = "/work/cache/tin-train"
DEFAULT_VAL = "/work/cache/tin-val"
DEFAULT_VAL_IMAGES = [
    "/work/shared/data/tiny-imagenet-200/val-000000.tar.gz",
    "/work/shared/data/tiny-imagenet-200/val-000001.tar.gz",
]
IMAGE_CACHE = Path(os.environ.get("REVQ_EXP_CACHE", "/work/cache/exp"))


# ----------------------------------------------------------------------------- configs
def authors_config(tokens: int):
    """The authors' recipe (reference-implementation-facts.md) at CPU size, as our TrainConfig."""
    from revq.config import AutoencoderInfo, RectifierConfig, ReVQConfig
    from revq.training.config import TrainConfig

    model = ReVQConfig(
        latent_shape=(32, 8, 8), num_tokens=tokens, codebook_size=4096, split="channel",
        normalization="element", objective="decoupled", reset_noise=0.1, reset_max_fraction=0.2,
        rectifier=RectifierConfig(kind="efficientvit", width=128, depth=2, residual=False),
        autoencoder=AutoencoderInfo(name="taef2", resolution=64, latent_shape=(32, 8, 8)),
    )
    return TrainConfig(model=model, epochs=1, batch_size=128, lr=1e-2, rectifier_lr_ratio=0.05,
                       rectifier_weight_decay=1e-4, grad_clip=1.0, schedule="exponential",
                       final_lr_ratio=0.05, warmup_steps=0, bf16=False, init_method="random",
                       init_samples=65536, reset_every_epochs=1, seed=0, device="cpu",
                       progress=False, tensorboard=False, prefetch=False)


def make_config(tokens: int, overrides: list[str], *, base: str = "authors"):
    from revq.config import apply_overrides

    if base == "authors":
        cfg = authors_config(tokens)
    else:  # a preset name, e.g. cpu-512t
        from revq.training.presets import get_preset

        cfg = get_preset(base)
        cfg.device, cfg.progress, cfg.tensorboard, cfg.prefetch = "cpu", False, False, False
    apply_overrides(cfg, list(overrides))
    return cfg


# ----------------------------------------------------------------------------- data
def open_caches(train: str, val: str):
    from revq.data.latent_cache import LatentCache

    return LatentCache(train), LatentCache(val)


def val_images(limit: int, val_cache, sources=DEFAULT_VAL_IMAGES) -> torch.Tensor:
    """First ``limit`` val images as uint8 (n,3,64,64), cached on disk; checked to be in the
    latent cache's key order."""
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    path = IMAGE_CACHE / "val_images_uint8.npy"
    keys_path = IMAGE_CACHE / "val_images_keys.json"
    if path.exists():
        arr = np.load(path, mmap_mode="r")
        keys = json.loads(keys_path.read_text())
    else:
        from revq.data.images import open_image_source

        src = open_image_source(list(sources), resolution=64)
        ims, keys = [], []
        for key, im, _ in src:
            ims.append((torch.as_tensor(im).clamp(0, 1) * 255).round().to(torch.uint8).numpy())
            keys.append(key)
        arr = np.stack(ims)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, path)
        keys_path.write_text(json.dumps(keys))
    cache_keys = val_cache.keys
    n = min(limit, len(arr))
    if list(keys[:n]) != list(cache_keys[:n]):
        raise SystemExit("val image order differs from the val latent cache's key order")
    return torch.from_numpy(np.array(arr[:n]))


_AE = None


def autoencoder():
    global _AE
    if _AE is None:
        from revq.autoencoders import load_autoencoder

        _AE = load_autoencoder("taef2", device="cpu")
    return _AE


@torch.inference_mode()
def psnr_of_latents(latents: torch.Tensor, originals_u8: torch.Tensor, *, batch: int = 250, ssim: bool = False) -> dict:
    """Decode latents with TAEF2, 8-bit round, PSNR (and optionally SSIM) against the originals."""
    from revq.evaluation import metrics as M

    ae = autoencoder()
    ps, ss = [], []
    for i in range(0, len(latents), batch):
        rec = M.to_8bit(ae.decode(latents[i:i + batch].float()))
        orig = originals_u8[i:i + batch].float() / 255.0
        ps.append(M.psnr(rec, orig).double())
        if ssim:
            ss.append(M.ssim(rec, orig).double())
    out = {"psnr": float(torch.cat(ps).mean())}
    if ssim:
        out["ssim"] = float(torch.cat(ss).mean())
    return out


def baseline_psnr(val_cache, originals_u8: torch.Tensor, *, ssim: bool = False) -> dict:
    """Continuous TAEF2 round trip on the same images (cached per count)."""
    n = len(originals_u8)
    path = IMAGE_CACHE / f"baseline_{n}{'_ssim' if ssim else ''}.json"
    if path.exists():
        return json.loads(path.read_text())
    t = time.perf_counter()
    res = psnr_of_latents(val_cache.get(np.arange(n)), originals_u8, ssim=ssim)
    res["seconds"] = time.perf_counter() - t
    path.write_text(json.dumps(res))
    return res


# ----------------------------------------------------------------------------- the arm
def validate_arm(model, val_cache, cfg, limit: int) -> dict:
    from revq.training import distributed as D
    from revq.training.trainer import validate

    old = cfg.val_limit
    cfg.val_limit = limit
    try:
        out = validate(model, val_cache, cfg, D.DistInfo())
    finally:
        cfg.val_limit = old
    return out


@torch.inference_mode()
def reconstruct_latents(model, cache, n: int, batch: int = 500) -> torch.Tensor:
    model.eval()
    outs = [model.reconstruct(cache.get(np.arange(i, min(n, i + batch)))) for i in range(0, n, batch)]
    return torch.cat(outs)


def train_budgeted(cfg, train_cache, val_cache, *, budget_cpu_s: float, val_limit: int,
                   max_steps: int | None = None, epoch_val: bool = True, log=print):
    """Train ``cfg`` until ``budget_cpu_s`` process-CPU seconds are spent (init included,
    validation excluded).  Returns (model, record)."""
    from revq.training import distributed as D
    from revq.training.schedule import LRSchedule
    from revq.training.trainer import (build_model, build_optimizer, clip_per_group, epoch_order,
                                       init_codebooks, validate_setup, zero_moments, _mix)

    info = D.DistInfo()
    validate_setup(cfg, train_cache, val_cache)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    c0, w0 = time.process_time(), time.perf_counter()
    excluded = 0.0  # CPU seconds of validation (not charged to the budget)
    model = build_model(cfg, train_cache)
    opt = build_optimizer(model, cfg)
    init_codebooks(model, train_cache, cfg, info)
    init_cpu = time.process_time() - c0
    n = len(train_cache)
    spe = n // cfg.batch_size
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    horizon = max_steps or 10**9
    schedule = LRSchedule(cfg.schedule, epochs=(horizon / spe) if max_steps else 1, steps_per_epoch=spe,
                          final_lr_ratio=cfg.final_lr_ratio, warmup_steps=cfg.warmup_steps)
    epochs_log, step, order = [], 0, None
    calib_at, calib_c = 2, None
    model.train()
    while True:
        used = time.process_time() - c0 - excluded
        if step >= horizon or (max_steps is None and used >= budget_cpu_s and step > calib_at + 4):
            break
        if step == calib_at:
            calib_c = used
        if max_steps is None and step == calib_at + 4:
            per_step = (used - calib_c) / 4
            horizon = step + max(1, int((budget_cpu_s - used) / per_step))
            schedule.epochs = horizon / spe  # fractional epochs: exponential decays over the run
        epoch, k = divmod(step, spe)
        if k == 0:
            order = epoch_order(n, cfg.batch_size, seed=cfg.seed, epoch=epoch)
        z = train_cache.get(np.sort(order[k]))
        f = schedule.apply(opt, epoch, step)
        with autocast:
            out = model(z)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        clip_per_group(opt, cfg.grad_clip)
        opt.step()
        step += 1
        if step % spe == 0:  # epoch end: reset (as the trainer) then validate
            rec = {"epoch": step // spe, "step": step, "lr_factor": f,
                   "train_usage": float((model.quantizer.counts > 0).float().mean())}
            if cfg.reset_every_epochs and (step // spe) % cfg.reset_every_epochs == 0:
                gen = torch.Generator().manual_seed(_mix(cfg.seed, epoch, 0x5E5E7))
                res = model.quantizer.reset_dead_codes(noise=cfg.model.reset_noise,
                                                       max_fraction=cfg.model.reset_max_fraction, generator=gen)
                zero_moments(opt, model.quantizer.codebooks, res.reset_rows)
                rec["num_reset"] = res.total
            else:
                model.quantizer.counts.zero_()
            if epoch_val:
                v0 = time.process_time()
                rec.update(validate_arm(model, val_cache, cfg, val_limit))
                excluded += time.process_time() - v0
                model.train()
            log(json.dumps({"epoch_record": rec}))
            epochs_log.append(rec)
    train_cpu = time.process_time() - c0 - excluded
    train_wall = time.perf_counter() - w0
    record = {"steps": step, "epochs_done": step / spe, "steps_per_epoch": spe,
              "train_cpu_s": round(train_cpu, 1), "train_wall_s": round(train_wall, 1),
              "init_cpu_s": round(init_cpu, 1), "epochs": epochs_log,
              "train_quant_loss_last": float(out["quant_loss"].detach()), "train_rect_loss_last": float(out["rect_loss"].detach())}
    return model, record


def run_arm(args, cfg, *, group: str) -> dict:
    train_cache, val_cache = open_caches(args.train, args.val)
    model, rec = train_budgeted(cfg, train_cache, val_cache, budget_cpu_s=args.budget_cpu_s,
                                val_limit=args.val_limit, max_steps=args.max_steps,
                                log=lambda s: print(s, file=sys.stderr, flush=True))
    final = validate_arm(model, val_cache, cfg, args.val_limit)
    rec.update({"final_" + k: v for k, v in final.items()})
    if args.psnr_limit:
        originals = val_images(args.psnr_limit, val_cache)
        base = baseline_psnr(val_cache, originals)
        t = time.perf_counter()
        lat = reconstruct_latents(model, val_cache, len(originals))
        p = psnr_of_latents(lat, originals)
        rec.update({"psnr": p["psnr"], "baseline_psnr": base["psnr"], "psnr_cost_db": base["psnr"] - p["psnr"],
                    "psnr_images": len(originals), "psnr_eval_wall_s": round(time.perf_counter() - t, 1)})
    rec.update({
        "group": group, "name": args.name, "tokens": cfg.model.num_tokens,
        "codebook_size": cfg.model.codebook_size, "overrides": list(args.set), "base": args.base,
        "budget_cpu_s": args.budget_cpu_s, "max_steps": args.max_steps, "val_limit": args.val_limit,
        "rectifier_params": model.num_parameters()["rectifier"],
        "machine": machine(), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    if args.save_model:
        model.save_pretrained(args.save_model)
    return rec


def machine() -> str:
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), load {load:.1f}")


# ----------------------------------------------------------------------------- table
MARK_BEGIN = "<!-- {} table begin -->"
MARK_END = "<!-- {} table end -->"


def fmt(v, spec):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _psnr(r: dict) -> str:
    if r.get("psnr") is None:
        return "not measured"
    return f"{fmt(r.get('psnr'), '.2f')} ({fmt(r.get('psnr_cost_db'), '.2f')})"


def _recipe(r: dict) -> str:
    """'authors' or the preset the arm started from (older records: 'authors' unless run by
    ablations.py, whose arms start from the cpu presets), then the overrides."""
    base = r.get("base") or ("authors" if r.get("group") == "recipe" else f"cpu-{r['tokens']}t" if r["tokens"] in (512, 256) else "cpu-256t")
    return f"{base} {' '.join(r['overrides'])}".strip()


def table_rows(records: list[dict]) -> list[str]:
    head = ("| arm | tokens x codes | recipe: base + overrides | steps (epochs) | train CPU s / wall s "
            "| val MSE (rect) | val MSE (quant only) | val usage | PSNR (cost) |")
    lines = [head, "|" + "---|" * 9]
    for r in records:
        lines.append(
            f"| {r['name']} | {r['tokens']} x {r['codebook_size']} | {_recipe(r)} "
            f"| {r['steps']} ({r['epochs_done']:.2f}) | {r['train_cpu_s']:.0f} / {r['train_wall_s']:.0f} "
            f"| {fmt(r.get('final_val_latent_mse'), '.4f')} | {fmt(r.get('final_val_quant_mse'), '.4f')} "
            f"| {fmt(r.get('final_val_usage'), '.3f')} "
            f"| {_psnr(r)} |")
    return lines


def write_table(jsonl: Path, results_md: Path, group: str) -> None:
    records = [json.loads(l) for l in jsonl.read_text().splitlines() if l.strip()] if jsonl.exists() else []
    records = [r for r in records if r.get("group") == group]
    block = [MARK_BEGIN.format(group)] + table_rows(records) + [MARK_END.format(group)]
    text = results_md.read_text() if results_md.exists() else "# Results\n"
    b, e = MARK_BEGIN.format(group), MARK_END.format(group)
    if b in text and e in text:
        pre, rest = text.split(b, 1)
        post = rest.split(e, 1)[1]
        text = pre + "\n".join(block) + post
    else:
        text = text.rstrip() + "\n\n" + "\n".join(block) + "\n"
    results_md.write_text(text)


# ----------------------------------------------------------------------------- CLI
def parser(group_default: str = "recipe") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="arm")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--base", default="authors", help="'authors' or a preset name (cpu-512t, ...)")
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    p.add_argument("--budget-cpu-s", type=float, default=240.0, help="process CPU seconds per arm (init included)")
    p.add_argument("--max-steps", type=int, default=None, help="fixed number of steps instead of a CPU budget")
    p.add_argument("--train", default=DEFAULT_TRAIN)
    p.add_argument("--val", default=DEFAULT_VAL)
    p.add_argument("--val-limit", type=int, default=2000)
    p.add_argument("--psnr-limit", type=int, default=2000)
    p.add_argument("--jsonl", default=str(ROOT / "experiments/results/recipe_ab.jsonl"))
    p.add_argument("--results-md", default=str(ROOT / "docs/results.md"))
    p.add_argument("--group", default=group_default)
    p.add_argument("--save-model", default=None)
    p.add_argument("--table", action="store_true", help="only rewrite the docs/results.md table")
    return p


def main(argv=None, group_default: str = "recipe") -> int:
    args = parser(group_default).parse_args(argv)
    jsonl = Path(args.jsonl)
    if not args.table:
        cfg = make_config(args.tokens, args.set, base=args.base)
        rec = run_arm(args, cfg, group=args.group)
        line = json.dumps(rec)
        print(line, flush=True)
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(jsonl, "a") as fh:
            fh.write(line + "\n")
    write_table(jsonl, Path(args.results_md), args.group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
