"""The training loop, as in the paper's Algorithm 1.

    initialise codebooks from training latents
    for each epoch:
        for each shuffled batch z:                     (sharded across ranks)
            loss = objective(z, q(z), g(q(z)))          normalise -> quantize -> rectify
            backward; clip each group's grad norm; AdamW step (codebooks | rectifier)
        non-activation reset (counts summed over ranks), zero AdamW moments of moved rows
        validate on held-out latents (counts untouched); checkpoint

``train(cfg)`` is the whole job; the helpers below keep the loop itself to one screen.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from revq.errors import ConfigError, MissingResourceError, RevqError
from revq.io_utils import write_json_atomic
from revq.training import distributed as D
from revq.training.checkpoint import CheckpointManager, TrainState
from revq.training.config import TrainConfig
from revq.training.schedule import LRSchedule

log = logging.getLogger(__name__)


class TrainingDiverged(RevqError):
    """The loss became NaN/Inf.  The last good checkpoint is left intact."""


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path | None
    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch


# ============================================================================ the loop
def train(cfg: TrainConfig, *, train_cache=None, val_cache=None) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.latents`` into ``cfg.out`` (resuming when it has checkpoints)."""
    info = D.setup(cfg.device)
    try:
        run = _Run(cfg, info, train_cache=train_cache, val_cache=val_cache)
        return run.execute()
    finally:
        D.cleanup(info)


