"""Packed token shards: what an AR / MaskGIT model trains on.

Layout of an export directory::

    manifest.json                    format, model id, counts, dtype, labels, sources, shards
    tokens-00000.npy                 (n, T) per-position ids, uint16 when N <= 65536 else int32
    labels-00000.npy                 (n,) int64 class labels (-1 when the source has none)
    keys-00000.json                  the n sample keys ("<key>" or "<key>#flip")

Shards are written atomically one at a time, and the manifest lists only finished shards, so a
killed export resumes at the first unfinished shard and produces exactly the files an
uninterrupted run would.  With ``flip=True`` every image is followed by its horizontal mirror.
Token ids are per-position ids (see :mod:`revq.tokenizer` for global ids).
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from revq.errors import RevqError
from revq.io_utils import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "revq-tokens"


def token_dtype(codebook_size: int) -> np.dtype:
    return np.dtype(np.uint16) if codebook_size <= 65536 else np.dtype(np.int32)


def _shard_names(index: int) -> tuple[str, str, str]:
    return f"tokens-{index:05d}.npy", f"labels-{index:05d}.npy", f"keys-{index:05d}.json"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def _with_flips(source: Iterable) -> Iterator[tuple[str, torch.Tensor, int]]:
    for key, image, label in source:
        yield str(key), image, int(label)
        yield f"{key}#flip", torch.flip(torch.as_tensor(image), dims=[-1]), int(label)


def _batched(items: Iterator, size: int) -> Iterator[list]:
    while True:
        batch = list(itertools.islice(items, size))
        if not batch:
            return
        yield batch


def export_tokens(
    tokenizer,
    source: Iterable,
    out_dir: str | Path,
    *,
    model_id: str,
    sources: list[str] | None = None,
    flip: bool = False,
    shard_size: int = 10000,
    batch_size: int = 64,
    total: int | None = None,
    progress: bool = True,
    resume: bool = True,
) -> dict:
    """Tokenize every ``(key, image, label)`` of ``source`` into shards under ``out_dir``.

    ``source`` must yield the same sequence each time (revq image sources do).  Returns the
    final manifest.  An existing complete export with the same settings is left as it is; an
    incomplete one resumes; one with other settings is an error unless ``resume=False``
    (which starts over).
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tokenizer.config
    settings = {
        "format": FORMAT,
        "version": 1,
        "model_id": str(model_id),
        "autoencoder": str(cfg.autoencoder.name),
        "resolution": int(cfg.autoencoder.resolution),
        "num_tokens": int(cfg.num_tokens),
        "codebook_size": int(cfg.codebook_size),
        "split": str(cfg.split),
        "dtype": token_dtype(cfg.codebook_size).name,
        "flip": bool(flip),
        "shard_size": int(shard_size),
        "sources": list(sources or []),
    }
    manifest = {**settings, "shards": [], "num_images": 0, "token_count": 0, "complete": False}
    path = out / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        same = all(old.get(k) == v for k, v in settings.items())
        if same and resume:
            manifest = old
            if old.get("complete"):
                log.info("%s already holds a complete export", out)
                return old
        elif resume:
            diff = sorted(k for k, v in settings.items() if old.get(k) != v)
            raise RevqError(
                f"{out} holds a token export with other settings ({', '.join(diff)}); "
                "choose another --out or remove it"
            )
    done = sum(s["count"] for s in manifest["shards"])
    items: Iterator = _with_flips(source) if flip else ((str(k), im, int(lb)) for k, im, lb in source)
    if done:
        log.info("resuming %s after %d finished samples", out, done)
        items = itertools.islice(items, done, None)
    expected = None if total is None else total * (2 if flip else 1)
    bar = tqdm(total=expected, initial=done, unit="img", desc="tokenize", disable=not progress, dynamic_ncols=True)
    dtype = token_dtype(cfg.codebook_size)
    shard_index = len(manifest["shards"])
    try:
        for shard_items in _batched(items, shard_size):
            tokens = []
            for batch in _batched(iter(shard_items), batch_size):
                images = torch.stack([torch.as_tensor(im) for _, im, _ in batch])
                tokens.append(tokenizer.encode(images).cpu().numpy().astype(dtype))
                bar.update(len(batch))
            tokens_np = np.concatenate(tokens)
            labels = np.asarray([lb for _, _, lb in shard_items], dtype=np.int64)
            keys = [k for k, _, _ in shard_items]
            tname, lname, kname = _shard_names(shard_index)
            _save_npy(out / tname, tokens_np)
            _save_npy(out / lname, labels)
            write_json_atomic(out / kname, keys)
            manifest["shards"].append({"tokens": tname, "labels": lname, "keys": kname, "count": len(keys)})
            manifest["num_images"] = sum(s["count"] for s in manifest["shards"])
            manifest["token_count"] = manifest["num_images"] * int(cfg.num_tokens)
            write_json_atomic(path, manifest)
            shard_index += 1
    finally:
        bar.close()
    labels_all = np.concatenate([np.load(out / s["labels"]) for s in manifest["shards"]]) if manifest["shards"] else np.zeros(0, np.int64)
    present = labels_all[labels_all >= 0]
    manifest["labels"] = {
        "present": bool(present.size),
        "num_classes": int(present.max()) + 1 if present.size else 0,
        "unlabelled": int((labels_all < 0).sum()),
    }
    skipped = getattr(source, "skipped", None)
    if skipped is not None:
        manifest["skipped"] = [list(map(str, s)) for s in skipped]
    manifest["complete"] = True
    write_json_atomic(path, manifest)
    return manifest


class TokenShards:
    """Reader of an export directory: ``len``, ``shard(i)``, ``tokens()``, ``labels``, ``keys``."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise RevqError(f"{self.dir} is not a token export (no {MANIFEST})")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise RevqError(f"{path} is not a revq token manifest")
        self._counts = [s["count"] for s in self.manifest["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(self._counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_shards(self) -> int:
        return len(self._counts)

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def shard(self, index: int, *, mmap: bool = True) -> np.ndarray:
        return np.load(self.dir / self.manifest["shards"][index]["tokens"], mmap_mode="r" if mmap else None)

    def shard_labels(self, index: int) -> np.ndarray:
        return np.load(self.dir / self.manifest["shards"][index]["labels"])

    def shard_keys(self, index: int) -> list[str]:
        return json.loads((self.dir / self.manifest["shards"][index]["keys"]).read_text())

    def tokens(self) -> np.ndarray:
        """All tokens (n, T) in memory, in export order."""
        if not self._counts:
            return np.zeros((0, self.manifest["num_tokens"]), dtype=self.manifest["dtype"])
        return np.concatenate([np.asarray(self.shard(i)) for i in range(self.num_shards)])

    @property
    def labels(self) -> np.ndarray:
        if not self._counts:
            return np.zeros(0, np.int64)
        return np.concatenate([self.shard_labels(i) for i in range(self.num_shards)])

    @property
    def keys(self) -> list[str]:
        return [k for i in range(self.num_shards) for k in self.shard_keys(i)]

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        return np.asarray(self.shard(shard)[index - self._starts[shard]])
