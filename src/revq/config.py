"""Configuration objects.  One dataclass per concern, JSON round-trippable, validated early.

``ReVQConfig`` describes a model (what ``save_pretrained`` writes as ``config.json``).
Training options live in :mod:`revq.training.config`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revq.errors import ConfigError

SPLITS = ("channel", "spatial", "single")
RECTIFIERS = ("efficientvit", "cnn", "mlp", "none")
NORMALIZATIONS = ("element", "channel", "global", "none")
OBJECTIVES = ("decoupled", "paper")


@dataclass
class AutoencoderInfo:
    """Identity of the frozen autoencoder a model was built for."""

    name: str = "taef2"  # registry name, hub id or local path
    resolution: int = 64  # image side length the latents came from
    latent_shape: tuple[int, int, int] = (32, 8, 8)  # (C, H, W)

    def __post_init__(self) -> None:
        self.latent_shape = tuple(int(v) for v in self.latent_shape)


@dataclass
class RectifierConfig:
    kind: str = "efficientvit"  # one of RECTIFIERS
    width: int = 512
    depth: int = 3
    # residual=True: z' = q + f(q) with f's last layer zero-initialised (identity at step 0).
    # residual=False: the authors' form z' = f(q) (needed for their checkpoints).
    residual: bool = True
    head_dim: int = 32  # EfficientViT attention head dimension
    expand_ratio: float = 4.0  # EfficientViT GLU-MBConv expansion
    mlp_hidden: int = 1024  # "mlp" kind hidden width

    def __post_init__(self) -> None:
        if self.kind not in RECTIFIERS:
            raise ConfigError(f"rectifier kind {self.kind!r} unknown; choose from {RECTIFIERS}")


class JsonConfig:
    """JSON file round trip and strict key checking, shared by the config dataclasses."""

    @classmethod
    def check_keys(cls, data: dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys: {sorted(unknown)}; valid keys: {sorted(known)}")

    def to_json(self, path: str | Path) -> None:
        from revq.io_utils import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class ReVQConfig(JsonConfig):
    """A ReVQ model: latent normaliser + multi-group quantizer + rectifier."""

    latent_shape: tuple[int, int, int] = (32, 8, 8)  # (C, H, W) of the autoencoder latent
    num_tokens: int = 512  # B in the paper: tokens per image
    codebook_size: int = 16384  # N: codes per token position (each position has its own codebook)
    split: str = "channel"  # one of SPLITS
    # 1 = the paper (own codebook per token position); k > 1: k consecutive token positions share
    # one codebook (channel split: T/C = one codebook per latent channel, shared across positions)
    tokens_per_codebook: int = 1
    normalization: str = "element"  # one of NORMALIZATIONS
    objective: str = "decoupled"  # one of OBJECTIVES
    reset_noise: float = 0.1  # std of the reset jitter, relative to the codebook's std
    reset_max_fraction: float = 1.0  # paper Eq. 3: 1.0 (no cap); authors' code: 0.2
    pre_encoder: bool = False  # Table 6 ablation: a rectifier-shaped encoder before quantizing
    rectifier: RectifierConfig = field(default_factory=RectifierConfig)
    autoencoder: AutoencoderInfo = field(default_factory=AutoencoderInfo)

    def __post_init__(self) -> None:
        self.latent_shape = tuple(int(v) for v in self.latent_shape)
        if isinstance(self.rectifier, dict):
            self.rectifier = RectifierConfig(**self.rectifier)
        if isinstance(self.autoencoder, dict):
            self.autoencoder = AutoencoderInfo(**self.autoencoder)
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def latent_numel(self) -> int:
        return math.prod(self.latent_shape)

    @property
    def token_dim(self) -> int:
        """d: values per token (C*H*W / B)."""
        return self.latent_numel // self.num_tokens

    @property
    def num_codebooks(self) -> int:
        """Distinct codebooks: B / tokens_per_codebook, or 1 for the shared "single" split."""
        return 1 if self.split == "single" else self.num_tokens // self.tokens_per_codebook

    @property
    def bits_per_image(self) -> float:
        return self.num_tokens * math.log2(self.codebook_size)

    def valid_token_counts(self) -> list[int]:
        n = self.latent_numel
        return [b for b in range(1, n + 1) if n % b == 0]

    def validate(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"split {self.split!r} unknown; choose from {SPLITS}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization {self.normalization!r} unknown; choose from {NORMALIZATIONS}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective {self.objective!r} unknown; choose from {OBJECTIVES}")
        if self.num_tokens <= 0 or self.latent_numel % self.num_tokens:
            raise ConfigError(
                f"num_tokens={self.num_tokens} does not divide the latent size "
                f"{'x'.join(map(str, self.latent_shape))}={self.latent_numel}; "
                f"valid token counts: {self.valid_token_counts()}"
            )
        if self.codebook_size < 1:
            raise ConfigError("codebook_size must be >= 1")
        if self.tokens_per_codebook < 1 or self.num_tokens % self.tokens_per_codebook:
            raise ConfigError(
                f"tokens_per_codebook={self.tokens_per_codebook} must divide num_tokens={self.num_tokens}"
            )
        if not 0.0 < self.reset_max_fraction <= 1.0:
            raise ConfigError("reset_max_fraction must be in (0, 1]")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["latent_shape"] = list(self.latent_shape)
        data["autoencoder"]["latent_shape"] = list(self.autoencoder.latent_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReVQConfig":
        cls.check_keys(data)
        return cls(**data)


def apply_overrides(obj: Any, overrides: list[str]) -> Any:
    """Apply ``key=value`` strings (dotted keys for nested fields) to a dataclass in place.

    Values are parsed as JSON when possible (``3``, ``1e-3``, ``true``, ``[1,2]``), else kept as
    strings.  An unknown key is a :class:`ConfigError` naming the valid ones.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = obj
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not hasattr(target, part):
                raise ConfigError(f"unknown config key {key!r}")
            target = getattr(target, part)
        leaf = parts[-1]
        if not dataclasses.is_dataclass(target) or leaf not in {f.name for f in dataclasses.fields(target)}:
            names = [f.name for f in dataclasses.fields(target)] if dataclasses.is_dataclass(target) else []
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {names}")
        setattr(target, leaf, value)
    if hasattr(obj, "__post_init__"):
        obj.__post_init__()
    return obj
