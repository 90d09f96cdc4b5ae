"""Images <-> discrete tokens: a frozen autoencoder plus a trained ReVQ model.

>>> from revq import Tokenizer
>>> tok = Tokenizer.from_pretrained("runs/cpu-512t/model")     # or a hub id
>>> tokens = tok.encode(images)        # (B, 3, R, R) in [0, 1] -> (B, T) int64
>>> recon = tok.decode(tokens)         # (B, T) -> (B, 3, R, R) float32 in [0, 1]

Two vocabularies
----------------
ReVQ gives **every token position its own codebook** of N codes (``codebook_size``), or, with
``tokens_per_codebook = k > 1`` (the CPU presets), one codebook to every run of k neighbouring
positions.  So a token is naturally a *per-position id* ``code`` in ``0 .. N-1``: what
:meth:`Tokenizer.encode` returns and :meth:`Tokenizer.decode` takes.  The same code number at two
positions means two different vectors unless the positions share a codebook.

An autoregressive or MaskGIT model that wants one shared embedding table can use *global ids*
``position * N + code`` in ``0 .. T*N - 1`` (``vocab_size``); :func:`to_global_ids` and
:func:`to_local_ids` convert (both exact inverses).  With the shared-codebook split
(``split="single"``) the per-position ids already form one vocabulary of N codes; global ids
are still well defined (just larger than needed).

A model directory (what :meth:`save_pretrained` writes) is the ReVQ model's own directory
(``config.json`` + ``model.safetensors``, which record the autoencoder identity, image
resolution and latent shape) plus ``tokenizer.json`` (format marker and library version).
A run's ``RUN_DIR/model`` is therefore already a tokenizer directory.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Callable

import torch

from revq.errors import MissingResourceError, RevqError

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
FORMAT = "revq-tokenizer"

# Hub ids whose files are not in revq's format: hub id -> converter(snapshot_dir, out_dir)
# that writes a revq model directory into out_dir.  revq.convert registers the authors'
# checkpoints here (e.g. "AndyRaoTHU/revq-512T").
KNOWN_CONVERTERS: dict[str, Callable[[Path, Path], None]] = {}


def register_converter(hub_id: str, converter: Callable[[Path, Path], None]) -> None:
    """Make ``Tokenizer.from_pretrained(hub_id)`` convert that repository's files first."""
    KNOWN_CONVERTERS[hub_id] = converter


