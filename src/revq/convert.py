"""Convert the authors' released ReVQ checkpoints into our format.

The paper's authors publish three tokenizers trained on ImageNet latents of DC-AE
(``mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers`` at 256x256, latents 32x8x8):

=========================  ========  =========  =====  =====
hub id                     tokens T  codes N    W      L
=========================  ========  =========  =====  =====
``AndyRaoTHU/revq-512T``   512       16,384     512    3
``AndyRaoTHU/revq-256T-B`` 256       65,536     1024   4
``AndyRaoTHU/revq-256T-L`` 256       262,144    512    4
=========================  ========  =========  =====  =====

Each release is three files:

``ckpt.pth``
    a ``torch.save``'d dict with (at least) ``quantizer`` and ``decoder`` state dicts.
    ``quantizer``: ``embeddings`` (T, N, d) float, ``count`` (T, N) (float activation counts),
    ``index_offset`` (T,) int64 equal to ``arange(T) * N``.  ``decoder``: the state dict of
    diffusers' DC-AE ``Decoder`` configured as one stage (``conv_in``, ``up_blocks.0.<i>``,
    ``norm_out``, ``conv_out``).  Training checkpoints may carry ``optimizer``, ``scheduler``
    and ``epoch`` too; they are ignored.  A ``module.`` prefix (DDP) is stripped.
``<name>.yaml``
    the training config (OmegaConf style; ``${...}`` interpolations are left alone).  The parts
    read here, everything else is ignored::

        model:
          input_data_size: [32, 8, 8]       # (C, H, W) of the latent; default [32, 8, 8]
          quantizer:
            TYPE: vq                        # optional; must be "vq" when present
            num_code: 16384                 # N   (alias: codebook_size)
            num_group: 512                  # codebooks; must equal tokens_per_data
            tokens_per_data: 512            # T   (alias: num_tokens; default num_group)
          decoder:                          # the rectifier
            TYPE: dc_ae                     # optional; must be "dc_ae" when present
            in_channels: 32                 # must equal C
            latent_channels: 32             # must equal C
            attention_head_dim: 32
            block_type: [EfficientViTBlock] # one stage, EfficientViT blocks
            block_out_channels: [512]       # W
            layers_per_block: [3]           # L
            qkv_multiscales: [[5]]
            norm_type: rms_norm

    A file holding only the ``model`` section (or only ``quantizer`` and ``decoder``) is
    accepted as well.  Scalars may be given where one-element lists are expected.
``preprocessor.pth``
    ``mean`` and ``std`` buffers of shape (C*H*W,): per-element statistics of the training
    latents.  (In the authors' GitHub repository it is ``ckpt/preprocessor.pth``.)

Every ``.pth`` is read with ``torch.load(weights_only=True)``: nothing is unpickled beyond
tensors and plain containers.  Anything unexpected (an unreadable or truncated file, a missing
key, a wrong shape, a config that disagrees with the tensors, non-finite values) is a
:class:`~revq.errors.RevqError` naming the file and the problem.

The result is an ordinary :class:`revq.model.ReVQ`: the "channel" split (the authors' memory
order layout: token t holds values ``t*d .. t*d+d-1`` of the flattened (C, H, W) latent), one
codebook per token position (T, N, d) copied verbatim, per-element normalisation with their
mean/std reshaped to (C, H, W), and the EfficientViT rectifier in the authors' exact form
(``residual=False``) with their weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from revq.errors import ConfigError, MissingResourceError, RevqError

log = logging.getLogger(__name__)

DCAE_ID = "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers"
DCAE_DOWNSAMPLE = 32
# ``scaling_factor`` in the config.json of DCAE_ID.  The authors' statistics and rectifier work on
# the *raw* DC-AE latent (``vae.encode(x).latent``); revq's DC-AE backend hands out
# ``latent * scaling_factor`` (the diffusers pipelines' convention).  Conversion therefore stores
# mean * s and std * s: normalised latents, tokens and rectifier outputs are then the authors'
# exactly, and the de-normalised output is again in the backend's scaled space.
DCAE_SCALING_FACTOR = 0.41407
CHECKPOINT_FILE = "ckpt.pth"
PREPROCESSOR_FILE = "preprocessor.pth"
MARKER_FILE = "revq_convert.json"  # written last into a converted folder: provenance + "complete"
AUTHORS_REPOSITORY = "https://github.com/Neur-IO/ReVQ"


@dataclass(frozen=True)
class OfficialRelease:
    """A released tokenizer: where its files are and what they must contain."""

    repo_id: str
    config_file: str
    num_tokens: int
    codebook_size: int
    width: int
    depth: int

    @property
    def files(self) -> tuple[str, str, str]:
        return (CHECKPOINT_FILE, self.config_file, PREPROCESSOR_FILE)


OFFICIAL_RELEASES: dict[str, OfficialRelease] = {
    r.repo_id: r
    for r in (
        OfficialRelease("AndyRaoTHU/revq-512T", "512T_NC=16384.yaml", 512, 16384, 512, 3),
        OfficialRelease("AndyRaoTHU/revq-256T-B", "256T_NC=65536.yaml", 256, 65536, 1024, 4),
        OfficialRelease("AndyRaoTHU/revq-256T-L", "256T_NC=262144.yaml", 256, 262144, 512, 4),
    )
}


# ---------------------------------------------------------------------------------- config
@dataclass
class OfficialConfig:
    """What the authors' YAML says about the model (see the module docstring for the schema)."""

    latent_shape: tuple[int, int, int]
    num_tokens: int
    num_groups: int
    codebook_size: int
    width: int
    depth: int
    attention_head_dim: int = 32
    qkv_multiscales: tuple[int, ...] = (5,)
    norm_type: str = "rms_norm"
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def token_dim(self) -> int:
        return math.prod(self.latent_shape) // self.num_tokens

    def decoder_kwargs(self) -> dict[str, Any]:
        """Arguments for diffusers' DC-AE ``Decoder`` that rebuild the authors' rectifier."""
        c = self.latent_shape[0]
        return dict(
            in_channels=c,
            latent_channels=c,
            attention_head_dim=self.attention_head_dim,
            block_type=("EfficientViTBlock",),
            block_out_channels=(self.width,),
            layers_per_block=(self.depth,),
            qkv_multiscales=(tuple(self.qkv_multiscales),),
            norm_type=self.norm_type,
            act_fn="silu",
            upsample_block_type="interpolate",
        )


