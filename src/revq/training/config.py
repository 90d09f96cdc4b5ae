"""Training options: :class:`TrainConfig` = a model (:class:`~revq.config.ReVQConfig`) plus the
recipe (optimiser, schedule, batch, checkpoints) and the run's inputs/outputs.

JSON round-trippable (``to_dict``/``from_dict``) and overridable from the command line with
``--set key=value`` (dotted keys reach the model: ``model.codebook_size=4096``) through
:func:`revq.config.apply_overrides`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from revq.config import JsonConfig, ReVQConfig
from revq.errors import ConfigError

SCHEDULES = ("exponential", "cosine", "constant")
INIT_METHODS = ("random", "kmeans")
DEVICES = ("auto", "cpu", "cuda")

# Keys that may differ between a run and its resumption (they do not change the result).
NON_SEMANTIC_KEYS = frozenset(
    {
        "latents", "val_latents", "out", "preset", "overrides", "device", "progress",
        "tensorboard", "log_every_steps", "checkpoint_every_steps", "keep_last",
        "prefetch", "val_batch_size",
    }
)


@dataclass
class TrainConfig(JsonConfig):
    """Everything ``revq train`` needs.  Defaults follow the authors' recipe (see
    ``shared/paper/reference-implementation-facts.md``)."""

    model: ReVQConfig = field(default_factory=ReVQConfig)

    # ---- run inputs / outputs (recorded, not part of the recipe)
    latents: str = ""  # training latent cache directory
    val_latents: str | None = None  # held-out latent cache (validation each epoch)
    out: str = ""  # run directory
    preset: str = ""  # name of the preset this config started from (record only)
    overrides: list[str] = field(default_factory=list)  # --set items applied (record only)

    # ---- recipe
    epochs: int = 100
    batch_size: int = 128  # global batch (all ranks together)
    lr: float = 1e-2  # codebook learning rate ("base lr")
    rectifier_lr_ratio: float = 0.05  # rectifier lr = lr * ratio
    codebook_weight_decay: float = 0.0
    rectifier_weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max grad norm, applied to each parameter group separately; 0 = off
    schedule: str = "exponential"  # "exponential" (per epoch, authors') | "cosine" (per step) | "constant"
    final_lr_ratio: float = 0.05  # lr at the end of training / base lr
    warmup_steps: int = 0  # linear warm-up (any schedule)
    bf16: bool = False  # bf16 autocast for the rectifier (quantizer and codebooks stay fp32)
    sparse_codebook_adam: bool = False  # row-sparse AdamW for the codebooks (revq.training.optim): sparse row
    # gradients, only rows with a gradient in the last ~90 steps are updated (dense AdamW otherwise); for huge codebooks
    init_method: str = "random"  # codebook initialisation from training latents
    init_samples: int = 65536  # latents drawn for initialisation: min(len(data), max(N, this))
    reset_every_epochs: int = 1  # non-activation reset period in epochs; 0 = never (ablation)
    seed: int = 0

    # ---- machinery
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    checkpoint_every_steps: int = 500  # plus one at every epoch end; 0 = epoch ends only
    keep_last: int = 3  # checkpoints kept in RUN_DIR/checkpoints
    log_every_steps: int = 20  # progress/metrics interval (also the NaN-check interval)
    val_batch_size: int = 512
    val_limit: int = 0  # validate on the first N held-out latents; 0 = all
    prefetch: bool = True  # read the next batch in a background thread
    progress: bool = True  # tqdm progress bar (rank 0)
    tensorboard: bool = True  # write TensorBoard events when tensorboard is installed

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ReVQConfig.from_dict(self.model)
        else:
            self.model.__post_init__()
        self.betas = tuple(float(b) for b in self.betas)
        self.overrides = list(self.overrides)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ConfigError(message)

        need(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an integer >= 1, got {self.epochs!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.rectifier_lr_ratio >= 0, "rectifier_lr_ratio must be >= 0")
        need(self.codebook_weight_decay >= 0 and self.rectifier_weight_decay >= 0, "weight decays must be >= 0")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1), got {self.betas}")
        need(self.grad_clip >= 0, "grad_clip must be >= 0 (0 disables clipping)")
        need(self.schedule in SCHEDULES, f"schedule {self.schedule!r} unknown; choose from {SCHEDULES}")
        need(0 < self.final_lr_ratio <= 1, "final_lr_ratio must be in (0, 1]")
        need(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "warmup_steps must be an integer >= 0")
        need(self.init_method in INIT_METHODS, f"init_method {self.init_method!r} unknown; choose from {INIT_METHODS}")
        need(isinstance(self.init_samples, int) and self.init_samples >= 1, "init_samples must be an integer >= 1")
        need(isinstance(self.reset_every_epochs, int) and self.reset_every_epochs >= 0, "reset_every_epochs must be an integer >= 0")
        need(isinstance(self.seed, int), "seed must be an integer")
        need(self.device in DEVICES, f"device {self.device!r} unknown; choose from {DEVICES}")
        need(isinstance(self.checkpoint_every_steps, int) and self.checkpoint_every_steps >= 0, "checkpoint_every_steps must be an integer >= 0")
        need(isinstance(self.keep_last, int) and self.keep_last >= 1, "keep_last must be an integer >= 1")
        need(isinstance(self.log_every_steps, int) and self.log_every_steps >= 1, "log_every_steps must be an integer >= 1")
        need(isinstance(self.val_batch_size, int) and self.val_batch_size >= 1, "val_batch_size must be an integer >= 1")
        need(isinstance(self.val_limit, int) and self.val_limit >= 0, "val_limit must be an integer >= 0")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model"] = self.model.to_dict()
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        cls.check_keys(data)
        data = dict(data)
        if "model" in data and isinstance(data["model"], dict):
            data["model"] = ReVQConfig.from_dict(data["model"])
        return cls(**data)

    def copy(self) -> "TrainConfig":
        return TrainConfig.from_dict(json.loads(json.dumps(self.to_dict())))

    def semantic_diff(self, other: "TrainConfig") -> list[str]:
        """Keys (dotted) whose values differ in a way that changes the trained result."""
        a, b = _flatten(self.to_dict()), _flatten(other.to_dict())
        keys = sorted(set(a) | set(b))
        return [k for k in keys if k.split(".")[0] not in NON_SEMANTIC_KEYS and a.get(k) != b.get(k)]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
