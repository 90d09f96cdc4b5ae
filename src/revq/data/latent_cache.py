"""The latent cache: images are encoded once by the frozen VAE, training reads latents.

Layout of a cache folder (everything a user may exchange is .npy / JSON / safetensors)::

    manifest.json          written last: its presence means "complete"
    stats.safetensors      mean/std per element (C,H,W), per channel (C,), global ()
    labels.npy             (N,) int64, -1 when the source has no labels
    keys.json              source key of every sample, in store order
    skipped.json           every skipped input with its reason
    shards/latents-00000.npy  (S,C,H,W) float32, fixed size S except the last
    shards/stats-00000.safetensors  count/mean/M2 of that shard (float64)
    progress.json          while encoding: committed shards and where to resume

Why shards are committed whole: a killed encode restarts after the last committed shard
(re-reading, not re-decoding, the inputs before it) and, the order being deterministic,
produces exactly the store an uninterrupted run would.  Statistics are kept per shard and
merged with Chan et al.'s parallel update in float64, so they are stable at ImageNet scale
and never double-count a re-encoded shard.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from revq.data.images import Decoded, ImageSource, Record, decode_record
from revq.errors import MissingResourceError, RevqError
from revq.io_utils import atomic_path, save_safetensors_atomic, write_json_atomic

logger = logging.getLogger(__name__)

FORMAT = "revq-latent-cache"
VERSION = 1
DEFAULT_SHARD_SIZE = 4096


# ====================================================================== statistics
@dataclass
class Moments:
    """Streaming per-element count / mean / M2 (sum of squared deviations), float64."""

    count: int
    mean: np.ndarray  # (C,H,W) float64
    m2: np.ndarray  # (C,H,W) float64

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> "Moments":
        return cls(0, np.zeros(shape, np.float64), np.zeros(shape, np.float64))

    @classmethod
    def of(cls, x: np.ndarray, *, chunk: int = 1024) -> "Moments":
        """Moments of a batch (N,C,H,W), two-pass per chunk, merged with Chan's update."""
        out = cls.empty(x.shape[1:])
        for start in range(0, len(x), chunk):
            part = np.asarray(x[start : start + chunk], dtype=np.float64)
            mean = part.mean(axis=0)
            m2 = np.square(part - mean).sum(axis=0)
            out = out.merge(cls(len(part), mean, m2))
        return out

    def merge(self, other: "Moments") -> "Moments":
        """Chan, Golub & LeVeque's pairwise combination (stable, order-independent up to rounding)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + np.square(delta) * (self.count * other.count / n)
        return Moments(n, mean, m2)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "count": torch.tensor(self.count, dtype=torch.int64),
            "mean": torch.from_numpy(self.mean),
            "m2": torch.from_numpy(self.m2),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "Moments":
        return cls(int(tensors["count"]), tensors["mean"].double().numpy(), tensors["m2"].double().numpy())

    def summary(self) -> dict[str, torch.Tensor]:
        """Population (ddof=0) mean/std per element, per channel and global, as float32 tensors."""
        if self.count == 0:
            raise RevqError("no latents: statistics of an empty cache are undefined")
        n = self.count
        spatial = tuple(range(1, self.mean.ndim))
        per_c = int(np.prod(self.mean.shape[1:]))
        channel_mean = self.mean.mean(axis=spatial)
        channel_m2 = self.m2.sum(axis=spatial) + n * np.square(
            self.mean - channel_mean.reshape(-1, *([1] * len(spatial)))
        ).sum(axis=spatial)
        global_mean = self.mean.mean()
        global_m2 = self.m2.sum() + n * np.square(self.mean - global_mean).sum()
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        return {
            "mean": as_t(self.mean),
            "std": as_t(np.sqrt(self.m2 / n)),
            "channel_mean": as_t(channel_mean),
            "channel_std": as_t(np.sqrt(channel_m2 / (n * per_c))),
            "global_mean": as_t(global_mean),
            "global_std": as_t(np.sqrt(global_m2 / (n * self.mean.size))),
        }


# ====================================================================== decoding pipeline
def _decode_chunk(records: list[Record], options: dict) -> list[Decoded]:
    return [decode_record(r, **options) for r in records]


def _decoded_stream(
    source: ImageSource, *, start: int, workers: int, chunk: int = 32
) -> Iterator[Decoded]:
    """Decoded records in order from record index ``start``; decoding in ``workers`` processes.

    A bounded window of chunks is in flight (``Pool.imap`` would read the whole input ahead).
    """
    items = source.records(start=start)

    def as_decoded(item) -> Decoded | Record:
        if isinstance(item, Record):
            return item
        index, key, reason = item
        return Decoded(index, key, -1, skipped=reason)

    if workers <= 0:
        for item in items:
            item = as_decoded(item)
            yield source.decode(item) if isinstance(item, Record) else item
        return

    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(workers) as pool:
        pending: deque = deque()
        # only the small options dict travels to the workers, not the source object
        opts = source.options()
        work = partial(_decode_chunk, options={k: opts[k] for k in ("resolution", "flip", "max_pixels", "small")})

        def submit() -> bool:
            batch: list = []
            for item in items:
                batch.append(as_decoded(item))
                if len(batch) >= chunk:
                    break
            if not batch:
                return False
            records = [b for b in batch if isinstance(b, Record)]
            pending.append((batch, pool.apply_async(work, (records,))))
            return True

        exhausted = False
        while True:
            while not exhausted and len(pending) < 4 * workers:
                exhausted = not submit()
            if not pending:
                return
            batch, result = pending.popleft()
            done = iter(result.get())
            for item in batch:
                yield next(done) if isinstance(item, Record) else item


# ====================================================================== encoding
def _config_of(source: ImageSource, autoencoder, *, shard_size: int, bf16: bool) -> dict:
    return {
        "autoencoder": autoencoder.name,
        "latent_shape": list(autoencoder.latent_shape(source.resolution)),
        "sources": source.describe(),
        "options": source.options(),
        "shard_size": shard_size,
        "bf16": bool(bf16),
        "dtype": "float32",
    }


def _shard_name(kind: str, index: int, ext: str) -> str:
    return f"shards/{kind}-{index:05d}.{ext}"


def encode_to_cache(
    source: ImageSource,
    autoencoder,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 0,
    bf16: bool = False,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> "LatentCache":
    """Encode every image of ``source`` into a latent cache at ``out_dir``; resumes if killed.

    ``on_batch(samples_encoded)`` is called after each encoded batch (tests use it to
    interrupt a run).  Returns the finished :class:`LatentCache`.
    """
    if batch_size <= 0 or shard_size <= 0:
        raise RevqError(f"batch size and shard size must be positive (got {batch_size}, {shard_size})")
    out = Path(out_dir)
    config = _config_of(source, autoencoder, shard_size=shard_size, bf16=bf16)
    manifest_path, progress_path = out / "manifest.json", out / "progress.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config") != config:
            raise RevqError(
                f"{out} already holds a finished latent cache made with different settings; "
                "choose another --out or delete that folder"
            )
        logger.info("%s is already complete (%d latents)", out, manifest["count"])
        return LatentCache(out)

    state = _load_progress(progress_path, config)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out, state, shard_size=shard_size)
    if state["shards"]:
        logger.info(
            "resuming %s: %d shards (%d latents) done, continuing at input record %d",
            out, len(state["shards"]), writer.samples_done, state["resume_record"],
        )
    source.skipped = [(k, r) for _, k, r in state["skipped"]]
    source.converted = [(k, r) for _, k, r in state["converted"]]

    total = source.estimated_count()
    if total is not None and source.flip:
        total *= 2
    bar = _progress_bar(total=total, initial=writer.samples_done, enabled=progress)
    device_type = autoencoder.device.type
    batch: list[tuple] = []
    taken = state["images_done"]
    started = time.perf_counter()

    def flush() -> None:
        images = torch.from_numpy(np.stack([b[3] for b in batch])).permute(0, 3, 1, 2)  # (B,3,R,R) uint8
        images = images.to(autoencoder.device).float().div_(255.0)
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            latents = autoencoder.encode(images)  # (B,C,h,w) float32
        writer.add(latents.cpu().numpy(), batch, source)
        bar.update(len(batch))
        batch.clear()
        if on_batch is not None:
            on_batch(writer.samples_done + writer.buffered)

    skip_first = state["resume_sub"]
    try:
        for decoded in _decoded_stream(source, start=state["resume_record"], workers=workers):
            if source.limit is not None and taken >= source.limit:
                break
            source.note(decoded)
            writer.note(decoded)
            if not decoded.images:
                continue
            taken += 1
            for sub, array in enumerate(decoded.images):
                if skip_first:  # already committed before an interruption
                    skip_first -= 1
                    continue
                key = decoded.key if sub == 0 else f"{decoded.key}#flip"
                position = (decoded.index, sub, len(decoded.images), taken)
                batch.append((key, decoded.label, position, array))
                if len(batch) >= batch_size:
                    flush()
        if batch:
            flush()
        writer.finish(source)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    cache = _finalize(out, config, writer, source, class_names=source.class_names())
    logger.info(
        "encoded %d latents into %s (%.1f img/s this run); %s",
        len(cache), out, (len(cache) - state["samples_at_start"]) / max(elapsed, 1e-9), source.summary(),
    )
    return cache


def _progress_bar(*, total: int | None, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="encode", disable=not enabled, smoothing=0.1)


def _load_progress(path: Path, config: dict) -> dict:
    fresh = {
        "config": config,
        "shards": [],
        "resume_record": 0,
        "resume_sub": 0,
        "images_done": 0,
        "skipped": [],
        "converted": [],
    }
    if not path.exists():
        fresh["samples_at_start"] = 0
        return fresh
    state = json.loads(path.read_text())
    if state.get("config") != config:
        raise RevqError(
            f"{path.parent} holds an unfinished encode with different settings (autoencoder, inputs, "
            "resolution, flip, limit, shard size or bf16); rerun with the same options to resume, "
            "or choose another --out"
        )
    state["samples_at_start"] = sum(s["count"] for s in state["shards"])
    return state


class _ShardWriter:
    """Buffers latents and commits fixed-size shards atomically, then the progress file."""

    def __init__(self, out: Path, state: dict, *, shard_size: int) -> None:
        self.out = out
        self.state = state
        self.shard_size = shard_size
        self.latents: list[np.ndarray] = []
        self.meta: list[tuple] = []  # (key, label, position) per buffered sample
        self.pending_notes: list[tuple[str, list]] = []  # ("skipped"/"converted", [index, key, text])

    @property
    def samples_done(self) -> int:
        return sum(s["count"] for s in self.state["shards"])

    @property
    def buffered(self) -> int:
        return len(self.meta)

    def note(self, decoded: Decoded) -> None:
        if decoded.skipped is not None:
            self.pending_notes.append(("skipped", [decoded.index, decoded.key, decoded.skipped]))
        for text in decoded.converted:
            self.pending_notes.append(("converted", [decoded.index, decoded.key, text]))

    def add(self, latents: np.ndarray, batch: list[tuple], source: ImageSource) -> None:
        for row, (key, label, position, _) in zip(latents, batch):
            self.latents.append(row)
            self.meta.append((key, label, position))
            if len(self.meta) == self.shard_size:
                self.commit()

    def commit(self, *, final: bool = False) -> None:
        if not self.meta:
            return
        index = len(self.state["shards"])
        latents = np.stack(self.latents).astype(np.float32, copy=False)  # (S,C,H,W)
        labels = np.array([m[1] for m in self.meta], dtype=np.int64)
        keys = [m[0] for m in self.meta]
        record, sub, n_images, taken = self.meta[-1][2]
        if sub + 1 >= n_images:
            resume_record, resume_sub, images_done = record + 1, 0, taken
        else:
            resume_record, resume_sub, images_done = record, sub + 1, taken - 1
        files = {k: _shard_name(k, index, e) for k, e in (("latents", "npy"), ("labels", "npy"), ("keys", "json"), ("stats", "safetensors"))}
        with atomic_path(self.out / files["latents"]) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, latents)
        with atomic_path(self.out / files["labels"]) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, labels)
        write_json_atomic(self.out / files["keys"], keys)
        save_safetensors_atomic(Moments.of(latents).to_tensors(), self.out / files["stats"])
        # notes up to the resume point are final; later ones will be seen again on resume
        keep = [n for n in self.pending_notes if n[1][0] < resume_record]
        self.pending_notes = [n for n in self.pending_notes if n[1][0] >= resume_record]
        for kind, note in keep:
            self.state[kind].append(note)
        self.state["shards"].append({**files, "count": len(latents)})
        self.state.update(resume_record=resume_record, resume_sub=resume_sub, images_done=images_done)
        write_json_atomic(self.out / "progress.json", {k: v for k, v in self.state.items() if k != "samples_at_start"})
        self.latents, self.meta = [], []

    def finish(self, source: ImageSource) -> None:
        self.commit(final=True)
        # notes after the last sample (trailing skipped inputs) belong to the finished run
        for kind, note in self.pending_notes:
            self.state[kind].append(note)
        self.pending_notes = []
        self.state["finished"] = True
        write_json_atomic(self.out / "progress.json", {k: v for k, v in self.state.items() if k != "samples_at_start"})


def _finalize(out: Path, config: dict, writer: _ShardWriter, source: ImageSource, *, class_names) -> "LatentCache":
    """Merge per-shard labels/keys/statistics and write the manifest (last, atomically)."""
    from safetensors.torch import load_file

    state = writer.state
    shards = state["shards"]
    if not shards:
        raise RevqError(f"no image could be encoded ({source.summary()}); check --data")
    labels = np.concatenate([np.load(out / s["labels"]) for s in shards])
    keys: list[str] = []
    moments = Moments.empty(tuple(config["latent_shape"]))
    for shard in shards:
        keys.extend(json.loads((out / shard["keys"]).read_text()))
        moments = moments.merge(Moments.from_tensors(load_file(str(out / shard["stats"]))))
    with atomic_path(out / "labels.npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, labels)
    write_json_atomic(out / "keys.json", keys)
    write_json_atomic(out / "skipped.json", {"skipped": state["skipped"], "converted": state["converted"]})
    stats = moments.summary()
    save_safetensors_atomic(
        {**stats, "count": torch.tensor(moments.count, dtype=torch.int64)},
        out / "stats.safetensors",
        metadata={"ddof": "0", "algorithm": "chan-parallel-float64"},
    )
    skip_reasons = Counter(r.split(":")[0] for _, _, r in state["skipped"])
    convert_reasons = Counter(r for _, _, r in state["converted"])
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "autoencoder": config["autoencoder"],
        "resolution": config["options"]["resolution"],
        "latent_shape": config["latent_shape"],
        "dtype": config["dtype"],
        "count": int(len(labels)),
        "shard_size": config["shard_size"],
        "shards": [{"file": s["latents"], "count": s["count"]} for s in shards],
        "labels": {
            "file": "labels.npy",
            "labeled": int((labels >= 0).sum()),
            "num_classes": int(labels.max() + 1) if (labels >= 0).any() else 0,
            "class_names": class_names,
        },
        "keys_file": "keys.json",
        "stats_file": "stats.safetensors",
        "sources": config["sources"],
        "flip": config["options"]["flip"],
        "limit": config["options"]["limit"],
        "skipped": {"count": len(state["skipped"]), "reasons": dict(skip_reasons), "file": "skipped.json"},
        "converted": {"count": len(state["converted"]), "reasons": dict(convert_reasons)},
        "config": config,
    }
    write_json_atomic(out / "manifest.json", manifest)
    (out / "progress.json").unlink(missing_ok=True)
    return LatentCache(out)


# ====================================================================== reading
class LatentCache:
    """Read-only view of a finished latent cache; latents are read through ``np.memmap``.

    Nothing is loaded up front, so a 10 GB store (1.28 M x 2048 fp32) never needs to fit in RAM.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        manifest_path = self.dir / "manifest.json"
        if not manifest_path.is_file():
            if (self.dir / "progress.json").is_file():
                raise MissingResourceError(
                    f"{self.dir} is an unfinished latent cache; rerun the same `revq encode` command to resume it"
                )
            raise MissingResourceError(f"{self.dir} is not a latent cache (no manifest.json); create one with `revq encode`")
        self.manifest: dict = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise RevqError(f"{manifest_path} is not a {FORMAT} manifest")
        self.latent_shape: tuple[int, int, int] = tuple(int(v) for v in self.manifest["latent_shape"])
        counts = [int(s["count"]) for s in self.manifest["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (num_shards+1,)
        self._shards: list[np.ndarray | None] = [None] * len(counts)
        self._labels: np.ndarray | None = None
        self._stats: dict | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:
        # DataLoader workers (spawn) receive the cache pickled: reopen memmaps there instead
        # of copying the data through the pipe.
        state = self.__dict__.copy()
        state["_shards"] = [None] * len(self._shards)
        return state

    def __repr__(self) -> str:
        return f"LatentCache({str(self.dir)!r}, n={len(self)}, latent_shape={self.latent_shape}, autoencoder={self.manifest['autoencoder']!r})"

    @property
    def autoencoder(self) -> str:
        return self.manifest["autoencoder"]

    @property
    def resolution(self) -> int:
        return int(self.manifest["resolution"])

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.load(self.dir / self.manifest["labels"]["file"])
        return self._labels

    @property
    def keys(self) -> list[str]:
        return json.loads((self.dir / self.manifest["keys_file"]).read_text())

    @property
    def stats(self) -> dict[str, torch.Tensor]:
        """{"mean": (C,H,W), "std": (C,H,W), "channel_mean": (C,), "channel_std": (C,), "global_mean": (), "global_std": ()}."""
        if self._stats is None:
            from safetensors.torch import load_file

            loaded = load_file(str(self.dir / self.manifest["stats_file"]))
            self._stats = {k: v for k, v in loaded.items() if k != "count"}
        return self._stats

    def shard(self, index: int) -> np.ndarray:
        """Shard ``index`` as a read-only memmap (S,C,H,W)."""
        if self._shards[index] is None:
            self._shards[index] = np.load(self.dir / self.manifest["shards"][index]["file"], mmap_mode="r")
        return self._shards[index]

    def get(self, indices) -> torch.Tensor:
        """Latents at ``indices`` (any order) -> float32 tensor (n,C,H,W)."""
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"latent index out of range for a cache of {n}")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((idx.size, *self.latent_shape), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, idx, side="right") - 1
        order = np.argsort(idx, kind="stable")  # sorted reads are sequential on disk
        sorted_shards = shard_of[order]
        for s in np.unique(sorted_shards):
            rows = order[sorted_shards == s]
            out[rows] = self.shard(int(s))[idx[rows] - self.offsets[s]]
        return torch.from_numpy(out)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.get([index])[0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        for s in range(len(self._shards)):
            yield torch.from_numpy(np.array(self.shard(s)))

    def all(self) -> torch.Tensor:
        """Every latent in one tensor (N,C,H,W): only for small caches."""
        return self.get(np.arange(len(self)))


# ====================================================================== training batches
class EpochSampler:
    """Per-epoch seeded shuffle of ``range(num_samples)``, split into batches, sharded by rank.

    Every rank gets the same number of batches: with ``drop_last`` the permutation is
    truncated to a multiple of ``world_size`` (and incomplete batches dropped); otherwise it
    is padded by wrapping around, as ``DistributedSampler`` does.  Ranks see disjoint
    samples (up to that padding); the same (seed, epoch) gives the same order on every rank.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        shuffle: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise RevqError(f"rank {rank} outside world size {world_size}")
        if batch_size <= 0:
            raise RevqError(f"batch size must be positive, got {batch_size}")
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.seed, self.epoch = int(seed), int(epoch)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last, self.shuffle = bool(drop_last), bool(shuffle)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def per_rank(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return math.ceil(self.num_samples / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def indices(self) -> np.ndarray:
        """This rank's sample indices for the current epoch, (per_rank,) int64."""
        n = self.num_samples
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        total = self.per_rank * self.world_size
        if total > n:
            order = np.resize(order, total)  # wrap around
        return order[:total][self.rank :: self.world_size].astype(np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        mine = self.indices()
        for b in range(len(self)):
            yield mine[b * self.batch_size : (b + 1) * self.batch_size]


class LatentBatches:
    """Iterate a :class:`LatentCache` in shuffled batches: yields (B,C,H,W) float32 tensors
    (or ``(latents, labels)`` with ``with_labels``).  Call :meth:`set_epoch` each epoch."""

    def __init__(
        self,
        cache: LatentCache,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        shuffle: bool = True,
        with_labels: bool = False,
    ) -> None:
        self.cache = cache
        self.with_labels = with_labels
        self.sampler = EpochSampler(
            len(cache), batch_size, seed=seed, epoch=epoch, rank=rank,
            world_size=world_size, drop_last=drop_last, shuffle=shuffle,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for idx in self.sampler:
            latents = self.cache.get(idx)
            if self.with_labels:
                yield latents, torch.from_numpy(self.cache.labels[idx])
            else:
                yield latents