def _single(value: Any, name: str, source: str) -> Any:
    """A one-stage setting: a scalar or a one-element list."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ConfigError(
                f"{source}: decoder.{name}={list(value)} has {len(value)} stages; the ReVQ "
                "rectifier is a single-stage DC-AE decoder (one entry expected)"
            )
        return value[0]
    return value


def _as_int(value: Any, name: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"{source}: {name}={value!r} is not an integer")
    return int(value)


def parse_official_config(config: str | os.PathLike | Mapping[str, Any]) -> OfficialConfig:
    """Read the authors' YAML config (path or already-parsed dict) into an :class:`OfficialConfig`."""
    if isinstance(config, Mapping):
        data, source = dict(config), "config"
    else:
        path = Path(config)
        source = str(path)
        if not path.is_file():
            raise MissingResourceError(f"config file {path} not found")
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(f"{source}: not a readable YAML file ({error})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level, got {type(data).__name__}")
    model = data.get("model", data)
    if not isinstance(model, Mapping) or "quantizer" not in model or "decoder" not in model:
        raise ConfigError(
            f"{source}: no model.quantizer / model.decoder sections; is this the YAML config that "
            "came with the checkpoint (e.g. 512T_NC=16384.yaml)?"
        )
    quant, dec = model["quantizer"], model["decoder"]
    if not isinstance(quant, Mapping) or not isinstance(dec, Mapping):
        raise ConfigError(f"{source}: model.quantizer and model.decoder must be mappings")

    shape = model.get("input_data_size", [32, 8, 8])
    if not isinstance(shape, (list, tuple)) or len(shape) != 3:
        raise ConfigError(f"{source}: model.input_data_size={shape!r} must be [C, H, W]")
    latent_shape = tuple(_as_int(v, "model.input_data_size", source) for v in shape)

    qtype = str(quant.get("TYPE", "vq")).lower()
    if qtype != "vq":
        raise ConfigError(f"{source}: quantizer TYPE {qtype!r} is not supported (only 'vq')")
    if "num_code" not in quant and "codebook_size" not in quant:
        raise ConfigError(f"{source}: model.quantizer.num_code (the codebook size) is missing")
    codebook_size = _as_int(quant.get("num_code", quant.get("codebook_size")), "quantizer.num_code", source)
    tokens = quant.get("tokens_per_data", quant.get("num_tokens", quant.get("num_group")))
    if tokens is None:
        raise ConfigError(f"{source}: model.quantizer.tokens_per_data (the token count) is missing")
    num_tokens = _as_int(tokens, "quantizer.tokens_per_data", source)
    num_groups = _as_int(quant.get("num_group", num_tokens), "quantizer.num_group", source)
    if num_tokens <= 0 or math.prod(latent_shape) % num_tokens:
        raise ConfigError(
            f"{source}: tokens_per_data={num_tokens} does not divide the latent size "
            f"{'x'.join(map(str, latent_shape))}"
        )
    if num_groups != num_tokens:
        raise ConfigError(
            f"{source}: num_group={num_groups} differs from tokens_per_data={num_tokens}; only "
            "one codebook per token position (num_group == tokens_per_data) can be converted"
        )

    dtype_ = str(dec.get("TYPE", "dc_ae")).lower()
    if dtype_ != "dc_ae":
        raise ConfigError(
            f"{source}: decoder TYPE {dtype_!r} is not supported; only the EfficientViT "
            "rectifier ('dc_ae') of the released checkpoints can be converted"
        )
    c = latent_shape[0]
    for key in ("in_channels", "latent_channels"):
        if key in dec and _as_int(dec[key], f"decoder.{key}", source) != c:
            raise ConfigError(f"{source}: decoder.{key}={dec[key]} must equal the latent channels {c}")
    block = _single(dec.get("block_type", "EfficientViTBlock"), "block_type", source)
    if block != "EfficientViTBlock":
        raise ConfigError(f"{source}: decoder.block_type={block!r}; only EfficientViTBlock is supported")
    if "block_out_channels" not in dec or "layers_per_block" not in dec:
        raise ConfigError(f"{source}: decoder.block_out_channels (width) and decoder.layers_per_block (depth) are required")
    width = _as_int(_single(dec["block_out_channels"], "block_out_channels", source), "decoder.block_out_channels", source)
    depth = _as_int(_single(dec["layers_per_block"], "layers_per_block", source), "decoder.layers_per_block", source)
    if width <= 0 or width % c:
        raise ConfigError(f"{source}: decoder width {width} must be a positive multiple of {c} channels")
    if depth < 1:
        raise ConfigError(f"{source}: decoder.layers_per_block={depth} must be >= 1")
    head_dim = _as_int(dec.get("attention_head_dim", 32), "decoder.attention_head_dim", source)
    if head_dim <= 0 or width % head_dim:
        raise ConfigError(f"{source}: attention_head_dim={head_dim} must divide the width {width}")
    scales = dec.get("qkv_multiscales", [[5]])
    if isinstance(scales, (list, tuple)) and len(scales) == 1 and isinstance(scales[0], (list, tuple)):
        scales = scales[0]
    if isinstance(scales, int):
        scales = [scales]
    if not isinstance(scales, (list, tuple)) or [int(s) for s in scales] != [5]:
        raise ConfigError(f"{source}: decoder.qkv_multiscales={dec.get('qkv_multiscales')!r}; only [[5]] is supported")
    norm = _single(dec.get("norm_type", "rms_norm"), "norm_type", source)
    if norm != "rms_norm":
        raise ConfigError(f"{source}: decoder.norm_type={norm!r}; only rms_norm is supported")
    if not dec.get("in_shortcut", True):
        raise ConfigError(f"{source}: decoder.in_shortcut=false is not supported")
    return OfficialConfig(
        latent_shape=latent_shape,
        num_tokens=num_tokens,
        num_groups=num_groups,
        codebook_size=codebook_size,
        width=width,
        depth=depth,
        attention_head_dim=head_dim,
        qkv_multiscales=(5,),
        norm_type="rms_norm",
        raw=dict(data),
    )