def to_global_ids(tokens: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Per-position ids (B, T) -> global ids ``position * N + code`` (int64)."""
    tokens = torch.as_tensor(tokens).long()
    positions = torch.arange(tokens.shape[-1], device=tokens.device)
    return positions * int(codebook_size) + tokens


def to_local_ids(global_ids: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Global ids (B, T) -> per-position ids in 0..N-1; checks each id sits at its position."""
    global_ids = torch.as_tensor(global_ids).long()
    positions = torch.arange(global_ids.shape[-1], device=global_ids.device)
    local = global_ids - positions * int(codebook_size)
    if global_ids.numel() and (local.min() < 0 or local.max() >= codebook_size):
        raise ValueError("global ids do not match their positions (expected position * N + code)")
    return local


def _looks_like_hub_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", text))


class Tokenizer:
    """A frozen autoencoder + a ReVQ model: ``encode`` images to tokens, ``decode`` back."""

    def __init__(self, autoencoder, model, *, batch_size: int | None = None) -> None:
        self.autoencoder = autoencoder
        self.model = model.eval()
        self.batch_size = batch_size  # internal chunking for encode/decode; None = whole batch
        ae_shape = None
        try:
            ae_shape = tuple(autoencoder.latent_shape(self.resolution))
        except Exception:  # pragma: no cover - exotic autoencoder
            pass
        if ae_shape is not None and ae_shape != tuple(self.config.latent_shape):
            raise RevqError(
                f"autoencoder {getattr(autoencoder, 'name', '?')!r} gives latents {ae_shape} at "
                f"resolution {self.resolution}, but the model expects {tuple(self.config.latent_shape)}"
            )

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        return self.model.config

    @property
    def num_tokens(self) -> int:
        return int(self.config.num_tokens)

    @property
    def codebook_size(self) -> int:
        return int(self.config.codebook_size)

    @property
    def vocab_size(self) -> int:
        """Size of the global vocabulary (``num_tokens * codebook_size``)."""
        return self.num_tokens * self.codebook_size

    @property
    def resolution(self) -> int:
        return int(self.config.autoencoder.resolution)

    @property
    def autoencoder_name(self) -> str:
        return str(self.config.autoencoder.name)

    @property
    def device(self) -> torch.device:
        for tensor in self.model.parameters():
            return tensor.device
        return torch.device("cpu")

    def to(self, device=None, dtype=None) -> "Tokenizer":
        """Move both halves.  ``dtype`` applies to the autoencoder only (codebooks stay fp32)."""
        self.model.to(device=device)
        self.autoencoder.to(device=device, dtype=dtype)
        return self

    def to_global_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        return to_global_ids(tokens, self.codebook_size)

    def to_local_ids(self, global_ids: torch.Tensor) -> torch.Tensor:
        return to_local_ids(global_ids, self.codebook_size)

    # ------------------------------------------------------------------ encode / decode
    def _chunks(self, n: int):
        step = self.batch_size or max(n, 1)
        for start in range(0, n, step):
            yield slice(start, min(n, start + step))

    @staticmethod
    def _as_float_images(images) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.dtype == torch.uint8:
            return images.float() / 255.0
        return images.float()

    @torch.inference_mode()
    def encode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw autoencoder latents (B, C, H, W) -> tokens (B, T) int64."""
        latents = latents.to(self.device, torch.float32)
        return self.model.tokenize(latents).long()

    @torch.inference_mode()
    def encode(self, images) -> torch.Tensor:
        """Images (B, 3, R, R) (or one (3, R, R)) -> per-position ids (B, T) (or (T,)), int64.

        Float images in [0, 1] of any dtype, or uint8 in 0..255; any device (tokens come back
        on the model's device).
        """
        images = self._as_float_images(images)
        single = images.dim() == 3
        if single:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] != 3:
            raise RevqError(f"expected images (B, 3, R, R), got shape {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != (self.resolution, self.resolution):
            raise RevqError(
                f"images are {images.shape[-2]}x{images.shape[-1]} but this tokenizer was trained at "
                f"{self.resolution}x{self.resolution}; resize and centre-crop first "
                "(revq.data.images does this)"
            )
        out = torch.empty(images.shape[0], self.num_tokens, dtype=torch.long, device=self.device)
        for part in self._chunks(images.shape[0]):
            latents = self.autoencoder.encode(images[part])
            out[part] = self.encode_latents(latents)
        return out[0] if single else out

    @torch.inference_mode()
    def decode_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T) -> rectified, de-normalised latents (B, C, H, W) float32."""
        tokens = torch.as_tensor(tokens).long().to(self.device)
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise RevqError(
                f"token ids must be per-position ids in 0..{self.codebook_size - 1}; "
                "convert global ids with to_local_ids first"
            )
        return self.model.detokenize(tokens).float()

    @torch.inference_mode()
    def decode(self, tokens, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Per-position ids (B, T) (or (T,)) -> images (B, 3, R, R) in [0, 1]."""
        tokens = torch.as_tensor(tokens)
        single = tokens.dim() == 1
        if single:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2 or tokens.shape[1] != self.num_tokens:
            raise RevqError(f"expected tokens (B, {self.num_tokens}), got shape {tuple(tokens.shape)}")
        parts = [self.autoencoder.decode(self.decode_latents(tokens[p])).to(dtype) for p in self._chunks(tokens.shape[0])]
        if not parts:
            r = self.resolution
            out = torch.empty(0, 3, r, r, dtype=dtype)
        else:
            out = torch.cat(parts)
        return out[0] if single else out

    @torch.inference_mode()
    def reconstruct(self, images) -> torch.Tensor:
        return self.decode(self.encode(images))

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write the model files plus ``tokenizer.json`` into ``save_directory``."""
        from revq import __version__
        from revq.io_utils import write_json_atomic

        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        write_json_atomic(
            path / TOKENIZER_FILE,
            {
                "format": FORMAT,
                "version": 1,
                "revq_version": __version__,
                "autoencoder": self.autoencoder_name,
                "resolution": self.resolution,
                "num_tokens": self.num_tokens,
                "codebook_size": self.codebook_size,
            },
        )
        return path

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload revq tokenizer",
        revision: str | None = None,
    ) -> str:
        """Save into a temporary folder and upload it to the Hugging Face Hub (returns the commit URL)."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            info = api.upload_folder(
                repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision
            )
        return str(getattr(info, "commit_url", info))

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        *,
        device="cpu",
        dtype: torch.dtype = torch.float32,
        autoencoder=None,
        weights_path: str | Path | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        batch_size: int | None = None,
    ) -> "Tokenizer":
        """Load from a local directory or a Hugging Face Hub id.

        ``autoencoder``: an already-built autoencoder to use instead of loading the one the
        model records (``weights_path`` is passed to :func:`revq.autoencoders.load_autoencoder`).
        ``dtype`` is the autoencoder's compute dtype; the ReVQ model stays float32.
        """
        from revq.model import ReVQ

        model_dir = resolve_model_dir(
            path_or_hub_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        model = ReVQ.from_pretrained(model_dir).to(device).eval()
        if autoencoder is None:
            from revq.autoencoders import load_autoencoder

            kwargs = {"device": device, "dtype": dtype}
            if weights_path is not None:
                kwargs["weights_path"] = weights_path
            autoencoder = load_autoencoder(model.config.autoencoder.name, **kwargs)
        return cls(autoencoder, model, batch_size=batch_size)


def resolve_model_dir(
    path_or_hub_id: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local revq model directory for a path or hub id (downloading/converting hub repos)."""
    text = str(path_or_hub_id)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MissingResourceError(
                f"{path} is not a revq model directory (no config.json); expected the output of "
                "save_pretrained, e.g. RUN_DIR/model of `revq train`"
            )
        return path
    if path.exists() or not _looks_like_hub_id(text):
        raise MissingResourceError(
            f"{text!r} is neither a model directory nor a Hugging Face Hub id (owner/name)"
        )
    # The authors' released checkpoints are not in revq's format: revq.convert knows them
    # (importing it also registers them in KNOWN_CONVERTERS) and gives offline users the exact
    # files to fetch and the convert command.
    from revq.convert import convert_from_hub, is_official_id

    if is_official_id(text):
        return convert_from_hub(text, local_files_only=local_files_only or None)
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(
            snapshot_download(
                text, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
            )
        )
    except Exception as error:  # offline, unknown repo, auth ...
        raise MissingResourceError(
            f"could not get {text!r} from the Hugging Face Hub ({type(error).__name__}: {error}). "
            "When offline, pass a local directory (save_pretrained output) instead, or download "
            "the repository first with `huggingface-cli download`."
        ) from error
    if text in KNOWN_CONVERTERS:
        from revq.paths import user_cache_dir

        out = user_cache_dir() / "converted" / text.replace("/", "--") / (revision or "main")
        if not (out / "config.json").is_file():
            log.info("converting %s into revq format at %s", text, out)
            KNOWN_CONVERTERS[text](snapshot, out)
        return out
    if not (snapshot / "config.json").is_file():
        raise MissingResourceError(
            f"hub repository {text!r} holds no revq config.json; known converted repositories: "
            f"{sorted(KNOWN_CONVERTERS) or 'none registered'}"
        )
    return snapshot


def read_tokenizer_info(model_dir: str | Path) -> dict:
    path = Path(model_dir) / TOKENIZER_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
