"""Image sources and preprocessing: ImageFolder trees, WebDataset tar shards, file lists.

Two stages, so that the expensive one can run in worker processes:

1. *records* — ``(index, key, data: bytes | path, label)`` enumerated in a deterministic order
   by :meth:`ImageSource.records` (cheap: tar shards are streamed with :mod:`tarfile`, never
   unpacked to disk);
2. *decoding* — :func:`decode_record` turns one record into zero, one or two (flip) uint8
   arrays (H,W,3) at R x R: resize the short side to R (antialiased), centre crop.

Bad input never kills a long job: it is converted (grayscale, CMYK, RGBA, 16-bit, smaller
than R) or skipped (truncated, corrupt, not an image, decompression bomb), each with a
reason logged and counted in :attr:`ImageSource.skipped` / :attr:`ImageSource.converted`.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from revq.errors import RevqError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
DEFAULT_MAX_PIXELS = 128 * 2**20  # beyond this an image is treated as a decompression bomb


@dataclass(frozen=True)
class Record:
    """One raw input: bytes (from a tar shard) or a file path, before decoding."""

    index: int  # position in the source's deterministic order
    key: str
    data: bytes | str  # encoded bytes, or a path to read in the worker
    label: int = -1


@dataclass
class Decoded:
    """Result of decoding one record: images (uint8 (R,R,3)) or a skip reason."""

    index: int
    key: str
    label: int
    images: list[np.ndarray] = field(default_factory=list)  # [original] or [original, flipped]
    skipped: str | None = None  # reason when no image came out
    converted: list[str] = field(default_factory=list)  # notes on conversions applied


# ---------------------------------------------------------------------- decoding
def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; RGBA composited on white, 16-bit scaled (not clipped)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if (mode.startswith("I;16") or array.max(initial=0) > 255) else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        notes.append(f"{mode} {'16-bit' if top > 255 else 'integer'} -> 8-bit RGB")
        return Image.fromarray(array, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"{mode} with alpha composited on white")
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK -> RGB")
    elif mode in ("L", "1"):
        notes.append("grayscale -> RGB")
    elif mode != "P":
        notes.append(f"{mode} -> RGB")
    return image.convert("RGB")


def preprocess(image: Image.Image, resolution: int, notes: list[str]) -> np.ndarray:
    """Paper preprocessing: short side -> R (antialiased bicubic), centre crop -> (R,R,3) uint8."""
    image = _to_rgb(image, notes)
    width, height = image.size
    if min(width, height) < resolution:
        notes.append(f"upscaled from {width}x{height} (smaller than {resolution})")
    if min(width, height) != resolution:
        scale = resolution / min(width, height)
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)  # PIL resize is antialiased
        width, height = image.size
    left, top = (width - resolution) // 2, (height - resolution) // 2
    if (width, height) != (resolution, resolution):
        image = image.crop((left, top, left + resolution, top + resolution))
    return np.array(image, dtype=np.uint8)  # (R,R,3), writable copy


def decode_record(
    record: Record,
    *,
    resolution: int,
    flip: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    small: str = "upscale",
) -> Decoded:
    """Decode and preprocess one record; never raises for bad input (returns a skip reason)."""
    out = Decoded(record.index, record.key, record.label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            source = io.BytesIO(record.data) if isinstance(record.data, bytes) else record.data
            with Image.open(source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    out.skipped = f"decompression bomb: {width}x{height} exceeds {max_pixels} pixels"
                    return out
                if min(width, height) < resolution and small == "skip":
                    out.skipped = f"too small: {width}x{height} < {resolution}"
                    return out
                if getattr(image, "n_frames", 1) > 1:
                    image.seek(0)
                    out.converted.append("multi-frame: first frame used")
                image.load()
                array = preprocess(image, resolution, out.converted)
    except Image.DecompressionBombError as error:
        out.skipped = f"decompression bomb: {error}"
        return out
    except (FileNotFoundError, PermissionError, IsADirectoryError) as error:
        out.skipped = f"unreadable file: {type(error).__name__}: {error}"
        return out
    except UnidentifiedImageError:
        out.skipped = "not an image (unidentified format)"
        return out
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        out.skipped = f"corrupt or truncated image: {type(error).__name__}: {error}"
        return out
    out.images.append(array)
    if flip:
        out.images.append(np.ascontiguousarray(array[:, ::-1]))
    return out


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """(R,R,3) uint8 -> (3,R,R) float32 in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255.0)