# ---------------------------------------------------------------------------------- files
def _torch_load(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(f"{what} {path} not found")
    if path.stat().st_size == 0:
        raise RevqError(f"{what} {path} is empty (interrupted download?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError/EOFError/UnpicklingError/... here
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Weights only load failed" in str(error):
            reason = "it holds Python objects other than tensors and plain containers, which are not loaded for safety"
        else:
            reason = "it is truncated or corrupt, or not a torch.save file (re-download it)"
        raise RevqError(f"cannot read {what} {path}: {reason} [{type(error).__name__}: {text}]") from None


def _strip_module(sd: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in sd.items():
        key = str(key)
        while key.startswith("module."):
            key = key[len("module.") :]
        out[key] = value
    return out


def _check_tensor(value: Any, name: str, source: str, *, floating: bool = True) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise RevqError(f"{source}: {name} is a {type(value).__name__}, expected a tensor")
    if floating and not value.is_floating_point():
        raise RevqError(f"{source}: {name} has dtype {value.dtype}, expected floating point")
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise RevqError(f"{source}: {name} contains NaN or infinite values")
    return value


def load_official_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read ``ckpt.pth``: (quantizer state dict, decoder state dict), keys checked, no shapes yet."""
    source = str(path)
    ckpt = _torch_load(path, "checkpoint")
    if not isinstance(ckpt, Mapping):
        raise RevqError(f"{source}: expected a dict with 'quantizer' and 'decoder', got {type(ckpt).__name__}")
    missing = [k for k in ("quantizer", "decoder") if k not in ckpt]
    if missing:
        raise RevqError(
            f"{source}: missing key(s) {missing}; an official ReVQ checkpoint has 'quantizer' and "
            f"'decoder' state dicts (found keys: {sorted(map(str, ckpt))[:10]})"
        )
    quant, dec = ckpt["quantizer"], ckpt["decoder"]
    if not isinstance(quant, Mapping) or not isinstance(dec, Mapping):
        raise RevqError(f"{source}: 'quantizer' and 'decoder' must be state dicts")
    quant, dec = _strip_module(quant), _strip_module(dec)
    for key in ("embeddings", "count", "index_offset"):
        if key not in quant:
            raise RevqError(
                f"{source}: quantizer state dict has no {key!r} (found {sorted(quant)}); expected "
                "'embeddings' (T, N, d), 'count' (T, N) and 'index_offset' (T,)"
            )
    _check_tensor(quant["embeddings"], "quantizer.embeddings", source)
    _check_tensor(quant["count"], "quantizer.count", source, floating=False)
    _check_tensor(quant["index_offset"], "quantizer.index_offset", source, floating=False)
    for key, value in dec.items():
        _check_tensor(value, f"decoder.{key}", source)
    return dict(quant), dict(dec)


def load_official_preprocessor(path: str | os.PathLike, numel: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``preprocessor.pth``: (mean, std), each (C*H*W,) float32."""
    source = str(path)
    sd = _torch_load(path, "preprocessor")
    if not isinstance(sd, Mapping):
        raise RevqError(f"{source}: expected a state dict with 'mean' and 'std', got {type(sd).__name__}")
    sd = _strip_module(sd)
    missing = [k for k in ("mean", "std") if k not in sd]
    if missing:
        raise RevqError(f"{source}: missing key(s) {missing} (found {sorted(sd)}); expected 'mean' and 'std'")
    mean = _check_tensor(sd["mean"], "mean", source)
    std = _check_tensor(sd["std"], "std", source)
    for name, value in (("mean", mean), ("std", std)):
        if value.dim() != 1 or (numel is not None and value.numel() != numel):
            want = f"({numel},)" if numel is not None else "1-D"
            raise RevqError(f"{source}: {name} has shape {tuple(value.shape)}, expected {want}")
    if mean.shape != std.shape:
        raise RevqError(f"{source}: mean {tuple(mean.shape)} and std {tuple(std.shape)} differ in shape")
    if not (std > 0).all():
        raise RevqError(f"{source}: std has {int((std <= 0).sum())} non-positive entries")
    return mean.float(), std.float()


def _expected_decoder_shapes(cfg: OfficialConfig) -> dict[str, tuple[int, ...]]:
    from diffusers.models.autoencoders.autoencoder_dc import Decoder

    with torch.device("meta"):
        ref = Decoder(**cfg.decoder_kwargs())
    return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def validate_official(
    cfg: OfficialConfig,
    quant: Mapping[str, torch.Tensor],
    dec: Mapping[str, torch.Tensor],
    *,
    checkpoint: str = "checkpoint",
    config: str = "config",
) -> None:
    """Check that the tensors are what ``cfg`` describes; raise :class:`RevqError` naming each mismatch."""
    t, n, d = cfg.num_tokens, cfg.codebook_size, cfg.token_dim
    emb = quant["embeddings"]
    if emb.dim() != 3:
        raise RevqError(f"{checkpoint}: quantizer.embeddings has shape {tuple(emb.shape)}, expected (T, N, d) = ({t}, {n}, {d})")
    problems = []
    if emb.shape[0] != t:
        problems.append(f"tokens: config tokens_per_data/num_group={t}, checkpoint embeddings have {emb.shape[0]} codebooks")
    if emb.shape[1] != n:
        problems.append(f"codebook size: config num_code={n}, checkpoint embeddings have {emb.shape[1]} codes")
    if emb.shape[2] != d:
        problems.append(
            f"token dim: config input_data_size {list(cfg.latent_shape)} / {t} tokens gives d={d}, "
            f"checkpoint embeddings have d={emb.shape[2]}"
        )
    count, offset = quant["count"], quant["index_offset"]
    if tuple(count.shape) != tuple(emb.shape[:2]):
        problems.append(f"quantizer.count has shape {tuple(count.shape)}, expected {tuple(emb.shape[:2])}")
    if tuple(offset.shape) != (emb.shape[0],):
        problems.append(f"quantizer.index_offset has shape {tuple(offset.shape)}, expected ({emb.shape[0]},)")
    elif not torch.equal(offset.long(), torch.arange(emb.shape[0], dtype=torch.long) * emb.shape[1]):
        problems.append("quantizer.index_offset is not arange(T) * N (an unknown codebook layout)")
    if "conv_in.weight" in dec and dec["conv_in.weight"].dim() == 4:
        got_w = dec["conv_in.weight"].shape[0]
        if got_w != cfg.width:
            problems.append(f"rectifier width: config block_out_channels=[{cfg.width}], checkpoint decoder.conv_in has {got_w} channels")
    blocks = {k.split(".")[2] for k in dec if k.startswith("up_blocks.0.") and len(k.split(".")) > 3}
    if blocks and len(blocks) != cfg.depth:
        problems.append(f"rectifier depth: config layers_per_block=[{cfg.depth}], checkpoint decoder has {len(blocks)} blocks")
    if problems:
        raise RevqError(f"{checkpoint} does not match {config}: " + "; ".join(problems))

    expected = _expected_decoder_shapes(cfg)
    missing = sorted(set(expected) - set(dec))
    unexpected = sorted(set(dec) - set(expected))
    wrong = [
        f"{k} {tuple(dec[k].shape)} (expected {expected[k]})"
        for k in expected
        if k in dec and tuple(dec[k].shape) != expected[k]
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing decoder keys {missing[:6]}{' ...' if len(missing) > 6 else ''} ({len(missing)} in all)")
        if unexpected:
            parts.append(f"unexpected decoder keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''} ({len(unexpected)} in all)")
        if wrong:
            parts.append(f"wrong shapes: {', '.join(wrong[:6])}{' ...' if len(wrong) > 6 else ''}")
        raise RevqError(
            f"{checkpoint}: the decoder state dict is not the single-stage DC-AE decoder that {config} "
            f"describes (W={cfg.width}, L={cfg.depth}): " + "; ".join(parts)
        )


# ---------------------------------------------------------------------------------- model
def build_config(
    cfg: OfficialConfig,
    *,
    autoencoder: str = DCAE_ID,
    resolution: int | None = None,
):
    """Our :class:`~revq.config.ReVQConfig` equivalent of the authors' config."""
    from revq.config import AutoencoderInfo, RectifierConfig, ReVQConfig

    if resolution is None:
        resolution = cfg.latent_shape[1] * DCAE_DOWNSAMPLE
    return ReVQConfig(
        latent_shape=cfg.latent_shape,
        num_tokens=cfg.num_tokens,
        codebook_size=cfg.codebook_size,
        split="channel",
        normalization="element",
        objective="decoupled",  # what the authors' code trains; only matters for fine-tuning
        reset_max_fraction=0.2,  # the authors' per-epoch cap, for fine-tuning in their regime
        rectifier=RectifierConfig(
            kind="efficientvit",
            width=cfg.width,
            depth=cfg.depth,
            residual=False,
            head_dim=cfg.attention_head_dim,
            expand_ratio=4.0,
        ),
        autoencoder=AutoencoderInfo(name=autoencoder, resolution=resolution, latent_shape=cfg.latent_shape),
    )


def _rectifier_prefix(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor]) -> str:
    """The prefix p with ``p + their_key`` in our rectifier's state dict for every key."""
    candidates = [k[: -len("conv_in.weight")] for k in ours if k.endswith("conv_in.weight")]
    for prefix in sorted(candidates, key=len):
        if all(prefix + k in ours for k in theirs):
            extra = sorted(k for k in ours if not (k.startswith(prefix) and k[len(prefix) :] in theirs))
            if extra:
                raise RevqError(
                    "our EfficientViT rectifier (residual=False) has parameters the authors' decoder "
                    f"lacks: {extra[:6]}; cannot convert exactly"
                )
            return prefix
    sample = sorted(ours)[:6]
    raise RevqError(
        "our EfficientViT rectifier's state dict does not use the authors' DC-AE decoder key names "
        f"(ours start {sample}); the checkpoint cannot be mapped"
    )


def _set_counts(quantizer: Any, count: torch.Tensor) -> None:
    target = getattr(quantizer, "counts", None)
    if isinstance(target, torch.Tensor) and tuple(target.shape) == tuple(count.shape):
        with torch.no_grad():
            target.copy_(count.round().clamp_min(0).to(target.dtype))


def model_from_official(
    cfg: OfficialConfig,
    quant: Mapping[str, torch.Tensor],
    dec: Mapping[str, torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    autoencoder: str = DCAE_ID,
    resolution: int | None = None,
    latent_scale: float = 1.0,
):
    """Build our ``ReVQ`` holding the authors' tensors (inputs already validated).

    ``latent_scale``: factor between the latents our autoencoder backend returns and the raw
    latents the authors' statistics describe (ours = scale * theirs); folded into mean/std.
    """
    from revq.model import ReVQ

    config = build_config(cfg, autoencoder=autoencoder, resolution=resolution)
    model = ReVQ(config).eval()
    c, h, w = cfg.latent_shape
    with torch.no_grad():
        codebooks = model.quantizer.codebooks
        emb = quant["embeddings"]
        if tuple(codebooks.shape) != tuple(emb.shape):
            raise RevqError(
                f"internal layout mismatch: our codebooks are {tuple(codebooks.shape)}, the authors' {tuple(emb.shape)}"
            )
        codebooks.copy_(emb.to(codebooks.dtype))
        _set_counts(model.quantizer, quant["count"])
        scale = float(latent_scale)
        model.normalizer.set_stats(
            mean.double().reshape(c, h, w) * scale, std.double().reshape(c, h, w) * abs(scale)
        )
        ours = model.rectifier.state_dict()
        prefix = _rectifier_prefix(ours, dec)
        model.rectifier.load_state_dict({prefix + k: v.to(ours[prefix + k].dtype) for k, v in dec.items()}, strict=True)
    return model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_official(
    checkpoint: str | os.PathLike,
    config: str | os.PathLike,
    preprocessor: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    autoencoder: str = DCAE_ID,
    resolution: int | None = None,
    latent_scale: float | None = None,
    source: str | None = None,
):
    """Read, validate and convert the three released files; save to ``out`` when given.

    ``latent_scale`` (ours = scale * the authors' raw latents): default
    :data:`DCAE_SCALING_FACTOR` for the DC-AE the checkpoints were trained on (our backend's
    scaled latents), 1.0 for any other ``autoencoder``.

    Returns the :class:`revq.model.ReVQ` (eval mode).  ``out`` then holds what
    ``ReVQ.from_pretrained`` / ``Tokenizer.from_pretrained`` load, plus ``revq_convert.json``
    (provenance: source files and their SHA-256), written last.
    """
    cfg = parse_official_config(config)
    quant, dec = load_official_checkpoint(checkpoint)
    validate_official(cfg, quant, dec, checkpoint=str(checkpoint), config=str(config))
    mean, std = load_official_preprocessor(preprocessor, numel=math.prod(cfg.latent_shape))
    if latent_scale is None:
        latent_scale = DCAE_SCALING_FACTOR if autoencoder == DCAE_ID else 1.0
    if not (math.isfinite(latent_scale) and latent_scale > 0):
        raise ConfigError(f"latent_scale={latent_scale} must be a positive number")
    model = model_from_official(
        cfg, quant, dec, mean, std, autoencoder=autoencoder, resolution=resolution, latent_scale=latent_scale
    )
    if out is not None:
        out = Path(out)
        marker = out / MARKER_FILE
        if marker.exists():
            marker.unlink()  # a half-rewritten folder must not look complete
        model.save_pretrained(out)
        from revq.io_utils import write_json_atomic

        write_json_atomic(
            marker,
            {
                "format": "revq-official-conversion/1",
                "source": source,
                "files": {
                    kind: {"name": Path(p).name, "sha256": _sha256(Path(p))}
                    for kind, p in (("checkpoint", checkpoint), ("config", config), ("preprocessor", preprocessor))
                },
                "num_tokens": cfg.num_tokens,
                "codebook_size": cfg.codebook_size,
                "rectifier": {"width": cfg.width, "depth": cfg.depth},
                "autoencoder": autoencoder,
                "latent_scale": latent_scale,
            },
        )
        log.info("converted %s -> %s", checkpoint, out)
    return model


# ---------------------------------------------------------------------------------- hub
def official_cache_dir(repo_id: str) -> Path:
    """``<user cache>/official/<owner>--<name>``: ``download/`` holds the files, ``model/`` the result."""
    from revq.paths import user_cache_dir

    return user_cache_dir() / "official" / repo_id.replace("/", "--")


def is_official_id(name: str | os.PathLike) -> bool:
    return str(name) in OFFICIAL_RELEASES


PREPROCESSOR_URL = "https://raw.githubusercontent.com/Neur-IO/ReVQ/main/ckpt/preprocessor.pth"


def _offline_message(release: OfficialRelease, download: Path, reason: str) -> str:
    files = ", ".join(release.files)
    out = official_cache_dir(release.repo_id) / "model"
    return (
        f"cannot fetch {release.repo_id} ({reason}). Fetch these files on a machine with network "
        f"access: {files} from https://huggingface.co/{release.repo_id} ({PREPROCESSOR_FILE}, if "
        f"absent there, is ckpt/{PREPROCESSOR_FILE} of {AUTHORS_REPOSITORY}); then either put "
        f"them in {download} and retry, or convert them yourself:\n"
        f"  revq convert-official --checkpoint {CHECKPOINT_FILE} --config {release.config_file} "
        f"--preprocessor {PREPROCESSOR_FILE} --out {out}\n"
        f"and load that folder (Tokenizer.from_pretrained('{out}'))."
    )


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _fetch_preprocessor_from_github(target: Path) -> None:
    """The statistics live in the authors' GitHub repository, not always on the hub (16 KiB)."""
    import urllib.request

    from revq.io_utils import atomic_path

    with urllib.request.urlopen(PREPROCESSOR_URL, timeout=30) as response:  # noqa: S310 (fixed https URL)
        data = response.read(1 << 20)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    # content is validated (keys, shapes, finite, std > 0) by load_official_preprocessor


def _is_unreachable(error: BaseException) -> bool:
    """True when the hub could not be reached at all (as opposed to a missing file)."""
    name = type(error).__name__
    if name in ("EntryNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"):
        return False
    return name == "LocalEntryNotFoundError" or isinstance(error, (OSError, ConnectionError, TimeoutError))


def _fetch(release: OfficialRelease, name: str, target: Path, state: dict) -> str | None:
    """Put ``name`` of ``release`` at ``target``; return None on success, else why it failed.

    ``state["offline"]`` becomes True after the first unreachable-hub failure so that the other
    files do not each wait through huggingface_hub's retries (and GitHub is not tried).
    """
    local_files_only = bool(state.get("offline"))
    try:
        import huggingface_hub

        got = Path(
            huggingface_hub.hf_hub_download(
                repo_id=release.repo_id,
                filename=name,
                local_dir=str(target.parent),
                local_files_only=local_files_only,
            )
        )
        if got.resolve() != target.resolve():
            shutil.copyfile(got, target)
        return None
    except Exception as error:  # offline, 404, gated, proxy ... all end in the same advice
        log.debug("download of %s/%s failed: %r", release.repo_id, name, error)
        failure = f"{name}: {type(error).__name__}"
        if _is_unreachable(error):
            state["offline"] = True
            local_files_only = True
    if name == PREPROCESSOR_FILE and not local_files_only:
        try:
            _fetch_preprocessor_from_github(target)
            log.info("%s has no %s; fetched it from %s", release.repo_id, name, PREPROCESSOR_URL)
            return None
        except Exception as gh_error:  # noqa: BLE001
            failure += f", from GitHub: {type(gh_error).__name__}"
    return failure


def _download(
    release: OfficialRelease, download: Path, *, local_files_only: bool | None, only: tuple[str, ...] | None = None
) -> dict[str, Path]:
    """The files of ``release`` in ``download``: those already there are used as they are."""
    download.mkdir(parents=True, exist_ok=True)
    if local_files_only is None:
        local_files_only = _offline_env()
    wanted = {"checkpoint": CHECKPOINT_FILE, "config": release.config_file, "preprocessor": PREPROCESSOR_FILE}
    if only is not None:
        wanted = {k: v for k, v in wanted.items() if k in only}
    paths = {kind: download / name for kind, name in wanted.items()}
    state = {"offline": local_files_only}
    failures = [
        failure
        for kind, path in paths.items()
        if not path.is_file() and (failure := _fetch(release, wanted[kind], path, state))
    ]
    missing = [wanted[k] for k, p in paths.items() if not p.is_file()]
    if missing:
        if local_files_only:
            reason = "offline (HF_HUB_OFFLINE is set)"
        elif state["offline"]:
            reason = "the Hugging Face Hub is unreachable"
        else:
            reason = "download failed: " + "; ".join(failures)
        raise MissingResourceError(_offline_message(release, download, f"{reason}; missing {missing}"))
    return paths


def _check_release(repo_id: str, config_path: Path) -> None:
    release = OFFICIAL_RELEASES.get(repo_id)
    if release is None:
        return
    cfg = parse_official_config(config_path)
    got = (cfg.num_tokens, cfg.codebook_size, cfg.width, cfg.depth)
    want = (release.num_tokens, release.codebook_size, release.width, release.depth)
    if got != want:
        log.warning("%s: config gives (T, N, W, L)=%s, the paper's release is %s", repo_id, got, want)


def convert_from_hub(
    repo_id: str,
    *,
    out: str | os.PathLike | None = None,
    force: bool = False,
    local_files_only: bool | None = None,
) -> Path:
    """Download (when needed) and convert a released tokenizer; return the converted folder.

    Files go to ``official_cache_dir(repo_id)/download`` (files already there are used, so a
    machine without network works once they are copied in); the model goes to ``out`` or
    ``official_cache_dir(repo_id)/model`` and is reused on later calls unless ``force``.
    ``preprocessor.pth`` comes from the hub repository or, when it is not there, from the
    authors' GitHub repository (``ckpt/preprocessor.pth``).
    """
    if repo_id not in OFFICIAL_RELEASES:
        raise RevqError(f"{repo_id!r} is not a known official ReVQ release; known: {sorted(OFFICIAL_RELEASES)}")
    release = OFFICIAL_RELEASES[repo_id]
    base = official_cache_dir(repo_id)
    target = Path(out) if out is not None else base / "model"
    if not force and (target / MARKER_FILE).is_file() and (target / "config.json").is_file():
        return target
    paths = _download(release, base / "download", local_files_only=local_files_only)
    _check_release(repo_id, paths["config"])
    convert_official(paths["checkpoint"], paths["config"], paths["preprocessor"], target, source=repo_id)
    return target


def convert_snapshot(snapshot: str | os.PathLike, out: str | os.PathLike, *, repo_id: str) -> None:
    """Converter for :data:`revq.tokenizer.KNOWN_CONVERTERS`: a downloaded hub snapshot -> ``out``.

    The snapshot must hold ``ckpt.pth`` and the YAML config; ``preprocessor.pth`` is taken from
    the snapshot, else from ``official_cache_dir(repo_id)/download``, else fetched as in
    :func:`convert_from_hub`.
    """
    release = OFFICIAL_RELEASES[repo_id]
    snapshot = Path(snapshot)
    download = official_cache_dir(repo_id) / "download"
    ckpt = snapshot / CHECKPOINT_FILE
    config = snapshot / release.config_file
    if not config.is_file():
        yamls = sorted(snapshot.glob("*.yaml")) + sorted(snapshot.glob("*.yml"))
        config = yamls[0] if len(yamls) == 1 else config
    for path in (ckpt, config):
        if not path.is_file():
            raise MissingResourceError(_offline_message(release, download, f"{path.name} is not in the hub snapshot {snapshot}"))
    pre = snapshot / PREPROCESSOR_FILE
    if not pre.is_file():
        pre = _download(release, download, local_files_only=None, only=("preprocessor",))["preprocessor"]
    _check_release(repo_id, config)
    convert_official(ckpt, config, pre, out, source=repo_id)


def register_converters(hooks: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """Add ``hub id -> converter(snapshot_dir, out_dir)`` entries for the official releases to ``hooks``."""
    for repo_id in OFFICIAL_RELEASES:
        hooks.setdefault(repo_id, functools.partial(convert_snapshot, repo_id=repo_id))
    return hooks


def _register_with_tokenizer() -> None:
    """Tell :mod:`revq.tokenizer` about the official ids (its ``register_converter`` hook)."""
    try:
        from revq import tokenizer as _tok
    except Exception:  # noqa: BLE001 - never let an optional registration break this module
        log.debug("revq.tokenizer not importable; official hub ids not registered", exc_info=True)
        return
    register = getattr(_tok, "register_converter", None)
    if callable(register):
        for repo_id, fn in register_converters({}).items():
            if repo_id not in getattr(_tok, "KNOWN_CONVERTERS", {}):
                register(repo_id, fn)


__all__ = [
    "DCAE_ID",
    "OFFICIAL_RELEASES",
    "OfficialConfig",
    "OfficialRelease",
    "build_config",
    "convert_from_hub",
    "convert_official",
    "convert_snapshot",
    "is_official_id",
    "load_official_checkpoint",
    "load_official_preprocessor",
    "model_from_official",
    "official_cache_dir",
    "parse_official_config",
    "register_converters",
    "validate_official",
]

_register_with_tokenizer()

if __name__ == "__main__":  # pragma: no cover
    print(json.dumps({k: v.files for k, v in OFFICIAL_RELEASES.items()}, indent=2))