class _Run:
    def __init__(self, cfg: TrainConfig, info: D.DistInfo, *, train_cache=None, val_cache=None) -> None:
        self.cfg, self.info = cfg, info
        self.out = Path(cfg.out) if cfg.out else None
        if self.out is None:
            raise ConfigError("no run directory given (--out RUN_DIR)")
        self.train_cache = train_cache if train_cache is not None else open_cache(cfg.latents, "training")
        self.val_cache = val_cache if val_cache is not None else (open_cache(cfg.val_latents, "validation") if cfg.val_latents else None)
        validate_setup(cfg, self.train_cache, self.val_cache, world_size=info.world_size)
        self.ckpts = CheckpointManager(self.out / "checkpoints", keep_last=cfg.keep_last)
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ main
    def execute(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        model = place_model(build_model(cfg, self.train_cache), cfg, info.device)
        optimizer = build_optimizer(model, cfg)
        state = TrainState()
        loaded = self.ckpts.load_latest(device=info.device)
        if loaded is not None:
            check_resume_config(cfg, loaded.config, loaded.path)
            loaded.restore(model, optimizer)
            state = loaded.state
            log.info("resuming from %s (epoch %d, step %d)", loaded.path.name, state.epoch, state.step_in_epoch)
        if info.is_main:
            self.ckpts.clean_temporaries()
            cfg.to_json(self.out / "train_config.json")
            _truncate_metrics(self.out / "metrics.jsonl", state.global_step)
        if state.finished:
            return self._finish(model, state)
        if not state.initialized:
            init_codebooks(model, self.train_cache, cfg, info)
            state.initialized = True
        ddp = D.wrap_model(model, info, sparse_params=("quantizer.codebooks",) if cfg.sparse_codebook_adam else ())
        self._loop(model, ddp, optimizer, state)
        return self._finish(model, state)

    def _loop(self, model, ddp, optimizer, state: TrainState) -> None:
        cfg, info = self.cfg, self.info
        n = len(self.train_cache)
        steps_per_epoch = n // cfg.batch_size
        local_batch = cfg.batch_size // info.world_size
        schedule = LRSchedule(cfg.schedule, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                              final_lr_ratio=cfg.final_lr_ratio, warmup_steps=cfg.warmup_steps)
        logger = _Logger(self, total_steps=steps_per_epoch * cfg.epochs, initial=state.global_step)
        autocast = (torch.autocast(info.device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext())
        ddp.train()
        try:
            while state.epoch < cfg.epochs:
                order = epoch_order(n, cfg.batch_size, seed=cfg.seed, epoch=state.epoch)
                batches = shard_batches(order, rank=info.rank, local_batch=local_batch, start=state.step_in_epoch)
                for z in prefetch(self.train_cache, batches, info.device, enabled=cfg.prefetch):
                    lr_factor = schedule.apply(optimizer, state.epoch, state.global_step)
                    with autocast:
                        out = _forward(ddp, z)                     # normalise -> quantize -> rectify -> loss
                    optimizer.zero_grad(set_to_none=True)
                    out["loss"].backward()
                    if cfg.sparse_codebook_adam:  # DDP leaves the sparse codebook gradient to us
                        D.average_sparse_grad_(model.quantizer.codebooks)
                    clip_per_group(optimizer, cfg.grad_clip)
                    optimizer.step()
                    state.step_in_epoch += 1
                    state.global_step += 1
                    state.samples_seen += cfg.batch_size
                    logger.step(out, state, lr_factor)
                    if (cfg.checkpoint_every_steps and state.global_step % cfg.checkpoint_every_steps == 0
                            and state.step_in_epoch < steps_per_epoch):
                        self._checkpoint(model, optimizer, state, schedule, logger)
                epoch_record = self._end_of_epoch(model, optimizer, state, logger)
                state.epoch += 1
                state.step_in_epoch = 0
                self._checkpoint(model, optimizer, state, schedule, logger)
                logger.epoch(epoch_record)
        finally:
            logger.close()
        state.finished = True
        self._checkpoint(model, optimizer, state, schedule, logger, final=True)

    # ------------------------------------------------------------------ epoch end
    def _end_of_epoch(self, model, optimizer, state: TrainState, logger: "_Logger") -> dict[str, Any]:
        cfg = self.cfg
        logger.check_finite(state)  # never reset/validate a diverged model
        record: dict[str, Any] = {"type": "epoch", "epoch": state.epoch + 1, "step": state.global_step}
        quantizer = model.quantizer
        record["train_usage"] = train_usage(quantizer, self.info)
        if cfg.reset_every_epochs and (state.epoch + 1) % cfg.reset_every_epochs == 0:
            gen = torch.Generator(device=quantizer.codebooks.device)
            gen.manual_seed(_mix(cfg.seed, state.epoch, 0x5E5E7))
            result = quantizer.reset_dead_codes(noise=cfg.model.reset_noise,
                                                max_fraction=cfg.model.reset_max_fraction, generator=gen)
            zero_moments(optimizer, quantizer.codebooks, result.reset_rows)
            record["num_reset"] = int(torch.as_tensor(result.num_reset).sum().item())
        else:
            quantizer.counts.zero_()
        if self.val_cache is not None:
            record.update(validate(model, self.val_cache, cfg, self.info))
            state.last_val = {k: v for k, v in record.items() if k.startswith("val_")}
        record["lr"] = optimizer.param_groups[0]["lr"]
        self.history.append(record)
        return record

    # ------------------------------------------------------------------ persistence
    def _checkpoint(self, model, optimizer, state, schedule, logger, final: bool = False) -> None:
        logger.check_finite(state)  # a diverged model is never written over the last good one
        if self.info.is_main:
            self.ckpts.save(model=model, optimizer=optimizer, state=state, config=self.cfg.to_dict(),
                            scheduler_state=schedule.state_dict())
        D.barrier()

    def _finish(self, model, state: TrainState) -> TrainResult:
        model_dir = self.out / "model"
        if self.info.is_main:
            model.save_pretrained(model_dir)
            write_json_atomic(self.out / "summary.json", {"state": state.to_dict(), "epochs": self.history})
        D.barrier()
        return TrainResult(run_dir=self.out, model_dir=model_dir, state=state, history=self.history)


def _forward(model, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training forward (a seam for tests)."""
    return model(z)


# ============================================================================ pieces
def open_cache(path: str | None, what: str):
    if not path:
        raise ConfigError(f"no {what} latent cache given")
    if not Path(path).exists():
        raise MissingResourceError(f"{what} latent cache {path} does not exist (make one with `revq encode`)")
    from revq.data.latent_cache import LatentCache

    try:
        return LatentCache(path)
    except RevqError:
        raise
    except (FileNotFoundError, KeyError, ValueError, json.JSONDecodeError) as error:
        raise MissingResourceError(f"{path} is not a readable latent cache ({error}); make one with `revq encode`") from error


def cache_autoencoder(cache) -> tuple[str | None, int | None]:
    """(autoencoder name, image resolution) recorded in a cache's manifest."""
    manifest = getattr(cache, "manifest", {}) or {}
    ae = manifest.get("autoencoder")
    resolution = manifest.get("resolution")
    if isinstance(ae, dict):
        resolution = ae.get("resolution", resolution)
        ae = ae.get("name") or ae.get("id")
    return ae, resolution


def _stats_for(cfg: TrainConfig, cache) -> tuple[torch.Tensor, torch.Tensor] | None:
    norm = cfg.model.normalization
    if norm == "none":
        return None
    try:
        stats = cache.stats
    except (FileNotFoundError, KeyError, OSError) as error:
        raise MissingResourceError(f"the latent cache has no statistics ({error}); re-run `revq encode`") from error
    keys = {"element": ("mean", "std"), "channel": ("channel_mean", "channel_std"), "global": ("global_mean", "global_std")}[norm]
    if not stats or any(k not in stats for k in keys):
        raise MissingResourceError(
            f"normalization={norm!r} needs statistics {keys} but the latent cache has "
            f"{sorted(stats) if stats else 'none'}; re-run `revq encode` or --set model.normalization=none")
    shape = tuple(cfg.model.latent_shape)
    mean = torch.as_tensor(stats[keys[0]], dtype=torch.float32)
    std = torch.as_tensor(stats[keys[1]], dtype=torch.float32)
    if norm == "channel":
        mean, std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
    return mean.expand(shape).contiguous(), std.expand(shape).contiguous()


def validate_setup(cfg: TrainConfig, train_cache, val_cache=None, *, world_size: int = 1) -> None:
    """Every check that can fail *before* any work is done."""
    m = cfg.model
    ae, resolution = cache_autoencoder(train_cache)
    if ae is not None and m.autoencoder.name and ae != m.autoencoder.name:
        raise ConfigError(f"the latent cache was made by autoencoder {ae!r} but the config names "
                          f"{m.autoencoder.name!r}; use a cache of the right autoencoder or "
                          f"--set model.autoencoder.name={ae}")
    shape = tuple(int(v) for v in train_cache.latent_shape)
    if shape != tuple(m.latent_shape):
        # the cache decides the latent shape; re-validate token counts against it
        if math.prod(shape) % m.num_tokens:
            n = math.prod(shape)
            valid = [b for b in range(1, n + 1) if n % b == 0]
            raise ConfigError(f"num_tokens={m.num_tokens} does not divide the cache's latent size "
                              f"{'x'.join(map(str, shape))}={n}; valid token counts: {valid}")
        m.latent_shape = shape
        m.autoencoder.latent_shape = shape
        m.validate()
    if resolution is not None:
        m.autoencoder.resolution = int(resolution)
    n = len(train_cache)
    pool = n * (m.num_tokens // m.num_codebooks)  # sub-vectors a codebook can be initialised from
    if m.codebook_size > pool:
        raise ConfigError(f"codebook_size={m.codebook_size} is larger than the {pool} training sub-vectors "
                          f"({n} latents) can initialise; encode more images, share codebooks "
                          f"(--set model.tokens_per_codebook=K) or --set model.codebook_size=<= {pool}")
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} (global) is not divisible by the {world_size} processes")
    if cfg.batch_size > n:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {n} training latents")
    _stats_for(cfg, train_cache)
    if val_cache is not None:
        vshape = tuple(int(v) for v in val_cache.latent_shape)
        if vshape != shape:
            raise ConfigError(f"validation latents have shape {vshape}, training latents {shape}")
        vae, _ = cache_autoencoder(val_cache)
        if vae is not None and ae is not None and vae != ae:
            raise ConfigError(f"validation cache made by {vae!r}, training cache by {ae!r}")
        if len(val_cache) == 0:
            raise ConfigError("the validation cache is empty")


def build_model(cfg: TrainConfig, train_cache):
    from revq.model import ReVQ

    model = ReVQ(cfg.model)
    stats = _stats_for(cfg, train_cache)
    if stats is not None:
        model.normalizer.set_stats(*stats)
    return model


def place_model(model, cfg: TrainConfig, device: torch.device):
    """Move the model to ``device``; on CPU with bf16, keep the rectifier's 5x5 depthwise convs in
    fp32 (measured: their bf16 backward is ~4x slower there, docs/performance.md)."""
    model = model.to(device)
    if cfg.bf16 and device.type == "cpu":
        from revq.training.fastpath import pin_fp32_depthwise

        pin_fp32_depthwise(model)
    return model


def build_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: codebooks (lr, no weight decay) and everything else (rectifier,
    optional pre-encoder: lr x ratio, weight decay)."""
    if cfg.sparse_codebook_adam:  # same groups, sparse codebook gradients + row-sparse update
        from revq.training.optim import build_row_sparse_optimizer

        return build_row_sparse_optimizer(model, cfg)
    return torch.optim.AdamW(optimizer_groups(model, cfg), betas=tuple(cfg.betas), eps=cfg.adam_eps)


def optimizer_groups(model, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The two parameter groups every codebook optimizer uses (dense or row-sparse)."""
    codebooks = [model.quantizer.codebooks]
    cb_ids = {id(p) for p in codebooks}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in cb_ids]
    groups = [{"params": codebooks, "lr": cfg.lr, "base_lr": cfg.lr,
               "weight_decay": cfg.codebook_weight_decay, "name": "codebooks"}]
    if rest:
        lr = cfg.lr * cfg.rectifier_lr_ratio
        groups.append({"params": rest, "lr": lr, "base_lr": lr,
                       "weight_decay": cfg.rectifier_weight_decay, "name": "rectifier"})
    return groups


def clip_per_group(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    if max_norm <= 0:
        return
    for group in optimizer.param_groups:
        if any(p.grad is not None and p.grad.is_sparse for p in group["params"]):
            from revq.training.optim import clip_grad_norm_

            clip_grad_norm_(group["params"], max_norm)
        else:
            torch.nn.utils.clip_grad_norm_(group["params"], max_norm, foreach=True)


def zero_moments(optimizer: torch.optim.Optimizer, codebooks: torch.nn.Parameter, reset_rows) -> None:
    """Zero AdamW's ``exp_avg``/``exp_avg_sq`` of the codebook rows that the reset moved, so the
    moved codes do not inherit the momentum of the dead code they replace."""
    state = optimizer.state.get(codebooks)
    if not state:
        return
    groups, rows = [], []
    for g, r in enumerate(reset_rows):
        r = torch.as_tensor(r, device=codebooks.device, dtype=torch.long)
        if r.numel():
            groups.append(torch.full_like(r, g))
            rows.append(r)
    if not rows:
        return
    g_idx, r_idx = torch.cat(groups), torch.cat(rows)
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if key in state and torch.is_tensor(state[key]) and state[key].dim() == 3:
            state[key][g_idx, r_idx] = 0


def _mix(*values: int) -> int:
    """A deterministic 63-bit seed from integers."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def epoch_order(n: int, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
    """(steps, global batch) sample indices of one epoch: a seeded shuffle, last partial batch dropped."""
    perm = np.random.default_rng(_mix(seed, epoch)).permutation(n)
    steps = n // batch_size
    return perm[: steps * batch_size].reshape(steps, batch_size)


def shard_batches(order: np.ndarray, *, rank: int, local_batch: int, start: int = 0) -> list[np.ndarray]:
    """This rank's slice of every global batch from ``start`` on (sorted: sequential mmap reads)."""
    return [np.sort(b[rank * local_batch:(rank + 1) * local_batch]) for b in order[start:]]


def prefetch(cache, batches: list[np.ndarray], device: torch.device, *, enabled: bool = True) -> Iterator[torch.Tensor]:
    """Yield ``cache.get(batch)`` on ``device``, reading the next batch in a background thread."""
    def load(idx: np.ndarray) -> torch.Tensor:
        z = torch.as_tensor(cache.get(idx), dtype=torch.float32)
        return z.pin_memory() if device.type == "cuda" else z

    if not enabled:
        for idx in batches:
            yield load(idx).to(device, non_blocking=True)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, batches[0]) if batches else None
        for i in range(len(batches)):
            z = pending.result()
            pending = pool.submit(load, batches[i + 1]) if i + 1 < len(batches) else None
            yield z.to(device, non_blocking=True)


def init_codebooks(model, cache, cfg: TrainConfig, info: D.DistInfo) -> None:
    """Codebooks from normalised training latents; every rank draws the same samples."""
    n = len(cache)
    count = min(n, max(cfg.model.codebook_size, cfg.init_samples))
    rng = np.random.default_rng(_mix(cfg.seed, 0x1A17))
    idx = np.sort(rng.choice(n, size=count, replace=False))
    chunks = [torch.as_tensor(cache.get(idx[i:i + 8192]), dtype=torch.float32) for i in range(0, count, 8192)]
    z = torch.cat(chunks).to(info.device)
    with torch.no_grad():
        z = model.normalizer.normalize(z)
    gen = torch.Generator(device=z.device)
    gen.manual_seed(_mix(cfg.seed, 0x1A17, 1))
    model.quantizer.init_from_data(z, method=cfg.init_method, generator=gen)
    del z


def train_usage(quantizer, info: D.DistInfo) -> float:
    counts = quantizer.counts
    if info.distributed:
        counts = D.all_reduce_sum(counts.clone())
    return float((counts > 0).float().mean().item())


@torch.no_grad()
def validate(model, cache, cfg: TrainConfig, info: D.DistInfo) -> dict[str, float]:
    """Latent MSE (normalised space) and code usage on held-out latents.  Runs the model in eval
    mode, so activation counts of training are not touched."""
    was_training = model.training
    model.eval()
    n = len(cache) if not cfg.val_limit else min(cfg.val_limit, len(cache))
    per_rank = math.ceil(n / info.world_size)
    lo, hi = info.rank * per_rank, min(n, (info.rank + 1) * per_rank)
    G, N = model.quantizer.codebooks.shape[:2]
    sums = torch.zeros(3, dtype=torch.float64, device=info.device)  # rect sq err, quant sq err, elements
    hist = torch.zeros(G * N, dtype=torch.int64, device=info.device)
    for start in range(lo, hi, cfg.val_batch_size):
        idx = np.arange(start, min(hi, start + cfg.val_batch_size))
        z_raw = torch.as_tensor(cache.get(idx), dtype=torch.float32).to(info.device)
        out = model(z_raw)
        z, z_q, z_r = out["z"].float(), out["z_q"].float(), out["z_rect"].float()
        sums[0] += (z_r - z).pow(2).sum(dtype=torch.float64)
        sums[1] += (z_q - z).pow(2).sum(dtype=torch.float64)
        sums[2] += z.numel()
        flat = model.quantizer.flat_code_index(out["indices"])
        hist += torch.bincount(flat.reshape(-1), minlength=G * N)
    D.all_reduce_sum(sums)
    D.all_reduce_sum(hist)
    if was_training:
        model.train()
    used = (hist > 0).view(G, N).float()
    p = hist.view(G, N).double()
    p = p / p.sum(dim=1, keepdim=True).clamp_min(1)
    perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum(dim=1)).mean()
    elems = max(sums[2].item(), 1.0)
    return {
        "val_latent_mse": sums[0].item() / elems,
        "val_quant_mse": sums[1].item() / elems,
        "val_usage": used.mean().item(),
        "val_usage_min_group": used.mean(dim=1).min().item(),
        "val_perplexity": perplexity.item(),
        "val_count": n,
    }


def check_resume_config(cfg: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    try:
        saved_cfg = TrainConfig.from_dict(saved)
    except RevqError as error:
        raise ConfigError(f"checkpoint {path} holds an unreadable config ({error})") from error
    diff = cfg.semantic_diff(saved_cfg)
    if diff:
        raise ConfigError(f"the run directory's checkpoint {path.name} was trained with a different config "
                          f"(differs in: {', '.join(diff)}); resume with the same options or use a new --out")


def _truncate_metrics(path: Path, global_step: int) -> None:
    """On resume, drop metric lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= global_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    from revq.io_utils import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("".join(l + "\n" for l in kept))


# ============================================================================ logging
class _Logger:
    """Progress bar, metrics.jsonl, TensorBoard (rank 0) and the NaN/Inf guard (all ranks)."""

    def __init__(self, run: _Run, *, total_steps: int, initial: int) -> None:
        self.run, self.cfg, self.info = run, run.cfg, run.info
        self.every = run.cfg.log_every_steps
        self.device = run.info.device
        self.acc = torch.zeros(3, device=self.device)  # loss, quant, rect sums since last log
        self.bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.n = 0
        self.t0 = time.perf_counter()
        self.samples0 = 0
        self.bar = None
        self.tb = None
        self.metrics = (run.out / "metrics.jsonl") if self.info.is_main else None
        if self.info.is_main and self.cfg.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial, unit="step", dynamic_ncols=True, desc="train")
        if self.info.is_main and self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run.out / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.tb = None

    def step(self, out: dict[str, torch.Tensor], state: TrainState, lr_factor: float) -> None:
        loss = out["loss"].detach()
        self.bad |= ~torch.isfinite(loss)
        self.acc[0] += loss
        if "quant_loss" in out:
            self.acc[1] += out["quant_loss"].detach().float()
        if "rect_loss" in out:
            self.acc[2] += out["rect_loss"].detach().float()
        self.n += 1
        self.samples0 += self.cfg.batch_size
        if state.global_step % self.every == 0:
            self.flush(state, lr_factor)

    def flush(self, state: TrainState, lr_factor: float) -> None:
        if self.n == 0:
            return
        self.check_finite(state)
        acc = (self.acc / self.n).tolist()
        dt = max(time.perf_counter() - self.t0, 1e-9)
        record = {"type": "step", "step": state.global_step, "epoch": state.epoch, "loss": acc[0],
                  "quant_loss": acc[1], "rect_loss": acc[2], "lr_factor": lr_factor,
                  "samples_per_s": self.samples0 / dt}
        self.acc.zero_()
        self.n, self.samples0, self.t0 = 0, 0, time.perf_counter()
        if self.bar is not None:
            self.bar.set_description(f"epoch {state.epoch + 1}/{self.cfg.epochs}")
            self.bar.set_postfix(loss=f"{acc[0]:.4f}", samples_s=f"{record['samples_per_s']:.0f}")
            self.bar.update(state.global_step - self.bar.n)
        self._write(record)

    def check_finite(self, state: TrainState) -> None:
        flag = self.bad.to(torch.int32)
        D.all_reduce_max(flag)
        if bool(flag.item()):
            last = self.run.ckpts.latest()
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"loss became NaN/Inf by step {state.global_step} (epoch {state.epoch + 1}); training stopped, "
                f"{where}. Try a lower learning rate (--set lr=...), bf16 off, or check the latents for NaNs.")

    def epoch(self, record: dict[str, Any]) -> None:
        self._write(record)
        if self.bar is not None:
            val = record.get("val_latent_mse")
            self.bar.write(f"epoch {record['epoch']}: train usage {record['train_usage']:.3f}"
                           + (f", reset {record['num_reset']}" if "num_reset" in record else "")
                           + (f", val latent MSE {val:.5f}, val usage {record['val_usage']:.3f}" if val is not None else ""))

    def _write(self, record: dict[str, Any]) -> None:
        if self.metrics is None:
            return
        record = {**record, "time": time.time()}
        with open(self.metrics, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch", "time", "type"):
                    self.tb.add_scalar(f"{record['type']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
