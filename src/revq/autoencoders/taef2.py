"""TAEF2: the tiny distilled autoencoder for the FLUX.2 latent space (the offline default).

Our own implementation of the TAESD-family architecture; the module layout reproduces the
upstream ``nn.Sequential`` indices so the original ``.pth`` state dicts load unchanged
(with ``weights_only=True``: no pickle code runs).

Why the default: at 64x64 pixels TAEF2 gives a 32x8x8 latent (2048 values), the latent
shape of the paper's DC-AE f32c32 at 256 px, and it runs offline on a CPU.

Weights are resolved in this order (see :func:`resolve_weights`):

1. an explicit ``weights_path`` (a folder holding ``taef2_encoder.pth`` / ``taef2_decoder.pth``);
2. ``REVQ_WEIGHTS_DIR``;
3. the project's shared weights (``revq.paths.weights_dir()``, e.g. ``../shared/weights``);
4. the user cache (``revq.paths.user_cache_dir()/weights``), downloading there from the
   upstream URL when missing.

Everything except an explicit path is verified against the SHA-256 below.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

import torch
from torch import nn

from revq import paths
from revq.autoencoders.base import Autoencoder
from revq.errors import MissingResourceError, RevqError

logger = logging.getLogger(__name__)

NAME = "taef2"
UPSTREAM_URL = "https://github.com/madebyollin/taesd/raw/main/{file}"
FILES = {"encoder": "taef2_encoder.pth", "decoder": "taef2_decoder.pth"}
# SHA-256 of the upstream files (the same as ../shared/weights/SHA256SUMS).
SHA256 = {
    "taef2_encoder.pth": "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    "taef2_decoder.pth": "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
}
LATENT_CHANNELS = 32
DOWNSAMPLE = 8
WIDTH = 64


class ChecksumError(RevqError):
    """A weights file whose SHA-256 is not the expected one."""


# ---------------------------------------------------------------------- architecture
def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Block(nn.Module):
    """Residual 3-conv block ``ReLU(conv(x) + x)``; with ``pool`` a GroupNorm MLP first."""

    def __init__(self, channels: int = WIDTH, *, gn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            conv(channels, channels), nn.ReLU(), conv(channels, channels), nn.ReLU(), conv(channels, channels)
        )
        self.pool = None
        if gn:
            self.pool = nn.Sequential(
                nn.Conv2d(channels, channels * 4, 1, bias=False),
                nn.GroupNorm(4, channels * 4),
                nn.ReLU(),
                nn.Conv2d(channels * 4, channels, 1, bias=False),
            )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


class Clamp(nn.Module):
    """Soft clamp ``3 * tanh(x / 3)``: keeps out-of-range latents from exploding the decoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def build_encoder(latent_channels: int = LATENT_CHANNELS) -> nn.Sequential:
    """(B,3,R,R) in [0,1] -> (B,32,R/8,R/8)."""
    c = WIDTH
    return nn.Sequential(
        conv(3, c), Block(c),                                            # 0, 1
        conv(c, c, stride=2, bias=False), Block(c), Block(c), Block(c),  # 2-5   R/2
        conv(c, c, stride=2, bias=False), Block(c), Block(c), Block(c),  # 6-9   R/4
        conv(c, c, stride=2, bias=False),                                # 10    R/8
        Block(c, gn=True), Block(c, gn=True), Block(c, gn=True),         # 11-13
        conv(c, latent_channels),                                        # 14
    )


def build_decoder(latent_channels: int = LATENT_CHANNELS) -> nn.Sequential:
    """(B,32,h,w) -> (B,3,8h,8w), approximately in [0,1]."""
    c = WIDTH
    return nn.Sequential(
        Clamp(), conv(latent_channels, c), nn.ReLU(),                    # 0-2
        Block(c, gn=True), Block(c, gn=True), Block(c, gn=True),         # 3-5
        nn.Upsample(scale_factor=2), conv(c, c, bias=False),             # 6, 7
        Block(c), Block(c), Block(c),                                    # 8-10
        nn.Upsample(scale_factor=2), conv(c, c, bias=False),             # 11, 12
        Block(c), Block(c), Block(c),                                    # 13-15
        nn.Upsample(scale_factor=2), conv(c, c, bias=False),             # 16, 17
        Block(c), conv(c, 3),                                            # 18, 19
    )


