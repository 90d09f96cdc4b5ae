"""revq: Quantize-then-Rectify (ReVQ) — a pre-trained VAE becomes a VQ tokenizer.

Public API (imported lazily so that ``import revq`` stays light):

- :class:`revq.model.ReVQ`, :class:`revq.config.ReVQConfig` — the quantizer + rectifier model
- :class:`revq.tokenizer.Tokenizer` — images <-> tokens with a frozen autoencoder
- :func:`revq.autoencoders.load_autoencoder` — frozen VAE backends
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "ReVQ": "revq.model",
    "ReVQConfig": "revq.config",
    "Tokenizer": "revq.tokenizer",
    "load_autoencoder": "revq.autoencoders",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'revq' has no attribute {name!r}")


__all__ = list(_LAZY) + ["__version__"]
