"""Channel multi-group vector quantizer with the paper's non-activation reset.

Paper Sec. 3 (multi-group quantization, Eq. 1-2) and Sec. 4 (non-activation reset, Eq. 3).

Layouts (``split``), for a latent ``z`` of shape (C, H, W) cut into ``T`` tokens of ``d = CHW / T``:

* ``"channel"`` (the paper's channel multi-group strategy): flatten in (C, H, W) memory order and
  cut into T contiguous pieces.  With 512 tokens on 32x8x8 (d = 4), token ``t`` holds channel
  ``t // 16``, row ``(t // 2) % 8``, columns ``4 * (t % 2) .. 4 * (t % 2) + 3``; with 256 tokens a
  token is one full row of one channel.  Each token position has its own codebook.
* ``"spatial"``: flatten in (H, W, C) order, so a token is the channel vector at one position (or
  a contiguous part of it when T > HW, or several positions when T < HW).  Own codebook per token.
* ``"single"``: the spatial layout with ONE codebook shared by all tokens (classic VQ).

``tokens_per_codebook`` (default 1, the paper) lets consecutive token positions share a codebook.
In the channel layout consecutive tokens are spatial neighbours in the same channel, so
``tokens_per_codebook = T / C`` gives one codebook per latent channel, shared across positions:
each codebook then learns from ``T / C`` times more sub-vectors, which is what a small training
set needs (30,000 images cannot place 4,096 codes per token position; see docs/results.md).

No straight-through estimator: ``z_q`` is made of the selected codebook rows themselves, so the
codebook receives gradients from whatever consumes ``z_q`` (the authors do the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from revq.errors import ConfigError
from revq.search import DEFAULT_MEMORY_BUDGET, nearest_code

SPLITS = ("channel", "spatial", "single")


@dataclass
class ResetResult:
    """What a non-activation reset did, so the trainer can clear optimizer state of moved rows."""

    num_reset: Tensor  # (G,) int64: codes moved per group
    reset_rows: list[Tensor]  # per group: int64 indices of the codes that were overwritten
    source_rows: list[Tensor] = field(default_factory=list)  # per group: the codes they copied

    @property
    def total(self) -> int:
        return int(self.num_reset.sum())


def valid_token_counts(latent_shape: tuple[int, int, int]) -> list[int]:
    n = math.prod(latent_shape)
    return [b for b in range(1, n + 1) if n % b == 0]


class MultiGroupQuantizer(nn.Module):
    """B independent codebooks (one per token position), or one shared codebook (``single``).

    Attributes:
        codebooks: nn.Parameter (G, N, d); G = num_tokens, or 1 for ``split="single"``.
        counts: int64 buffer (G, N); activations since the last reset, accumulated only in
            training mode (never during evaluation: the authors' code leaks validation traffic
            into the counts, we do not).
    """

    def __init__(
        self,
        *,
        latent_shape: tuple[int, int, int],
        num_tokens: int,
        codebook_size: int,
        split: str = "channel",
        tokens_per_codebook: int = 1,
        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        super().__init__()
        latent_shape = tuple(int(v) for v in latent_shape)
        if len(latent_shape) != 3:
            raise ConfigError(f"latent_shape must be (C, H, W); got {latent_shape}")
        if split not in SPLITS:
            raise ConfigError(f"split {split!r} unknown; choose from {SPLITS}")
        numel = math.prod(latent_shape)
        if num_tokens <= 0 or numel % num_tokens:
            raise ConfigError(
                f"num_tokens={num_tokens} does not divide the latent size "
                f"{'x'.join(map(str, latent_shape))}={numel}; valid token counts: {valid_token_counts(latent_shape)}"
            )
        if codebook_size < 1:
            raise ConfigError("codebook_size must be >= 1")
        if split == "single":
            tokens_per_codebook = num_tokens
        if tokens_per_codebook < 1 or num_tokens % tokens_per_codebook:
            raise ConfigError(f"tokens_per_codebook={tokens_per_codebook} must divide num_tokens={num_tokens}")
        self.latent_shape = latent_shape
        self.num_tokens = int(num_tokens)
        self.codebook_size = int(codebook_size)
        self.split = split
        self.token_dim = numel // self.num_tokens
        self.tokens_per_codebook = int(tokens_per_codebook)
        self.num_groups = self.num_tokens // self.tokens_per_codebook  # distinct codebooks G
        self.memory_budget_bytes = int(memory_budget_bytes)
        G, N, d = self.num_groups, self.codebook_size, self.token_dim
        # Placeholder init (standard normal = the scale of normalised latents); real runs call
        # init_from_data, as the paper and the authors do.
        self.codebooks = nn.Parameter(torch.randn(G, N, d))
        self.register_buffer("counts", torch.zeros(G, N, dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"latent_shape={self.latent_shape}, num_tokens={self.num_tokens}, codebook_size={self.codebook_size}, "
            f"split={self.split!r}, groups={self.num_groups}, token_dim={self.token_dim}, "
            f"tokens_per_codebook={self.tokens_per_codebook}"
        )

    # ------------------------------------------------------------------ layout
    def to_tokens(self, z: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, T, d) in the split's layout."""
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ConfigError(f"expected latents (batch, {', '.join(map(str, self.latent_shape))}); got {tuple(z.shape)}")
        b = z.shape[0]
        if self.split == "channel":
            return z.reshape(b, self.num_tokens, self.token_dim)  # (C, H, W) memory order
        return z.permute(0, 2, 3, 1).reshape(b, self.num_tokens, self.token_dim)  # (H, W, C) order

    def from_tokens(self, x: Tensor) -> Tensor:
        """Exact inverse of :meth:`to_tokens`: (B, T, d) -> (B, C, H, W)."""
        C, H, W = self.latent_shape
        b = x.shape[0]
        if self.split == "channel":
            return x.reshape(b, C, H, W)
        return x.reshape(b, H, W, C).permute(0, 3, 1, 2).contiguous()

    def codebook_of_token(self, device=None) -> Tensor:
        """(T,) int64: which codebook serves each token position."""
        return torch.arange(self.num_tokens, device=device) // self.tokens_per_codebook

    def flat_code_index(self, indices: Tensor) -> Tensor:
        """(B, T) per-position codes -> rows of ``codebooks.reshape(G * N, d)``."""
        return indices + self.codebook_of_token(indices.device) * self.codebook_size

    def _grouped(self, tokens: Tensor) -> Tensor:
        """(B, T, d) -> (G, B * T/G, d): the queries each codebook answers."""
        if self.tokens_per_codebook == 1:
            return tokens.transpose(0, 1)  # a view: no copy on the hot path
        b, G, k = tokens.shape[0], self.num_groups, self.tokens_per_codebook
        return tokens.reshape(b, G, k, -1).transpose(0, 1).reshape(G, b * k, -1)

    def _ungrouped(self, x: Tensor, batch: int) -> Tensor:
        """(G, B * T/G, ...) -> (B, T, ...): inverse of :meth:`_grouped`."""
        if self.tokens_per_codebook == 1:
            return x.transpose(0, 1)
        rest = x.shape[2:]
        G, k = self.num_groups, self.tokens_per_codebook
        return x.reshape(G, batch, k, *rest).transpose(0, 1).reshape(batch, self.num_tokens, *rest)

    # ------------------------------------------------------------------ quantize / lookup
    def quantize(self, z: Tensor, *, update_counts: bool | None = None) -> tuple[Tensor, Tensor]:
        """Nearest code per token (Eq. 2).

        Args:
            z: normalised latents (B, C, H, W).
            update_counts: count activations (default: ``self.training``).

        Returns:
            z_q (B, C, H, W): the selected code rows (gradient flows to ``codebooks``; dtype of
            the codebook), indices (B, T) int64.
        """
        b = z.shape[0]
        tokens = self.to_tokens(z)  # (B, T, d)
        idx_g = nearest_code(self._grouped(tokens), self.codebooks, memory_budget_bytes=self.memory_budget_bytes)  # (G, B')
        indices = self._ungrouped(idx_g, b).contiguous()  # (B, T)
        if self.training if update_counts is None else update_counts:
            self._count(idx_g)
        return self.lookup(indices), indices

    def lookup(self, indices: Tensor) -> Tensor:
        """Tokens (B, T) int64 -> z_q (B, C, H, W) made of codebook rows (differentiable w.r.t. them)."""
        if indices.dim() != 2 or indices.shape[1] != self.num_tokens:
            raise ConfigError(f"expected tokens (batch, {self.num_tokens}); got {tuple(indices.shape)}")
        indices = indices.to(device=self.codebooks.device, dtype=torch.long)
        if self.num_groups == 1:
            rows = self.codebooks[0][indices]  # (B, T, d)
        else:
            rows = self.codebooks[self.codebook_of_token(indices.device)[None, :], indices]  # (B, T, d)
        return self.from_tokens(rows)

    @torch.no_grad()
    def _count(self, idx_g: Tensor) -> None:
        G, N = self.counts.shape
        flat = (idx_g + torch.arange(G, device=idx_g.device)[:, None] * N).reshape(-1)
        self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat))

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_from_data(
        self,
        z: Tensor,
        *,
        method: str = "random",
        generator: torch.Generator | None = None,
        kmeans_iters: int = 10,
    ) -> None:
        """Initialise every codebook from data (normalised latents ``z`` (S, C, H, W)).

        "random": each group independently takes N random samples' sub-vectors for that group
        (without replacement when S >= N, with replacement otherwise).  A shared codebook's pool
        is every token it serves of every sample (all tokens for ``single``).  "kmeans": that, then ``kmeans_iters`` Lloyd iterations per
        group (exact assignment via :func:`nearest_code`; empty clusters keep their centre).
        Counts are cleared.
        """
        if method not in ("random", "kmeans"):
            raise ConfigError(f"init method {method!r} unknown; choose 'random' or 'kmeans'")
        if z.shape[0] == 0:
            raise ConfigError("init_from_data needs at least one sample")
        dev = self.codebooks.device
        data = self._grouped(self.to_tokens(z.to(dev, torch.float32)))  # (G, S', d)
        G, S, d = data.shape
        N = self.codebook_size
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        picks = []
        for _ in range(G):
            if S >= N:
                picks.append(torch.randperm(S, generator=generator, device=gen_dev)[:N])
            else:
                picks.append(torch.randint(S, (N,), generator=generator, device=gen_dev))
        pick = torch.stack(picks).to(dev)  # (G, N)
        centres = torch.gather(data, 1, pick[..., None].expand(G, N, d))  # (G, N, d)
        if method == "kmeans":
            for _ in range(kmeans_iters):
                assign = nearest_code(data, centres, memory_budget_bytes=self.memory_budget_bytes)  # (G, S)
                flat = (assign + torch.arange(G, device=dev)[:, None] * N).reshape(-1)
                sums = torch.zeros(G * N, d, device=dev).index_add_(0, flat, data.reshape(-1, d))
                cnt = torch.zeros(G * N, device=dev).index_add_(0, flat, torch.ones(flat.numel(), device=dev))
                means = sums / cnt.clamp_min(1)[:, None]
                centres = torch.where(cnt[:, None] > 0, means, centres.reshape(G * N, d)).reshape(G, N, d)
        self.codebooks.copy_(centres.to(self.codebooks.dtype))
        self.counts.zero_()

    # ------------------------------------------------------------------ statistics
    @torch.no_grad()
    def usage(self, counts: Tensor | None = None) -> dict:
        """Codebook usage from the activation counts (local to this rank).

        Returns {"usage": fraction of all codes used, "usage_per_group": (G,) fractions,
        "usage_min_group": worst group's fraction, "perplexity": mean over groups of
        exp(entropy of that group's code distribution) (0 for a group with no counts)}.
        """
        counts = self.counts if counts is None else counts
        used = (counts > 0).float()
        per_group = used.mean(1)
        c = counts.double()
        tot = c.sum(1, keepdim=True)
        p = c / tot.clamp_min(1)
        ent = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1)
        ppl = torch.where(tot[:, 0] > 0, ent.exp(), torch.zeros_like(ent))
        return {
            "usage": float(used.mean()),
            "usage_per_group": per_group.cpu(),
            "usage_min_group": float(per_group.min()),
            "perplexity": float(ppl.mean()),
        }

    # ------------------------------------------------------------------ non-activation reset
    @torch.no_grad()
    def reset_dead_codes(
        self,
        *,
        noise: float = 0.1,
        max_fraction: float = 1.0,
        generator: torch.Generator | None = None,
        relative_noise: bool = True,
    ) -> ResetResult:
        """Non-activation reset, paper Eq. 3, applied independently to every group.

        Per group: sort the codes by count ascending, I = (i_1 .. i_N) (stable: equal counts keep
        index order).  With r codes of count 0, for u = 1..r set ``c_{i_u} <- c_{i_{N+1-u}} + eps``:
        the u-th dead code copies the u-th most-used code.  When fewer codes are used than unused
        (N - r < r) the sources cycle through the used codes from most to least used, so a dead
        code never copies another dead one.  A group with no activation at all is left alone.

        Args:
            noise: eps ~ Normal(0, s) with s = noise * std(group's codebook) when
                ``relative_noise`` (default), else s = noise (the authors' absolute 0.1).
            max_fraction: cap r at max(int(max_fraction * N), 1) per reset; 1.0 is Eq. 3, 0.2
                reproduces the authors' code (then the lowest-index dead codes move first).
            generator: noise source.  Under torch.distributed the counts are summed over ranks
                first and the noise drawn on rank 0 is broadcast, so all ranks apply the same reset.

        Counts are cleared afterwards.
        """
        if not 0.0 < max_fraction <= 1.0:
            raise ConfigError("max_fraction must be in (0, 1]")
        if noise < 0:
            raise ConfigError("noise must be >= 0")
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed:
            dist.all_reduce(self.counts, op=dist.ReduceOp.SUM)
        counts = self.counts
        G, N = counts.shape
        dev = counts.device
        order = torch.sort(counts, dim=1, stable=True).indices  # (G, N) ascending: i_1 .. i_N
        r = (counts == 0).sum(1)  # (G,)
        if max_fraction < 1.0:
            r = torch.clamp(r, max=max(int(max_fraction * N), 1))
        n_used = N - (counts == 0).sum(1)  # (G,)
        r = torch.where(n_used > 0, r, torch.zeros_like(r))  # nothing to copy from
        pos = torch.arange(N, device=dev)[None, :]  # u - 1
        active = pos < r[:, None]  # (G, N): targets i_1 .. i_r
        src_pos = (N - 1) - pos % n_used.clamp_min(1)[:, None]  # i_{N+1-u}, cycling through used codes
        g_idx, p_idx = active.nonzero(as_tuple=True)  # group-major order
        targets = order[g_idx, p_idx]
        sources = order[g_idx, src_pos[g_idx, p_idx]]
        K = targets.numel()
        if K:
            cb = self.codebooks  # (G, N, d)
            d = cb.shape[-1]
            if relative_noise:
                scale = cb.float().reshape(G, -1).std(1) * noise  # (G,)
            else:
                scale = torch.full((G,), float(noise), device=dev)
            gen_dev = generator.device if generator is not None else dev
            eps = torch.randn(K, d, generator=generator, device=gen_dev, dtype=torch.float32).to(dev)
            if distributed:
                dist.broadcast(eps, src=0)
            new_rows = cb[g_idx, sources].float() + eps * scale[g_idx, None]
            cb.data[g_idx, targets] = new_rows.to(cb.dtype)
        num_reset = r.to(torch.long).cpu()
        splits = num_reset.tolist()
        reset_rows = list(torch.split(targets.cpu(), splits))
        source_rows = list(torch.split(sources.cpu(), splits))
        self.counts.zero_()
        return ResetResult(num_reset=num_reset, reset_rows=reset_rows, source_rows=source_rows)