class TAEF2(Autoencoder):
    """TAEF2 behind the :class:`Autoencoder` interface.  Latents need no scale or shift."""

    name = NAME
    latent_channels = LATENT_CHANNELS
    downsample = DOWNSAMPLE

    def __init__(self) -> None:
        super().__init__()
        self.encoder = build_encoder()
        self.decoder = build_decoder()

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)

    @classmethod
    def load(
        cls,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        weights_path: str | os.PathLike | None = None,
        download: bool = True,
    ) -> "TAEF2":
        model = cls()
        for part, module in (("encoder", model.encoder), ("decoder", model.decoder)):
            path = resolve_weights(part, weights_path=weights_path, download=download)
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v.float() for k, v in state.items()}  # upstream tensors are fp16
            missing, unexpected = module.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise RevqError(
                    f"{path} is not a TAEF2 {part} state dict (missing keys {missing[:5]}, "
                    f"unexpected keys {unexpected[:5]}); use the upstream {FILES[part]}"
                )
        return model.to(device=device, dtype=dtype).freeze()


# ---------------------------------------------------------------------- weights
def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path, file_name: str) -> None:
    """Refuse a weights file whose SHA-256 differs from the upstream one."""
    got = sha256_file(path)
    want = SHA256[file_name]
    if got != want:
        raise ChecksumError(
            f"{path} has SHA-256 {got}, expected {want} for the upstream {file_name}; the file is "
            f"corrupt or not TAEF2. Delete it and get the original from {UPSTREAM_URL.format(file=file_name)} "
            f"(or pass an explicit weights path to use other weights)."
        )


def _candidate_dirs() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    env = os.environ.get(paths.WEIGHTS_ENV)
    if env:
        found.append((f"${paths.WEIGHTS_ENV}", Path(env).expanduser()))
    shared = paths.shared_dir()
    if shared is not None:
        found.append(("shared weights", shared / "weights"))
    return found


def user_weights_dir() -> Path:
    return paths.user_cache_dir() / "weights"


def resolve_weights(
    part: str, *, weights_path: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """Path of the ``part`` ("encoder"/"decoder") weights; see the module docstring for the order."""
    file_name = FILES[part]
    if weights_path is not None:
        # An explicit choice is final: no silent fallback to other weights, no checksum
        # (it may be the user's own fine-tuned TAEF2).
        base = Path(weights_path).expanduser()
        path = base / file_name if base.is_dir() or not base.suffix else base.parent / file_name
        if not path.is_file():
            raise MissingResourceError(
                f"TAEF2 {part} weights not found at {path} (from the explicit weights path {weights_path}); "
                f"put {file_name} there or omit the path to use the default locations"
            )
        return path

    tried: list[str] = []
    for label, folder in [*_candidate_dirs(), ("user cache", user_weights_dir())]:
        path = folder / file_name
        if path.is_file():
            verify_checksum(path, file_name)
            return path
        tried.append(f"{label}: {path}")

    target = user_weights_dir() / file_name
    url = UPSTREAM_URL.format(file=file_name)
    if not download:
        tried.append("download: disabled")
    else:
        try:
            return download_weights(url, target, file_name)
        except ChecksumError:
            raise
        except Exception as error:  # noqa: BLE001 - offline, proxy, HTTP error...
            tried.append(f"download {url}: {type(error).__name__}: {error}")
    raise MissingResourceError(
        f"TAEF2 {part} weights ({file_name}) not found. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nFix: download {url} (SHA-256 {SHA256[file_name]}) into {target.parent}, "
        f"or set {paths.WEIGHTS_ENV} to a folder holding {FILES['encoder']} and {FILES['decoder']}."
    )


def download_weights(url: str, target: Path, file_name: str, *, timeout: float = 60.0) -> Path:
    """Download into ``target`` via a temporary file; keep it only if the SHA-256 matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.download")
    logger.info("downloading %s -> %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as handle:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                handle.write(chunk)
        try:
            verify_checksum(tmp, file_name)
        except ChecksumError as error:
            raise ChecksumError(f"downloaded {url}: {error}") from None
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
