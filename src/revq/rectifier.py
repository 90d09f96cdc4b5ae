"""Rectifiers g: (B, C, H, W) -> (B, C, H, W), paper Eq. 4 ``Z_e' = g(q(Z_e))``.

Every rectifier is a :class:`Rectifier` wrapping a backbone ``net``:

* ``residual=True`` (our default): ``g(q) = q + f(q)`` with f's output layer zero-initialised, so
  the rectifier is exactly the identity at initialisation for every kind (training starts from
  the plain quantizer's reconstruction instead of from noise).
* ``residual=False``: ``g(q) = f(q)``, the authors' exact form (needed to load their checkpoints).

Kinds:

* ``"efficientvit"`` (the paper's, Sec. 5 "Rectifier Design"): diffusers' DC-AE
  :class:`~diffusers.models.autoencoders.autoencoder_dc.Decoder` configured as ONE stage without
  upsampling: 3x3 conv C -> width plus a shortcut repeating the input channels width/C times;
  ``depth`` EfficientViT blocks (multi-scale ReLU linear attention, 5x5 depthwise qkv aggregation,
  head dim 32, GLU-MBConv with expansion 4, RMSNorm); RMSNorm (affine, bias) -> ReLU -> 3x3 conv
  width -> C.  This is the module the authors use, so the state-dict keys of ``Rectifier.net``
  are exactly theirs: **an authors' "decoder" state dict loads into ``rectifier.net`` as is; inside
  a ReVQ model the prefix is ``rectifier.net.``** (e.g. ``rectifier.net.conv_in.weight``,
  ``rectifier.net.up_blocks.0.2.attn.to_qkv_multiscale.0.proj_in.weight``,
  ``rectifier.net.conv_out.weight``).  Sizes for C = 32: depth 3 / width 512 = 14,069,792
  parameters, depth 4 / width 512 = 18,660,896, depth 4 / width 1024 = 72,973,344.
* ``"cnn"``: residual conv blocks (GroupNorm, SiLU, 3x3 convs) at ``width``.
* ``"mlp"``: residual MLP on the flattened latent (needs the full latent shape) at ``mlp_hidden``.
* ``"none"``: identity (0 parameters).

:func:`build_pre_encoder` builds the Table 6 ablation's encoder (same architecture, applied before
the quantizer; the paper finds it hurts).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from revq.config import RECTIFIERS, RectifierConfig
from revq.errors import ConfigError


def num_parameters(module: nn.Module | None, *, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of a module; 0 for None."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------- backbones
def _efficientvit_net(cfg: RectifierConfig, channels: int) -> nn.Module:
    try:
        from diffusers.models.autoencoders.autoencoder_dc import Decoder
    except ImportError as exc:  # pragma: no cover - diffusers is a dependency
        raise ConfigError("the 'efficientvit' rectifier needs diffusers>=0.32 (pip install diffusers)") from exc
    if cfg.width % channels:
        raise ConfigError(f"efficientvit rectifier width {cfg.width} must be a multiple of the latent channels {channels}")
    if cfg.width % cfg.head_dim:
        raise ConfigError(f"efficientvit rectifier width {cfg.width} must be a multiple of head_dim {cfg.head_dim}")
    if cfg.depth < 1:
        raise ConfigError("efficientvit rectifier depth must be >= 1")
    net = Decoder(
        in_channels=channels,  # the decoder's *output* channels (its "image" channels)
        latent_channels=channels,
        attention_head_dim=cfg.head_dim,
        block_type="EfficientViTBlock",
        block_out_channels=(cfg.width,),
        layers_per_block=(cfg.depth,),
        qkv_multiscales=((5,),),
        norm_type="rms_norm",
        act_fn="relu",
        upsample_block_type="interpolate",  # unused: one stage, no upsampling
        in_shortcut=True,
        conv_act_fn="relu",
    )
    if float(cfg.expand_ratio) != 4.0:
        from diffusers.models.transformers.sana_transformer import GLUMBConv

        for block in net.up_blocks[0]:
            block.conv_out = GLUMBConv(cfg.width, cfg.width, expand_ratio=cfg.expand_ratio, norm_type="rms_norm")
    return net


def _group_norm(ch: int) -> nn.GroupNorm:
    groups = math.gcd(32, ch)
    return nn.GroupNorm(groups, ch, eps=1e-6)


class _ConvBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2 = _group_norm(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        return x + self.conv2(self.act(self.norm2(h)))


class ConvNet(nn.Module):
    """The "cnn" backbone: conv_in -> depth residual conv blocks -> norm/act -> conv_out."""

    def __init__(self, channels: int, width: int, depth: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks = nn.Sequential(*[_ConvBlock(width) for _ in range(depth)])
        self.norm_out = _group_norm(width)
        self.act = nn.SiLU()
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return self.conv_out(self.act(self.norm_out(self.blocks(self.conv_in(x)))))


class _MLPBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class MLPNet(nn.Module):
    """The "mlp" backbone on the flattened latent: proj_in -> depth residual blocks -> conv_out."""

    def __init__(self, latent_shape: tuple[int, int, int], hidden: int, depth: int) -> None:
        super().__init__()
        self.latent_shape = tuple(latent_shape)
        numel = math.prod(latent_shape)
        self.proj_in = nn.Linear(numel, hidden)
        self.blocks = nn.Sequential(*[_MLPBlock(hidden) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(hidden)
        self.conv_out = nn.Linear(hidden, numel)  # named like the others: the zero-initialised output layer

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        h = self.blocks(self.proj_in(x.flatten(1)))
        return self.conv_out(self.norm_out(h)).view(x.shape)


# ---------------------------------------------------------------------- wrapper
class Rectifier(nn.Module):
    """g(q) = q + net(q) (residual) or net(q); ``net`` is None for kind "none"."""

    def __init__(self, kind: str, net: nn.Module | None, *, residual: bool) -> None:
        super().__init__()
        self.kind = kind
        self.residual = bool(residual)
        self.net = net
        if net is not None and self.residual:
            out = self.output_layer
            nn.init.zeros_(out.weight)
            if out.bias is not None:
                nn.init.zeros_(out.bias)

    @property
    def output_layer(self) -> nn.Module:
        return self.net.conv_out

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, residual={self.residual}"

    def forward(self, q: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        if self.net is None:
            return q
        y = self.net(q)
        return q + y.to(q.dtype) if self.residual else y

    def num_parameters(self) -> int:
        return num_parameters(self)


def build_rectifier(
    cfg: RectifierConfig, channels: int, *, latent_shape: tuple[int, int, int] | None = None
) -> Rectifier:
    """Build the rectifier described by ``cfg`` for latents with ``channels`` channels.

    ``latent_shape`` (C, H, W) is required only by the "mlp" kind (it flattens the latent).
    """
    if cfg.kind not in RECTIFIERS:
        raise ConfigError(f"rectifier kind {cfg.kind!r} unknown; choose from {RECTIFIERS}")
    if latent_shape is not None and int(latent_shape[0]) != int(channels):
        raise ConfigError(f"latent_shape {tuple(latent_shape)} disagrees with channels={channels}")
    if cfg.kind == "none":
        return Rectifier("none", None, residual=cfg.residual)
    if cfg.depth < 0:
        raise ConfigError("rectifier depth must be >= 0")
    if cfg.kind == "efficientvit":
        net: nn.Module = _efficientvit_net(cfg, channels)
    elif cfg.kind == "cnn":
        net = ConvNet(channels, cfg.width, cfg.depth)
    else:  # mlp
        if latent_shape is None:
            raise ConfigError("the 'mlp' rectifier needs latent_shape=(C, H, W)")
        net = MLPNet(tuple(latent_shape), cfg.mlp_hidden, cfg.depth)
    return Rectifier(cfg.kind, net, residual=cfg.residual)


def build_pre_encoder(
    cfg: RectifierConfig, channels: int, *, latent_shape: tuple[int, int, int] | None = None
) -> Rectifier:
    """Table 6 ablation: an encoder of the rectifier's architecture placed before the quantizer."""
    return build_rectifier(cfg, channels, latent_shape=latent_shape)