# ---------------------------------------------------------------------- enumeration
def _is_tar(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(s) for s in TAR_SUFFIXES)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the base name."""
    folder, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class _TarReader:
    """Streams (key, image bytes | None, label, note) samples from one shard, in tar order."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[tuple[str, bytes | None, int, str | None]]:
        current: str | None = None
        parts: dict[str, bytes] = {}
        try:
            with tarfile.open(self.path, "r|*") as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    key, ext = _split_key(member.name)
                    if current is not None and key != current:
                        yield self._sample(current, parts)
                        parts = {}
                    current = key
                    handle = archive.extractfile(member)
                    parts[ext] = handle.read() if handle is not None else b""
        except (tarfile.TarError, OSError, EOFError) as error:
            if current is not None:
                parts = {}  # the sample in progress may be cut: skip it below
                yield (current, None, -1, f"shard truncated or corrupt: {error}")
                current = None
            else:
                yield (f"{self.path.name}", None, -1, f"unreadable tar shard: {error}")
        if current is not None:
            yield self._sample(current, parts)

    @staticmethod
    def _sample(key: str, parts: dict[str, bytes]) -> tuple[str, bytes | None, int, str | None]:
        label = -1
        if "cls" in parts:
            try:
                label = int(parts["cls"].decode().strip())
            except ValueError:
                label = -1
        for ext, data in parts.items():
            if "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                return key, data, label, None
        return key, None, label, f"no image in sample (parts: {', '.join(sorted(parts)) or 'none'})"


class ImageSource:
    """Images from folders, tar shards and files, in a deterministic order.

    Iterating yields ``(key, image (3,R,R) float32 in [0,1], label)`` (label -1 when none);
    with ``flip`` every image is followed by its mirror (key suffix ``#flip``).  ``limit``
    counts source images (before flip copies).
    """

    def __init__(
        self,
        inputs: Sequence[str | os.PathLike],
        *,
        resolution: int,
        flip: bool = False,
        limit: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        small: str = "upscale",
    ) -> None:
        if resolution <= 0:
            raise RevqError(f"resolution must be positive, got {resolution}")
        if small not in ("upscale", "skip"):
            raise RevqError(f"small must be 'upscale' or 'skip', got {small!r}")
        self.inputs = _expand_inputs(inputs)
        self.resolution = int(resolution)
        self.flip = bool(flip)
        self.limit = None if limit is None else int(limit)
        self.max_pixels = int(max_pixels)
        self.small = small
        self.skipped: list[tuple[str, str]] = []
        self.converted: list[tuple[str, str]] = []
        self._classes: dict[Path, list[str]] = {}

    # -------------------------------------------------------------- description
    def describe(self) -> list[dict]:
        """Sources as recorded in a cache manifest (and checked when resuming)."""
        out = []
        for path in self.inputs:
            stat = path.stat()
            kind = "tar" if _is_tar(path) else "folder" if path.is_dir() else "file"
            item = {"path": str(path), "kind": kind}
            if kind != "folder":
                item["size"] = stat.st_size
            out.append(item)
        return out

    def options(self) -> dict:
        return {
            "resolution": self.resolution,
            "flip": self.flip,
            "limit": self.limit,
            "max_pixels": self.max_pixels,
            "small": self.small,
        }

    def class_names(self) -> list[str] | None:
        """ImageFolder class names (index = label) when the source is a single folder tree."""
        folders = [p for p in self.inputs if p.is_dir()]
        if len(folders) == 1 and len(self.inputs) == 1:
            return self._folder_classes(folders[0]) or None
        return None

    def estimated_count(self) -> int | None:
        """Number of images when known without reading (folders / files); None for tars."""
        total = 0
        for path in self.inputs:
            if _is_tar(path):
                return self.limit
            total += sum(1 for _ in self._folder_files(path)) if path.is_dir() else 1
        return total if self.limit is None else min(total, self.limit)

    # -------------------------------------------------------------- records
    def _folder_classes(self, root: Path) -> list[str]:
        if root not in self._classes:
            self._classes[root] = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return self._classes[root]

    def _folder_files(self, root: Path) -> Iterator[tuple[Path, int]]:
        classes = self._folder_classes(root)
        # images directly under root have no class
        for path in sorted(p for p in root.iterdir() if p.is_file() and _is_image(p)):
            yield path, -1
        for label, name in enumerate(classes):
            for dirpath, dirnames, filenames in os.walk(root / name):
                dirnames.sort()
                for file_name in sorted(filenames):
                    path = Path(dirpath) / file_name
                    if _is_image(path):
                        yield path, label

    def _raw(self) -> Iterator[tuple[str, bytes | str | None, int, str | None]]:
        for path in self.inputs:
            if _is_tar(path):
                yield from _TarReader(path)
            elif path.is_dir():
                for file, label in self._folder_files(path):
                    yield str(file.relative_to(path)), str(file), label, None
            else:
                yield path.name, str(path), -1, None

    def records(self, *, start: int = 0) -> Iterator[Record | tuple[int, str, str]]:
        """Raw records in order from record index ``start`` (earlier ones are passed over
        without decoding).  Samples unusable before decoding come as (index, key, reason)."""
        for index, (key, data, label, problem) in enumerate(self._raw()):
            if index < start:
                continue
            if data is None:
                yield (index, key, problem or "unreadable")
            else:
                yield Record(index, key, data, label)

    def decode(self, record: Record) -> Decoded:
        return decode_record(
            record, resolution=self.resolution, flip=self.flip, max_pixels=self.max_pixels, small=self.small
        )

    def note(self, decoded: Decoded) -> None:
        """Log and count a decoded record's skip reason / conversions."""
        if decoded.skipped is not None:
            logger.warning("skipped %s: %s", decoded.key, decoded.skipped)
            self.skipped.append((decoded.key, decoded.skipped))
        for note in decoded.converted:
            logger.debug("converted %s: %s", decoded.key, note)
            self.converted.append((decoded.key, note))

    # -------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[tuple[str, torch.Tensor, int]]:
        self.skipped, self.converted = [], []
        taken = 0
        for item in self.records():
            if self.limit is not None and taken >= self.limit:
                return
            decoded = self.decode(item) if isinstance(item, Record) else Decoded(item[0], item[1], -1, skipped=item[2])
            self.note(decoded)
            if decoded.images:
                taken += 1
            for i, array in enumerate(decoded.images):
                yield (decoded.key if i == 0 else f"{decoded.key}#flip"), to_tensor(array), decoded.label

    def summary(self) -> str:
        reasons = Counter(reason.split(":")[0] for _, reason in self.skipped)
        converts = Counter(note for _, note in self.converted)
        text = f"{len(self.skipped)} skipped"
        if reasons:
            text += " (" + ", ".join(f"{n} {r}" for r, n in reasons.most_common()) + ")"
        text += f", {len(self.converted)} converted"
        if converts:
            text += " (" + ", ".join(f"{n} {r}" for r, n in converts.most_common(5)) + ")"
        return text


