"""Where revq finds things that are not in the repository: weights, data, caches.

Resolution order for the shared resources folder (weights/ and data/ as laid out in the
project's ``shared/`` folder):

1. the ``REVQ_SHARED_DIR`` environment variable;
2. a ``shared`` folder beside the current directory or beside any of its parents
   (so ``../shared`` works from a checkout, as in the development workplace);
3. the same, searched upwards from this package's install location.

Nothing is ever downloaded here; callers that can download (with a checksum) do so into
:func:`user_cache_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_ENV = "REVQ_SHARED_DIR"
WEIGHTS_ENV = "REVQ_WEIGHTS_DIR"
DATA_ENV = "REVQ_DATA_DIR"
CACHE_ENV = "REVQ_CACHE_DIR"


def _looks_like_shared(path: Path) -> bool:
    return path.is_dir() and ((path / "weights").is_dir() or (path / "data").is_dir())


def _search_upwards(start: Path) -> Path | None:
    for folder in [start, *start.parents]:
        candidate = folder / "shared"
        if _looks_like_shared(candidate):
            return candidate
    return None


def shared_dir() -> Path | None:
    """The shared resources folder, or None when there is none."""
    env = os.environ.get(SHARED_ENV)
    if env:
        path = Path(env).expanduser()
        return path if path.is_dir() else None
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        found = _search_upwards(start)
        if found is not None:
            return found
    return None


def weights_dir() -> Path | None:
    """Folder holding autoencoder weights (``REVQ_WEIGHTS_DIR`` or ``<shared>/weights``)."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    shared = shared_dir()
    return shared / "weights" if shared is not None else None


def tiny_imagenet_dir() -> Path | None:
    """Folder with the Tiny-ImageNet-64 WebDataset shards (``REVQ_DATA_DIR`` or shared)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    shared = shared_dir()
    if shared is None:
        return None
    path = shared / "data" / "tiny-imagenet-200"
    return path if path.is_dir() else None


def user_cache_dir() -> Path:
    """Per-user cache for downloads and converted checkpoints (``REVQ_CACHE_DIR``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "revq"