def _shards_in(folder: Path) -> list[Path]:
    """A folder of WebDataset shards (tar files, no class sub-folders) -> its shards, sorted."""
    if not folder.is_dir():
        return []
    entries = list(folder.iterdir())
    if any(p.is_dir() and not p.name.startswith(".") for p in entries):
        return []
    return sorted(p.resolve() for p in entries if _is_tar(p))


def _expand_inputs(inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Paths, glob patterns and ``.txt`` list files -> existing paths (order kept)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.exists():
            shards = _shards_in(path)
            if shards:
                logger.info("%s holds tar shards, not class folders: reading %d shards", path, len(shards))
                out.extend(shards)
            elif path.is_file() and path.suffix == ".txt":
                base = path.parent
                lines = [ln.strip() for ln in path.read_text().splitlines()]
                out.extend(_expand_inputs([str(base / ln) for ln in lines if ln and not ln.startswith("#")]))
            else:
                out.append(path.resolve())
            continue
        matches = sorted(glob.glob(os.path.expanduser(text)))
        if not matches:
            raise RevqError(f"image input {text!r} does not exist (and matches no files as a pattern)")
        out.extend(Path(m).resolve() for m in matches)
    for path in out:
        if path.is_file() and not (_is_tar(path) or _is_image(path)):
            raise RevqError(
                f"{path} is neither an image, a tar shard ({', '.join(TAR_SUFFIXES)}), a folder nor a .txt list"
            )
    if not out:
        raise RevqError("no image inputs given")
    return out


def open_image_source(
    path_or_list: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    resolution: int,
    flip: bool = False,
    limit: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    small: str = "upscale",
) -> ImageSource:
    """An :class:`ImageSource` over an ImageFolder tree, tar shards, images or a ``.txt`` list."""
    inputs = [path_or_list] if isinstance(path_or_list, (str, os.PathLike)) else list(path_or_list)
    return ImageSource(inputs, resolution=resolution, flip=flip, limit=limit, max_pixels=max_pixels, small=small)
